"""The models engine's pure parts: the implicit local generator entry and provider wiring."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mesh.config import ModelSettings
from mesh.errors import ConfigError
from mesh.models.engine import build_providers, coalesced, with_local_generator

CLOUD = {"name": "gpt", "provider": "openai", "priority": 5, "output_usd_per_million": 1.0}


def test_a_configured_checkpoint_becomes_the_first_local_model(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    settings = with_local_generator(ModelSettings.model_validate(
        {"catalog": [CLOUD], "generator_checkpoint": str(tmp_path)}))
    local, cloud = settings.catalog
    assert (local.name, local.provider, local.upstream) == ("local", "triton", "generator")
    assert (local.context_window, local.max_output_tokens) == (4096, 1024)
    assert local.priority < cloud.priority


def test_an_unreadable_checkpoint_gets_a_default_window(tmp_path: Path) -> None:
    settings = with_local_generator(ModelSettings.model_validate(
        {"generator_checkpoint": str(tmp_path / "elsewhere")}))
    assert [(m.name, m.context_window) for m in settings.catalog] == [("local", 2048)]


def test_an_explicit_triton_entry_or_no_checkpoint_changes_nothing(tmp_path: Path) -> None:
    mine = {"name": "mine", "provider": "triton", "upstream": "generator"}
    explicit = ModelSettings.model_validate({"catalog": [mine],
                                             "generator_checkpoint": str(tmp_path)})
    assert with_local_generator(explicit) is explicit
    plain = ModelSettings.model_validate({"catalog": [CLOUD]})
    assert with_local_generator(plain) is plain


def test_an_openai_compatible_model_needs_a_base_url() -> None:
    settings = ModelSettings.model_validate(
        {"catalog": [{"name": "vllm", "provider": "openai_compatible"}]})
    with pytest.raises(ConfigError, match="needs base_url"):
        build_providers(settings)


def test_triton_models_are_skipped_without_a_triton_url() -> None:
    settings = ModelSettings.model_validate(
        {"catalog": [{"name": "local", "provider": "triton"}, CLOUD]})
    assert list(build_providers(settings)) == ["gpt"]


async def _source(items: list[str | float | Exception], closed: list[bool]
                  ) -> AsyncIterator[str]:
    """Yields strings, sleeps for floats, raises exceptions; records being closed."""
    try:
        for item in items:
            if isinstance(item, Exception):
                raise item
            if isinstance(item, float):
                await asyncio.sleep(item)
            else:
                yield item
    finally:
        closed.append(True)


async def test_deltas_that_arrive_together_are_sent_as_one_after_the_first() -> None:
    closed: list[bool] = []
    got = [d async for d in coalesced(_source(["a", "b", "c", 0.05, "d", "e", 0.05, "f"],
                                              closed))]
    # the first goes alone, before the rest of its burst is read: time to first token
    assert got == ["a", "bc", "de", "f"]
    assert closed == [True]


async def test_an_error_comes_after_the_text_before_it() -> None:
    closed: list[bool] = []
    stream = coalesced(_source(["a", "b", "c", ValueError("upstream cut")], closed))
    assert await anext(stream) == "a"
    assert await anext(stream) == "bc"
    with pytest.raises(ValueError, match="upstream cut"):
        await anext(stream)


async def test_closing_early_closes_the_source() -> None:
    closed: list[bool] = []
    stream = coalesced(_source(["a", 0.05, "b", 10.0, "never"], closed))
    assert await anext(stream) == "a"
    await stream.aclose()
    assert closed == [True]
