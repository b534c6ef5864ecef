"""The plugin host: finds engine plugins, calls their hooks, and records how each fared.

No other module touches the pluggy manager: callers use :class:`PluginHost`'s typed
methods. Each hook is called per plugin, so one plugin's failure is its own status and
never stops the others.
"""

from __future__ import annotations

import enum
import importlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from mesh.engine import EngineSpec, MethodBinding, bind_methods
from mesh.errors import ConfigError
from mesh.plugins import hookspecs

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "revo.engines"


class PluginStatus(enum.Enum):
    ENABLED = "enabled"
    DISABLED = "disabled"
    LOAD_ERROR = "load error"
    CONFIG_ERROR = "config error"
    START_ERROR = "start error"


@dataclass
class PluginRecord:
    """One plugin as the host found it."""

    name: str
    source: str
    """``module:object`` the plugin came from."""
    distribution: str = ""
    version: str = ""
    status: PluginStatus = PluginStatus.ENABLED
    message: str = ""
    spec: EngineSpec | None = None
    settings: Any = None
    methods: dict[str, MethodBinding] = field(default_factory=dict)
    overrides: str = ""
    """The installed plugin that ``plugins.extra`` replaced, if any."""

    def fail(self, status: PluginStatus, exc: BaseException | str) -> None:
        self.status = status
        self.message = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        if self.overrides:
            self.message += f" (loaded from {self.source}, which overrides {self.overrides})"
        log.error("plugin %s: %s: %s", self.name, status.value, self.message)


class PluginHost:
    """Loads engine plugins from entry points (and ``plugins.extra``) and configures them."""

    def __init__(
        self,
        *,
        block: Iterable[str] = (),
        only: Iterable[str] = (),
        extra: Mapping[str, str] | None = None,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        discover: bool = True,
    ) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._block = set(block)
        self._only = set(only)
        self._extra = dict(extra or {})
        self._settings = dict(settings or {})
        self._discover = discover
        self.records: dict[str, PluginRecord] = {}

    # -- loading ----------------------------------------------------------------------

    def _entry_points(self) -> tuple[list[EntryPoint], dict[str, EntryPoint]]:
        """Entry points by name (``plugins.extra`` wins), and the installed ones it overrode."""
        installed = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)} \
            if self._discover else {}
        chosen = dict(installed)
        overridden = {}
        for name, value in self._extra.items():
            if name in installed:
                overridden[name] = installed[name]
            chosen[name] = EntryPoint(name, value, ENTRY_POINT_GROUP)
        return sorted(chosen.values(), key=lambda ep: ep.name), overridden

    def load(self) -> list[PluginRecord]:
        """Import, declare and configure every plugin; return their records."""
        chosen, overridden = self._entry_points()
        for ep in chosen:
            record = PluginRecord(name=ep.name, source=ep.value)
            if ep.dist is not None:
                record.distribution, record.version = ep.dist.name, ep.dist.version
            if ep.name in overridden:
                old = overridden[ep.name]
                record.overrides = f"{old.value} from {old.dist.name if old.dist else '?'}"
                log.warning("plugin %s: plugins.extra loads %s instead of the installed %s",
                            ep.name, ep.value, record.overrides)
            self.records[ep.name] = record
            if ep.name in self._block or (self._only and ep.name not in self._only):
                record.status, record.message = PluginStatus.DISABLED, "blocked by configuration"
                continue
            plugin = self._import(ep, record)
            if plugin is not None:
                self._declare(plugin, record)
            if record.status is PluginStatus.ENABLED:
                self._configure(record)
        self._pm.check_pending()
        return list(self.records.values())

    def _import(self, ep: EntryPoint, record: PluginRecord) -> object | None:
        try:
            plugin = ep.load() if ":" in ep.value else importlib.import_module(ep.value)
            self._pm.register(plugin, name=ep.name)
        except Exception as exc:
            record.fail(PluginStatus.LOAD_ERROR, exc)
            return None
        unknown = [impl.name for impl in self._impls_of(plugin) if impl.spec is None]
        if unknown:
            self._pm.unregister(plugin)
            record.fail(PluginStatus.LOAD_ERROR,
                        f"implements unknown hooks {unknown}; known hooks: "
                        f"{sorted(n for n in dir(hookspecs) if n.startswith('revo_'))}")
            return None
        return plugin

    def _impls_of(self, plugin: object) -> list[pluggy.HookCaller]:
        return self._pm.get_hookcallers(plugin) or []

    def _call(self, hook: str, name: str, **kwargs: Any) -> Any:
        """Call one plugin's implementation of ``hook`` (None when it has none)."""
        caller: pluggy.HookCaller = getattr(self._pm.hook, hook)
        for impl in caller.get_hookimpls():
            if impl.plugin_name == name:
                return impl.function(*(kwargs[arg] for arg in impl.argnames))
        return None

    def _declare(self, plugin: object, record: PluginRecord) -> None:
        try:
            spec = self._call("revo_engine", record.name)
            if not isinstance(spec, EngineSpec):
                raise ConfigError(f"revo_engine() returned {type(spec).__name__}, "
                                  "expected mesh.engine.EngineSpec")
            if spec.name != record.name:
                raise ConfigError(f"entry point name '{record.name}' must equal the engine "
                                  f"name '{spec.name}'")
            record.methods = bind_methods(spec)
        except Exception as exc:
            self._pm.unregister(plugin)
            record.fail(PluginStatus.LOAD_ERROR, exc)
            return
        record.spec = spec
        record.version = spec.version or record.version

    def _configure(self, record: PluginRecord) -> None:
        raw = dict(self._settings.get(record.name, {}))
        try:
            configured = self._call("revo_configure", record.name, settings=raw)
        except Exception as exc:
            record.fail(PluginStatus.CONFIG_ERROR, exc)
            return
        record.settings = raw if configured is None else configured

    # -- queries ----------------------------------------------------------------------

    def collect(self, hook: str) -> dict[str, Any]:
        """Each enabled plugin's non-None answer to ``hook`` (no arguments), by plugin name."""
        answers: dict[str, Any] = {}
        for record in self.enabled():
            answer = self._call(hook, record.name)
            if answer is not None:
                answers[record.name] = answer
        return answers

    def enabled(self) -> list[PluginRecord]:
        """Plugins ready to start, in name order."""
        return [r for r in self.records.values() if r.status is PluginStatus.ENABLED]

    def mark_start_error(self, name: str, exc: BaseException | str) -> None:
        self.records[name].fail(PluginStatus.START_ERROR, exc)
