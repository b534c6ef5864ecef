"""The generator model on a real Triton server, with a tiny random-weight checkpoint made here,
driven through the router's provider (:class:`mesh.models.local.TritonGenerator`).

Expected texts and token counts come from running the same checkpoint in-process with
transformers (greedy decoding is deterministic), so every assertion is exact.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh.embedded.triton import CheckpointError, TritonServer
from mesh.models.local import TritonGenerator
from mesh.models.providers import Chunk, ProviderError, Turn
from mesh.testing.models import make_checkpoint

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2] / "triton_models"
PROMPT = [Turn("system", "You write code."), Turn("user", "How do I add two numbers?")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("checkpoint") / "tiny", seed=1)


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path,
           models_env: Path) -> Iterator[TritonServer]:
    server = TritonServer(REPOSITORY, tmp_path_factory.mktemp("triton"), models=[],
                          python_env=models_env)
    server.start()
    try:
        server.load_generator(checkpoint)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> Any:
    """The same checkpoint in this process: the expected prompts, texts and token counts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    class Reference:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        model = AutoModelForCausalLM.from_pretrained(checkpoint)

        def prompt_ids(self, turns: list[Turn]) -> list[int]:
            text = self.tokenizer.apply_chat_template(
                [{"role": t.role, "content": t.content} for t in turns], tokenize=False,
                add_generation_prompt=True)
            return list(self.tokenizer.encode(text, add_special_tokens=False))

        def greedy(self, turns: list[Turn], max_tokens: int) -> list[int]:
            import torch

            prompt = self.prompt_ids(turns)
            output = self.model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens,
                                         do_sample=False)
            return [int(t) for t in output[0, len(prompt):]]

        def text(self, ids: list[int]) -> str:
            return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    return Reference()


@pytest.fixture
async def generator(triton: TritonServer) -> AsyncIterator[TritonGenerator]:
    provider = TritonGenerator(triton.grpc_url)
    try:
        yield provider
    finally:
        await provider.close()


async def collect(generator: TritonGenerator, turns: list[Turn] = PROMPT, *,
                  max_tokens: int = 16, temperature: float = 0.0, top_p: float = 0.0,
                  stop: tuple[str, ...] = (), seed: int | None = None,
                  model: str = "generator") -> list[Chunk]:
    return [chunk async for chunk in generator.stream(
        model, turns, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
        stop=stop, timeout_s=60, seed=seed)]


def text_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


async def test_a_stream_is_deltas_then_exact_usage(generator: TritonGenerator,
                                                   reference: Any) -> None:
    expected = reference.greedy(PROMPT, 16)
    assert reference.tokenizer.eos_token_id not in expected  # precondition: runs to the cap

    chunks = await collect(generator, max_tokens=16)

    deltas, final = chunks[:-1], chunks[-1]
    assert len(deltas) > 1
    assert all(c.text and c.usage is None for c in deltas)
    assert final.usage is not None
    assert final.text == ""
    assert final.usage.prompt_tokens == len(reference.prompt_ids(PROMPT))
    assert final.usage.completion_tokens == 16
    assert final.finish_reason == "length"
    assert text_of(chunks) == reference.text(expected)


async def test_max_tokens_caps_the_completion(generator: TritonGenerator,
                                              reference: Any) -> None:
    chunks = await collect(generator, max_tokens=3)

    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    assert chunks[-1].finish_reason == "length"
    assert text_of(chunks) == reference.text(reference.greedy(PROMPT, 3))


async def test_a_stop_sequence_across_tokens_ends_the_text_before_it(
        generator: TritonGenerator, reference: Any) -> None:
    ids = reference.greedy(PROMPT, 24)
    # A stop that starts inside one token and ends inside a later one.
    pieces = [reference.text(ids[:i]) for i in range(len(ids) + 1)]
    boundary = next(i for i in range(4, len(ids)) if len(pieces[i + 1]) - len(pieces[i]) >= 2
                    and len(pieces[i]) - len(pieces[i - 1]) >= 2)
    start = len(pieces[boundary]) - 1
    stop = pieces[boundary + 1][start:start + 2]
    full = pieces[-1]
    assert full.find(stop) == start  # precondition: the first occurrence is the one we cut

    chunks = await collect(generator, max_tokens=24, stop=("never appears", stop))

    assert text_of(chunks) == full[:start]
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == boundary + 1  # the tokens holding the stop


async def test_the_same_seed_samples_the_same_text(generator: TritonGenerator) -> None:
    first = await collect(generator, max_tokens=20, temperature=1.0, top_p=0.9, seed=7)
    again = await collect(generator, max_tokens=20, temperature=1.0, top_p=0.9, seed=7)
    other = await collect(generator, max_tokens=20, temperature=1.0, top_p=0.9, seed=8)

    assert text_of(first) == text_of(again)
    assert first[-1].usage == again[-1].usage
    assert text_of(first) != text_of(other)


async def test_concurrent_streams_each_get_their_own_text(generator: TritonGenerator,
                                                          reference: Any) -> None:
    prompts = [[Turn("user", f"question number {i} about the ledger")] for i in range(6)]
    expected = [reference.text(reference.greedy(p, 12)) for p in prompts]

    results = await asyncio.gather(*(collect(generator, p, max_tokens=12) for p in prompts))

    assert [text_of(r) for r in results] == expected
    assert all(r[-1].usage is not None and r[-1].usage.completion_tokens == 12
               for r in results)


