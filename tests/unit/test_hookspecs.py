"""Meta-tests: every hook is documented, has a test, and is in the plugin author's guide."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from mesh.plugins import hookspecs

ROOT = Path(__file__).resolve().parents[2]
HOOKS = sorted(name for name, obj in vars(hookspecs).items()
               if name.startswith("revo_") and inspect.isfunction(obj))


def test_there_are_hooks() -> None:
    # settings need no hook: see EngineSpec
    assert HOOKS == ["revo_commands", "revo_engine", "revo_hookspecs"]


def test_every_hook_is_a_revo_hookspec() -> None:
    for name in HOOKS:
        assert hasattr(getattr(hookspecs, name), "revo_spec"), f"{name} is not marked @hookspec"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_docstring_has_returns_and_versionadded(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""

    assert ":returns:" in doc
    assert "versionadded" in doc


@pytest.mark.parametrize("hook", HOOKS)
def test_firstresult_hooks_say_so(hook: str) -> None:
    function = getattr(hookspecs, hook)
    if function.revo_spec.get("firstresult"):
        assert "first non-None result" in (inspect.getdoc(function) or "")


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_fully_typed(hook: str) -> None:
    signature = inspect.signature(getattr(hookspecs, hook))

    assert signature.return_annotation is not inspect.Signature.empty
    for parameter in signature.parameters.values():
        assert parameter.annotation is not inspect.Parameter.empty, parameter.name


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_exercised_by_the_plugin_host_tests(hook: str) -> None:
    source = (ROOT / "tests" / "unit" / "test_plugin_host.py").read_text(encoding="utf-8")

    assert f"def test_{hook}" in source, f"write a test named test_{hook}_... for it"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_in_the_plugin_guide(hook: str) -> None:
    guide = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")

    assert hook in guide


def test_the_example_engine_is_at_most_45_lines() -> None:
    source = ROOT / "plugins" / "echo" / "src" / "revo_engine_echo" / "__init__.py"

    assert len(source.read_text(encoding="utf-8").splitlines()) <= 45


def test_hooks_that_plugins_declare_are_documented_like_the_meshs() -> None:
    from revo_engine_parallel import hookspecs as parallel

    guide = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    declared = [obj for name, obj in vars(parallel).items()
                if name.startswith("revo_") and inspect.isfunction(obj)]

    assert [spec.__name__ for spec in declared] == ["revo_task_types"]
    for spec in declared:
        doc = inspect.getdoc(spec) or ""
        assert hasattr(spec, "revo_spec")
        assert ":returns:" in doc
        assert "versionadded" in doc
        assert spec.__name__ in guide
