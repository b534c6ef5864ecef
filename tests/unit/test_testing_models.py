"""Random-weight checkpoints for tests (no network, no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.embedded.triton import check_checkpoint
from mesh.testing.models import EOS_TOKEN, make_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("models") / "tiny")


def test_a_tiny_checkpoint_loads_with_transformers_and_generates(tiny: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny)

    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert tokenizer.eos_token == EOS_TOKEN
    assert model.config.eos_token_id == tokenizer.eos_token_id
    prompt = tokenizer.encode("def add(a, b):")
    output = model.generate(torch.tensor([prompt]), max_new_tokens=5, do_sample=False)
    assert output.shape[1] > len(prompt)
    assert check_checkpoint(tiny) == tiny.resolve()


def test_the_tokenizer_round_trips_any_text(tiny: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    text = "héllo wörld 🙂 — {x: [1, 2]}\n\ttabs"

    assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=True) == text


def test_the_chat_template_marks_roles_and_asks_for_the_answer(tiny: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        tokenize=False, add_generation_prompt=True)

    assert text == f"<|system|>be brief{EOS_TOKEN}\n<|user|>hi{EOS_TOKEN}\n<|assistant|>"


def test_the_same_seed_makes_the_same_weights(tmp_path: Path, tiny: Path) -> None:
    again = make_checkpoint(tmp_path / "again")
    other = make_checkpoint(tmp_path / "other", seed=5)

    weights = (tiny / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == weights
    assert (other / "model.safetensors").read_bytes() != weights


def test_an_unknown_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size must be one of tiny, small, 1b"):
        make_checkpoint(tmp_path, size="7b")  # type: ignore[arg-type]


def test_a_small_checkpoint_has_tens_of_millions_of_parameters(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    small = make_checkpoint(tmp_path / "small", size="small")
    model = AutoModelForCausalLM.from_pretrained(small)

    assert 20_000_000 < sum(p.numel() for p in model.parameters()) < 50_000_000
    assert len(AutoTokenizer.from_pretrained(small)) == 8000
    assert check_checkpoint(small) == small.resolve()