async def test_closing_the_stream_stops_generation(triton: TritonServer,
                                                   generator: TritonGenerator) -> None:
    log = triton.work_dir / "tritonserver.log"
    stream = generator.stream("generator", PROMPT, max_tokens=100_000, temperature=0.0,
                              top_p=0.0, stop=(), timeout_s=60)
    first = await anext(stream)  # type: ignore[call-overload]
    assert first.text
    await stream.aclose()  # type: ignore[attr-defined]

    # The model logs when a request ends cancelled; without cancellation this generation
    # would run to the end of the context window (about 2000 tokens) and log nothing.
    pattern = re.compile(r"generator: request cancelled after (\d+) tokens")
    found = None
    for _ in range(600):
        found = pattern.search(log.read_text())
        if found:
            break
        await asyncio.sleep(0.1)
    assert found is not None, "the generation was not cancelled"
    assert int(found.group(1)) < 2048 - 40
    chunks = await collect(generator, max_tokens=4)  # the server still serves
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert await generator.ready()


@pytest.mark.parametrize(("turns", "options", "message"), [
    ([Turn("robot", "hi")], {}, "role is 'robot'; use one of system, user, assistant"),
    ([Turn("user", "   ")], {}, "no text"),
    (PROMPT, {"temperature": -1.0}, "temperature must be 0 or more"),
    (PROMPT, {"top_p": 1.5}, "top_p must be in (0, 1]"),
    (PROMPT, {"max_tokens": -2}, "max_tokens must be an integer of 1 or more"),
])
async def test_bad_input_is_a_bad_request_with_a_clear_message(
        generator: TritonGenerator, turns: list[Turn], options: dict[str, Any],
        message: str) -> None:
    arguments: dict[str, Any] = {"max_tokens": 4, "temperature": 0.0, "top_p": 0.0} | options

    with pytest.raises(ProviderError) as error:
        await collect(generator, turns, **arguments)

    assert error.value.kind == "bad_request"
    assert not error.value.retryable
    assert message in error.value.message


async def test_a_prompt_over_the_context_window_is_a_bad_request(
        generator: TritonGenerator) -> None:
    long = [Turn("user", "word " * 3000)]  # the tiny checkpoint's window is 2048 tokens

    with pytest.raises(ProviderError, match="context window is 2048") as error:
        await collect(generator, long)

    assert error.value.kind == "bad_request"


async def test_a_model_triton_does_not_serve_is_a_connection_failure(
        generator: TritonGenerator) -> None:
    with pytest.raises(ProviderError) as error:
        await collect(generator, model="no-such-model")

    assert error.value.kind == "connection"
    assert "no-such-model" in error.value.message


async def test_an_unreachable_triton_is_a_connection_failure() -> None:
    provider = TritonGenerator("127.0.0.1:1")
    try:
        assert not await provider.ready()
        with pytest.raises(ProviderError) as error:
            await collect(provider)
        assert error.value.kind == "connection"
    finally:
        await provider.close()


async def test_readiness_names_the_loaded_generator(generator: TritonGenerator) -> None:
    assert await generator.ready()
    assert not await generator.ready("no-such-model")


def test_a_missing_checkpoint_is_a_clear_message(triton: TritonServer, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"does not exist"):
        triton.load_generator(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(CheckpointError, match=r"not a Hugging Face checkpoint: .*config.json"):
        triton.load_generator(tmp_path)

    assert triton.ready()


def test_a_broken_checkpoint_fails_to_load_and_the_server_keeps_serving(
        triton: TritonServer, checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer_config.json"):
        (broken / name).write_text((checkpoint / name).read_text())
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    (broken / "tokenizer.json").write_text(json.dumps({"truncated": True}))
    server = TritonServer(REPOSITORY, tmp_path / "work", models=[],
                          python_env=triton.python_env)
    server.start()
    try:
        with pytest.raises(RuntimeError, match=r"Triton could not load generator: .*"
                                               r"did not load as a causal language model"):
            server.load_generator(broken)
        assert server.ready()  # the failed model does not make the server unready
        server.load_generator(checkpoint)
        assert server.ready()
    finally:
        server.stop()


def test_revo_up_says_how_to_turn_the_generator_on_and_why_it_did_not_load(
        triton: TritonServer, tmp_path: Path) -> None:
    from mesh.config import load_config
    from mesh.embedded.up import Launcher

    unset = Launcher(load_config(read_file=False, environ={}, home=tmp_path))
    unset._load_generator(triton)
    missing = Launcher(load_config(read_file=False, environ={
        "REVO_MODELS__GENERATOR_CHECKPOINT": str(tmp_path / "nowhere")}, home=tmp_path))
    missing._load_generator(triton)

    assert unset.generator_note.startswith("off: set models.generator_checkpoint")
    assert missing.generator_note == (f"not loaded: generator checkpoint {tmp_path / 'nowhere'} "
                                      "does not exist (models.generator_checkpoint)")
    assert triton.ready()  # the generator loaded before is still served
