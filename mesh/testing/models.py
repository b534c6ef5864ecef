"""Random-weight causal language model checkpoints, made offline, for tests and benchmarks.

:func:`make_checkpoint` writes a Hugging Face checkpoint directory (``config.json``, weights,
``tokenizer.json`` and its config, a chat template) that ``transformers`` loads with
``AutoModelForCausalLM`` / ``AutoTokenizer``, and so does the Triton ``generator`` model::

    from mesh.testing.models import make_checkpoint

    checkpoint = make_checkpoint(tmp_path / "tiny")             # a few MB, about a second
    checkpoint = make_checkpoint(tmp_path / "small", size="small")  # ~3e7 parameters (CPU)
    checkpoint = make_checkpoint(tmp_path / "1b", size="1b")     # ~1.1e9 parameters (GPU)

The weights are random (seeded), so the text is noise; what the checkpoint is good for is
exercising real tokenization, real forward passes, streaming, stop sequences and token counts.
The tokenizer is a byte-level BPE trained on a few lines of built-in text (``small`` and
``1b``: plus made-up words, to fill an 8000- or 32000-token vocabulary), so every string
encodes, and nothing is downloaded. Needs the ``models`` extra (torch, transformers).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

__all__ = ["CHAT_TEMPLATE", "EOS_TOKEN", "make_checkpoint"]

EOS_TOKEN = "<|end|>"
"""The end-of-sequence token of the made checkpoints (also their padding token)."""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}" + EOS_TOKEN + "\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
"""Jinja chat template of the made checkpoints: ``<|role|>content<|end|>`` per turn."""

_TEXT = [
    "The mesh routes each request to a node that hosts the engine.",
    "Local models run on Triton; cloud models are the fallback.",
    "def add(a, b):\n    return a + b\n",
    "for item in items:\n    print(item)\n",
    "Stop sequences end a completion before the limit of tokens.",
    "Every token and every cent is counted in the ledger.",
    "user: how do I write a test?\nassistant: start with the outcome a user would notice.",
    "0123456789 +-*/=<>()[]{}:;,.!? \"'` ~@#$%^&_|\\",
]

# (hidden, layers, heads, kv heads, intermediate, vocabulary)
_SIZES: dict[str, tuple[int, int, int, int, int, int]] = {
    "tiny": (64, 2, 4, 2, 128, 512),
    # ~3.2e7 parameters: 8 layers x ~2.9e6 + 2 x 8000 x 512 embeddings; milliseconds per
    # token on a CPU, so CPU benchmarks measure serving costs against real forward passes.
    "small": (512, 8, 8, 4, 1408, 8000),
    # Llama shapes at ~1.1e9 parameters: 22 layers x ~44.6e6 + 2 x 32000 x 2048 embeddings.
    "1b": (2048, 22, 32, 4, 5632, 32000),
}


def _corpus(vocab_size: int) -> list[str]:
    """Training text: the built-in lines, plus (for a realistic vocabulary) lines of made-up
    words with Zipf frequencies, so that BPE finds enough merges to fill ``vocab_size``."""
    lines = _TEXT * 4
    if vocab_size > 1000:
        rng = random.Random(0)
        letters = "abcdefghijklmnopqrstuvwxyz"
        lexicon = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 10)))
                   for _ in range(2 * vocab_size)]
        words = rng.choices(lexicon, weights=[1 / (i + 1) for i in range(len(lexicon))],
                            k=20 * vocab_size)
        lines += [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)]
    return lines


def _tokenizer(vocab_size: int) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(_corpus(vocab_size), trainer=trainer)
    fast: object = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
        chat_template=CHAT_TEMPLATE)
    return fast


def make_checkpoint(path: Path, *, size: Literal["tiny", "small", "1b"] = "tiny",
                    seed: int = 0) -> Path:
    """Write a random-weight Llama-shaped checkpoint and its tokenizer into ``path``.

    ``tiny``: 2 layers of width 64 and a 512-token vocabulary (well under a million
    parameters, about a second). ``small``: 8 layers of width 512 and an 8000-token
    vocabulary (about 3.2e7 parameters in float32, ~130 MB; a few seconds). ``1b``: about
    1.1e9 parameters saved in bfloat16 (~2.2 GB; meant for a GPU machine). The same
    ``seed`` gives the same weights. Returns ``path``.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if size not in _SIZES:
        raise ValueError(f"size must be one of {', '.join(_SIZES)}, not {size!r}")
    hidden, layers, heads, kv_heads, intermediate, vocabulary = _SIZES[size]
    tokenizer = _tokenizer(vocabulary)
    eos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)  # type: ignore[attr-defined]
    config = LlamaConfig(
        vocab_size=len(tokenizer),  # type: ignore[arg-type]
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=intermediate,
        max_position_embeddings=2048, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
        tie_word_embeddings=False)
    torch.manual_seed(seed)
    dtype = torch.bfloat16 if size == "1b" else torch.float32
    model: Any = LlamaForCausalLM(config)
    model.to(dtype)
    model.generation_config.pad_token_id = eos
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)  # type: ignore[attr-defined]
    return path
