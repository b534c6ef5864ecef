"""The plugin host: finds engine plugins, calls their hooks, and records how each fared.

No other module touches the pluggy manager: callers use :class:`PluginHost`'s typed
methods, one per core hook (:meth:`~PluginHost.hookspecs`, :meth:`~PluginHost.engine`) and
:meth:`~PluginHost.each` for hooks that plugins declare. Hooks are called through pluggy
(so hook wrappers and pluggy's tracing see them), one plugin at a time, so one plugin's
failure is its own status and never stops the others. The host also owns the engines'
settings: it validates ``[engines.<name>]`` with the model the engine declares.
"""

from __future__ import annotations

import difflib
import enum
import importlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any, ParamSpec, TypeVar

import pluggy
from pydantic import BaseModel, ValidationError

from mesh.engine import EngineSpec, MethodBinding, bind_methods
from mesh.errors import ConfigError
from mesh.plugins import hookspecs

P = ParamSpec("P")
T = TypeVar("T")

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
        if log.isEnabledFor(logging.DEBUG):  # every hook call and its answer, in the log
            self._pm.trace.root.setwriter(lambda text: log.debug("%s", text.rstrip()))
            self._pm.enable_tracing()
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
        """Import, extend, declare and configure every plugin; return their records."""
        chosen, overridden = self._entry_points()
        plugins: dict[str, object] = {}
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
            try:
                plugins[ep.name] = (ep.load() if ":" in ep.value
                                    else importlib.import_module(ep.value))
            except Exception as exc:
                record.fail(PluginStatus.LOAD_ERROR, exc)
        self._extend(plugins)
        for name in plugins:
            record = self.records[name]
            if record.status is PluginStatus.ENABLED:
                self._declare(record)
            if record.status is PluginStatus.ENABLED:
                self._configure(record)
        self._pm.check_pending()
        return list(self.records.values())

    def _register(self, name: str, plugin: object) -> bool:
        try:
            self._pm.register(plugin, name=name)
        except Exception as exc:  # pluggy checks each implementation against its spec
            self.records[name].fail(PluginStatus.LOAD_ERROR, exc)
            return False
        return True

    def _extend(self, plugins: dict[str, object]) -> None:
        """Register the plugins with every hook any of them declares (``revo_hookspecs``);
        a plugin with a bad or unknown hook gets *load error*."""
        registered = {name: plugin for name, plugin in plugins.items()
                      if self._register(name, plugin)}
        declared: list[tuple[str, ModuleType | type]] = []
        for name in registered:
            try:
                declared += [(name, namespace) for namespace in self.hookspecs(name)]
            except Exception as exc:
                self.records[name].fail(PluginStatus.LOAD_ERROR, exc)
        if declared:
            # pluggy checks implementations registered before their spec when the spec is
            # added, and raises for the first bad one: register again after adding them,
            # so that a bad implementation is its own plugin's load error.
            for name in registered:
                self._pm.unregister(name=name)
            for name, namespace in declared:
                self._add_hookspecs(name, namespace)
            registered = {name: plugin for name, plugin in registered.items()
                          if self.records[name].status is PluginStatus.ENABLED
                          and self._register(name, plugin)}
        for name, plugin in plugins.items():
            record = self.records[name]
            if name not in registered or record.status is not PluginStatus.ENABLED:
                if self._pm.is_registered(plugin):
                    self._pm.unregister(plugin)
                continue
            unknown = sorted(caller.name for caller in self._pm.get_hookcallers(plugin) or []
                             if not caller.has_spec()
                             and any(not impl.optionalhook for impl in caller.get_hookimpls()
                                     if impl.plugin is plugin))
            if unknown:
                self._pm.unregister(plugin)
                known = sorted(n for n in dir(self._pm.hook) if n.startswith("revo_")
                               and getattr(self._pm.hook, n).has_spec())
                record.fail(PluginStatus.LOAD_ERROR, f"implements unknown hooks {unknown}; "
                                                     f"known hooks: {known}")

    def _add_hookspecs(self, name: str, namespace: ModuleType | type) -> None:
        taken = [hook for hook in dir(namespace) if hook.startswith("revo_")
                 and getattr(getattr(self._pm.hook, hook, None), "has_spec", lambda: False)()]
        try:
            if taken:
                raise ConfigError(f"revo_hookspecs() declares {taken}, already declared")
            self._pm.add_hookspecs(namespace)
        except Exception as exc:
            self.records[name].fail(PluginStatus.LOAD_ERROR, exc)

    def _declare(self, record: PluginRecord) -> None:
        try:
            spec = self.engine(record.name)
            if not isinstance(spec, EngineSpec):
                raise ConfigError(f"revo_engine() returned {type(spec).__name__}, "
                                  "expected mesh.engine.EngineSpec")
            if spec.name != record.name:
                raise ConfigError(f"entry point name '{record.name}' must equal the engine "
                                  f"name '{spec.name}'")
            record.methods = bind_methods(spec)
        except Exception as exc:
            self._pm.unregister(name=record.name)
            record.fail(PluginStatus.LOAD_ERROR, exc)
            return
        record.spec = spec
        record.version = spec.version or record.version

    def _configure(self, record: PluginRecord) -> None:
        assert record.spec is not None
        try:
            record.settings = engine_settings(record.name, record.spec.settings,
                                              self._settings.get(record.name, {}))
        except ConfigError as exc:
            record.fail(PluginStatus.CONFIG_ERROR, str(exc))

    # -- hooks, one typed method each ---------------------------------------------------

    def _hook(self, hook: str, name: str) -> pluggy.HookCaller | None:
        """``hook`` as pluggy calls it, with plugin ``name``'s implementation and none of
        the other engine plugins' (None when nobody implements or declares it)."""
        caller: pluggy.HookCaller | None = getattr(self._pm.hook, hook, None)
        if caller is None:
            return None
        others = [plugin for other, plugin in self._pm.list_name_plugin()
                  if other != name and other in self.records and plugin is not None]
        return self._pm.subset_hook_caller(hook, others)

    def hookspecs(self, name: str) -> list[ModuleType | type]:
        """Plugin ``name``'s answer to ``revo_hookspecs``: the hookspec namespaces it adds."""
        caller = self._hook("revo_hookspecs", name)
        answers = caller() if caller is not None else []
        return [namespace for answer in answers for namespace in answer or ()]

    def engine(self, name: str) -> EngineSpec | None:
        """Plugin ``name``'s answer to ``revo_engine``."""
        caller = self._hook("revo_engine", name)
        return caller() if caller is not None else None

    def each(self, spec: Callable[P, T | None], *args: P.args,
             **kwargs: P.kwargs) -> dict[str, T]:
        """Each enabled plugin's non-None answer to the hook that ``spec`` (a hookspec
        function, e.g. one a plugin declared) specifies, by plugin name, asked one plugin
        at a time; arguments by keyword. A plugin whose implementation raises makes this
        raise :class:`~mesh.errors.ConfigError` naming it."""
        if args:
            raise TypeError("hooks take their arguments by keyword")
        hook = spec.__name__
        firstresult = bool(getattr(spec, f"{hookspecs.PROJECT}_spec", {}).get("firstresult"))
        answers: dict[str, T] = {}
        for record in self.enabled():
            caller = self._hook(hook, record.name)
            if caller is None:
                break
            try:
                answer = caller(**kwargs)
            except Exception as exc:
                raise ConfigError(f"plugin {record.name}: {hook}() failed: "
                                  f"{type(exc).__name__}: {exc}") from exc
            if not firstresult:
                answer = answer[0] if answer else None
            if answer is not None:
                answers[record.name] = answer
        return answers

    # -- queries ----------------------------------------------------------------------

    def enabled(self) -> list[PluginRecord]:
        """Plugins ready to start, in name order."""
        return [r for r in self.records.values() if r.status is PluginStatus.ENABLED]

    def mark_start_error(self, name: str, exc: BaseException | str) -> None:
        self.records[name].fail(PluginStatus.START_ERROR, exc)


def engine_settings(name: str, model: type[BaseModel] | None,
                    table: Mapping[str, Any]) -> BaseModel | None:
    """``[engines.<name>]`` (without the mesh's own keys) validated with the engine's
    settings ``model``, or ConfigError naming the table and the key to fix."""
    where = f"[engines.{name}]"
    if model is None:
        if table:
            raise ConfigError(f"{where} {', '.join(sorted(table))}: engine '{name}' takes no "
                              "settings of its own (only pool_size and max_pending)")
        return None
    known = sorted({*model.model_fields,
                    *(f.alias for f in model.model_fields.values() if f.alias)})
    for key in sorted(table):
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
            raise ConfigError(f"{where} {key}: unknown key; {hint}")
    try:
        return model.model_validate(dict(table))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'table'}: {error['msg']}"
            for error in exc.errors())
        raise ConfigError(f"{where} {problems}") from None
