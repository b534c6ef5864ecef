"""The generator's pure parts: request parsing, prompts, stop sequences, sampling, the load
override, and how the provider classifies Triton's errors (no server started here)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from mesh.embedded.triton import (
    GENERATOR,
    CheckpointError,
    TritonServer,
    check_checkpoint,
    config_override,
)
from mesh.models.local import classify

REPOSITORY = Path(__file__).resolve().parents[2] / "triton_models"


def _load_generation() -> ModuleType:
    path = REPOSITORY / "generator" / "1" / "revo_generation.py"
    spec = importlib.util.spec_from_file_location("revo_generation", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gen = _load_generation()


# -- requests -----------------------------------------------------------------------------

def test_messages_are_parsed_from_json() -> None:
    raw = json.dumps([{"role": "system", "content": "be brief"},
                      {"role": "user", "content": "hi"}]).encode()

    assert gen.parse_messages(raw) == [{"role": "system", "content": "be brief"},
                                       {"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("raw", "message"), [
    (b"\xff", "not UTF-8 JSON"),
    (b"{", "not UTF-8 JSON"),
    (b"[]", "non-empty JSON list"),
    (b'{"role": "user"}', "non-empty JSON list"),
    (b'[{"role": "user"}]', 'messages[0] must be an object with string "role" and "content"'),
    (b'[{"role": "tool", "content": "x"}]', "messages[0].role is 'tool'"),
    (b'[{"role": "user", "content": " "}]', "no text"),
])
def test_bad_messages_say_what_to_change(raw: bytes, message: str) -> None:
    with pytest.raises(gen.BadRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
        gen.parse_messages(raw)


def test_sampling_defaults_and_values() -> None:
    assert gen.parse_sampling(None, 99) == gen.Sampling(max_tokens=99)
    assert gen.parse_sampling(b"{}") == gen.Sampling()
    parsed = gen.parse_sampling(json.dumps({"max_tokens": 5, "temperature": 0, "top_p": 0,
                                            "stop": "\n", "seed": 3}))
    assert parsed == gen.Sampling(5, 0.0, 1.0, ("\n",), 3)  # top_p 0 means 1


@pytest.mark.parametrize(("values", "message"), [
    ([], "must be a JSON object"),
    ({"max_token": 3}, "unknown keys ['max_token']"),
    ({"max_tokens": 0}, "max_tokens must be an integer of 1 or more"),
    ({"max_tokens": 2.5}, "max_tokens must be an integer"),
    ({"temperature": "hot"}, "temperature must be a number"),
    ({"temperature": -0.1}, "temperature must be 0 or more"),
    ({"top_p": 2}, "top_p must be in (0, 1]"),
    ({"stop": ["ok", ""]}, "stop must be a string or a list of non-empty strings"),
    ({"stop": ["x"] * 17}, "stop has 17 sequences; at most 16"),
    ({"seed": "1"}, "seed must be an integer"),
])
def test_bad_sampling_says_what_to_change(values: Any, message: str) -> None:
    with pytest.raises(gen.BadRequest) as error:
        gen.parse_sampling(json.dumps(values))

    assert message in str(error.value)


# -- prompts ------------------------------------------------------------------------------

class _PlainTokenizer:
    """A tokenizer without a chat template: one id per character."""

    chat_template = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]


def test_without_a_chat_template_the_prompt_is_role_lines() -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]

    assert gen.plain_prompt(messages) == "system: be brief\nuser: hi\nassistant:"
    assert gen.render_prompt(_PlainTokenizer(), messages) == [
        ord(c) for c in "system: be brief\nuser: hi\nassistant:"]


# -- stop sequences -----------------------------------------------------------------------

def stream_through(scanner: Any, pieces: list[str]) -> tuple[str, bool]:
    """Feed a completion growing by ``pieces``; what was sent, and whether it stopped."""
    sent, text = "", ""
    for piece in pieces:
        text += piece
        delta, stopped = scanner.push(text)
        sent += delta
        if stopped:
            return sent, True
    return sent + scanner.flush(text), False


def test_a_stop_split_across_pieces_is_found_and_not_sent() -> None:
    assert stream_through(gen.StopScanner(["END"]), ["abc E", "N", "D tail"]) == ("abc ", True)


def test_text_that_only_looks_like_a_stop_start_is_sent_in_the_end() -> None:
    scanner = gen.StopScanner(["END"])

    assert scanner.push("abc EN") == ("abc ", False)  # "EN" held back
    assert scanner.push("abc ENough") == ("ENough", False)
    assert stream_through(gen.StopScanner(["END"]), ["x E", "N"]) == ("x EN", False)


def test_the_earliest_of_several_stops_wins() -> None:
    assert stream_through(gen.StopScanner(["world", "lo w"]), ["hello world"]) == ("hel", True)


def test_an_incomplete_character_waits_for_its_bytes() -> None:
    scanner = gen.StopScanner([])

    assert scanner.push("caf\ufffd") == ("caf", False)
    assert scanner.push("café") == ("é", False)


def test_without_stops_everything_is_sent_at_once() -> None:
    assert gen.StopScanner([]).push("all of it") == ("all of it", False)


# -- sampling -----------------------------------------------------------------------------

def test_temperature_zero_is_greedy_and_top_p_keeps_the_likely_tokens() -> None:
    import torch

    logits = torch.tensor([0.0, 5.0, 4.9, -9.0])
    generator = torch.Generator().manual_seed(0)
    greedy = gen.Sampling(temperature=0.0)
    nucleus = gen.Sampling(temperature=1.0, top_p=0.5)

    assert gen.choose_token(logits, greedy, generator) == 1
    assert {gen.choose_token(logits, nucleus, generator) for _ in range(50)} == {1}
    wide = {gen.choose_token(logits, gen.Sampling(temperature=1.0), generator)
            for _ in range(200)}
    assert {1, 2} <= wide


# -- loading ------------------------------------------------------------------------------

def test_the_override_is_the_repository_config_with_the_checkpoint_set() -> None:
    override = json.loads(config_override(REPOSITORY, GENERATOR, {"checkpoint": "/ck"}))

    assert override["name"] == "generator"
    assert override["model_transaction_policy"] == {"decoupled": True}
    assert override["parameters"]["checkpoint"] == {"string_value": "/ck"}
    assert override["parameters"]["default_max_tokens"] == {"string_value": "256"}
    assert [i["name"] for i in override["input"]] == ["messages", "sampling_parameters"]


def test_checkpoint_checks_say_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        check_checkpoint(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is not a directory"):
        check_checkpoint(tmp_path / "file")
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        check_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no model_type"):
        check_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(CheckpointError, match="no weights"):
        check_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no tokenizer"):
        check_checkpoint(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    assert check_checkpoint(tmp_path) == tmp_path.resolve()


def test_a_failed_model_does_not_make_the_server_unready(tmp_path: Path) -> None:
    command = TritonServer(tmp_path, tmp_path / "work", models=["embedder"]).command()

    assert "--strict-readiness=false" in command


# -- the provider's errors ----------------------------------------------------------------

class _StreamError(Exception):
    def message(self) -> str:
        return str(self)


@pytest.mark.parametrize(("error", "kind"), [
    (_StreamError("invalid input: sampling_parameters.top_p must be in (0, 1]"), "bad_request"),
    (_StreamError("Request for unknown model: 'x' is not found"), "connection"),
    (_StreamError("generation failed: RuntimeError: CUDA out of memory"), "server"),
])
def test_streamed_errors_are_classified(error: Exception, kind: str) -> None:
    classified = classify(error, "127.0.0.1:1", "generator")

    assert classified.kind == kind
    if kind == "bad_request":
        assert classified.message == "model generator: sampling_parameters.top_p must be " \
                                     "in (0, 1]"
