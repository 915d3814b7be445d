"""The plugin manager: built-in and third-party plugins, registered the same way.

Built-in plugins are the modules in :data:`DEFAULT_PLUGINS`, registered with the same
``pm.register(module)`` a third-party plugin gets; third-party plugins come from the
``explorank`` entry-point group through pluggy's own ``load_setuptools_entrypoints`` (one
entry point at a time, so one broken plugin does not stop the others), and their package
and version from ``list_plugin_distinfo``. Loading happens once, lazily, on first use.

Which plugins load:

- ``EXPLORANK_PLUGINS=none`` or ``plugins.block_external`` loads no entry points at all;
  ``EXPLORANK_PLUGINS=a,b`` or ``plugins.allow`` loads only the entry points whose name or
  distribution name is listed;
- ``EXPLORANK_PLUGINS_BLOCK=x,y`` or ``plugins.block`` blocks by name: a plugin (entry
  point, distribution or built-in module name) is not loaded; a scorer, policy or store of
  that name is not registered — built-ins included.

Name clashes are reported, never fatal (:attr:`PluginManager.clashes`; ``explorank
plugins`` lists them): a third-party plugin registering the name of a built-in replaces it
only when ``plugins.override`` lists the name (otherwise the built-in stays); two third-party
plugins registering the same name make that name unusable until one is blocked (using it
is a :class:`~explorank.errors.ConfigError` saying so).

A plugin that fails to import or to register is reported with its error and traceback in
:attr:`PluginManager.load_errors` (``explorank plugins -v`` prints the traceback).
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import logging
import os
import re
import threading
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

import pluggy

from explorank import __version__
from explorank.errors import ConfigError
from explorank.plugins import hookspecs
from explorank.plugins.api import Policy, Scorer, ScorerContext, StateStore
from explorank.plugins.errors import UnknownPluginError
from explorank.plugins.registry import (
    BLOCK_ENV_VAR,
    KINDS,
    LABELS,
    PluginClash,
    PluginInfo,
    PluginLoadError,
    Registry,
    normalize_kind,
)

__all__ = [
    "BLOCK_ENV_VAR",
    "DEFAULT_PLUGINS",
    "ENV_VAR",
    "KINDS",
    "PluginClash",
    "PluginInfo",
    "PluginLoadError",
    "PluginManager",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
ENV_VAR = "EXPLORANK_PLUGINS"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "explorank.plugins.builtin.scorers",
    "explorank.plugins.builtin.scorer_mf_online",
    "explorank.plugins.builtin.policies_basic",
    "explorank.plugins.builtin.policies_counting",
    "explorank.plugins.builtin.policies_linear",
    "explorank.plugins.builtin.policies_hybrid",
    "explorank.plugins.builtin.sqlite_store",
    "explorank.plugins.builtin.redis_store",
)


def _canonical(name: str) -> str:
    """PEP 503 normalisation, so ``explorank_plugin_example`` matches ``explorank-plugin-example``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(values: Iterable[str] | None) -> list[str]:
    return [v.strip() for v in values or () if v and v.strip()]


class PluginManager:
    """Typed access to explorank's registered plugins (see the module docstring)."""

    def __init__(
        self,
        *,
        allow: Iterable[str] | None = None,
        block_external: bool = False,
        block: Iterable[str] = (),
        override: Iterable[str] = (),
        default_plugins: Iterable[str] = DEFAULT_PLUGINS,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        allow_env = env.get(ENV_VAR, "").strip()
        self.block_external = bool(block_external) or allow_env.lower() == "none"
        self.allow_lists = [_names(allow)] if allow is not None else []
        if allow_env and allow_env.lower() != "none":
            self.allow_lists.append(_names(allow_env.split(",")))
        self.blocked_names = set(_names(block)) | set(_names(env.get(BLOCK_ENV_VAR, "").split(",")))
        self.override = set(_names(override))
        self.default_plugins = tuple(default_plugins)
        self.load_errors: list[PluginLoadError] = []
        #: plugins (entry points, modules) not loaded because of allow / block settings
        self.skipped: list[str] = []
        #: scorers, policies and stores not registered because plugins.block names them
        self.blocked: list[tuple[str, str]] = []
        self.clashes: list[PluginClash] = []
        self._builtin: set[str] = set()
        self._dists: dict[str, tuple[str, str]] = {}  # plugin name -> (dist, version)
        self._extra: list[tuple[object, str | None]] = []
        self._registry: Registry | None = None
        self._loaded = False
        self._lock = threading.RLock()

    # --------------------------------------------------------------- loading
    def register(self, plugin: object, name: str | None = None) -> None:
        """Register one more (third-party) plugin object: a module or an instance with
        hook implementations. Used by tests and applications embedding explorank."""
        with self._lock:
            if self._loaded:
                self._register(plugin, name or _plugin_name(plugin))
            else:
                self._extra.append((plugin, name))
            self._registry = None

    def load(self) -> None:
        """Load built-in and entry-point plugins (once; later calls do nothing)."""
        with self._lock:
            if self._loaded:
                return
            for module_name in self.default_plugins:
                if self._is_blocked(module_name):
                    self.skipped.append(module_name)
                    continue
                try:
                    module = importlib.import_module(module_name)
                except ModuleNotFoundError as exc:
                    if exc.name == module_name:
                        log.debug("built-in plugin %s is not available; skipped", module_name)
                        continue
                    self._fail(module_name, None, exc)
                    continue
                except Exception as exc:
                    self._fail(module_name, None, exc)
                    continue
                if self._register(module, module_name):
                    self._builtin.add(module_name)
                    self._dists[module_name] = ("explorank", __version__)
            for plugin, name in self._extra:
                name = name or _plugin_name(plugin)
                if self._is_blocked(name):
                    self.skipped.append(name)
                    continue
                self._register(plugin, name)
            self._extra.clear()
            self._load_entry_points()
            self._loaded = True

    def _register(self, plugin: object, name: str, dist: str | None = None) -> bool:
        if self.pm.is_registered(plugin) or self.pm.get_plugin(name) is not None:
            return False
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except Exception as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            self._fail(name, dist, exc)
            return False
        return True

    def _is_blocked(self, *names: str) -> bool:
        blocked = {_canonical(b) for b in self.blocked_names}
        return any(_canonical(n) in blocked for n in names if n)

    def _entry_point_allowed(self, ep: md.EntryPoint) -> bool:
        if self.block_external:
            return False
        dist = ep.dist.metadata["Name"] if ep.dist is not None else ""
        if self._is_blocked(ep.name, dist):
            return False
        names = {_canonical(ep.name), _canonical(dist)} if dist else {_canonical(ep.name)}
        return all(names & {_canonical(a) for a in allowed} for allowed in self.allow_lists)

    def _load_entry_points(self) -> None:
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.metadata["Name"] if ep.dist is not None else None
            if not self._entry_point_allowed(ep):
                self.skipped.append(ep.name)
                self.pm.set_blocked(ep.name)
                log.info(
                    "plugin %s not loaded (%s / %s / plugins.allow / plugins.block)",
                    ep.name,
                    ENV_VAR,
                    BLOCK_ENV_VAR,
                )
                continue
            if self.pm.get_plugin(ep.name) is not None:
                continue
            try:
                self.pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=ep.name)
                self.pm.check_pending()
            except Exception as exc:
                loaded = self.pm.get_plugin(ep.name)
                if loaded is not None:
                    self.pm.unregister(loaded)
                self._fail(ep.name, dist, exc)
        for plugin, info in self.pm.list_plugin_distinfo():
            name = self.pm.get_name(plugin)
            if name is not None:
                self._dists[name] = (str(info.project_name), str(info.version))

    def _fail(self, plugin: str, dist: str | None, exc: BaseException) -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        err = PluginLoadError(plugin, dist, f"{type(exc).__name__}: {exc}", tb)
        self.load_errors.append(err)
        log.warning("plugin %s failed to load and is ignored: %s", plugin, err.error)
        log.debug("traceback of plugin %s:\n%s", plugin, tb)

    # ---------------------------------------------------------- provenance
    def _provenance_of(self, plugin_name: str, plugin: object) -> tuple[str, str]:
        known = self._dists.get(plugin_name)
        if known is not None:
            return known
        module = getattr(plugin, "__name__", None) or type(plugin).__module__
        top = module.split(".")[0]
        if top == "explorank":
            return ("explorank", __version__)
        dists = md.packages_distributions().get(top, [])
        if dists:
            try:
                return (dists[0], md.version(dists[0]))
            except md.PackageNotFoundError:
                pass
        return (module, "unknown")

    # -------------------------------------------------------- registration
    def _collect(self) -> Registry:
        with self._lock:
            if self._registry is not None:
                return self._registry
            self.load()
            reg = Registry(self._is_blocked, self.override, self._fail)
            for kind, (hook_name, _, _) in KINDS.items():
                caller = getattr(self.pm.hook, hook_name)
                # Built-ins first (pluggy calls later registrations first), then third
                # parties, so a clash always finds the built-in already in place.
                impls = sorted(
                    caller.get_hookimpls(), key=lambda i: i.plugin_name not in self._builtin
                )
                for impl in impls:
                    plugin_name = impl.plugin_name
                    dist, version = self._provenance_of(plugin_name, impl.plugin)
                    builtin = plugin_name in self._builtin
                    register = reg.register_callback(
                        kind, PluginInfo(kind, "", object, plugin_name, dist, version, builtin)
                    )
                    try:
                        impl.function(**{a: register for a in impl.argnames})
                    except Exception as exc:
                        self._fail(plugin_name, dist, exc)
            self._registry = reg
            self.blocked, self.clashes = reg.blocked, reg.clashes
            return reg

    # ------------------------------------------------------------ accessors
    def infos(self, kind: str) -> dict[str, PluginInfo]:
        return dict(self._collect().infos[normalize_kind(kind)])

    def scorer_classes(self) -> dict[str, type[Scorer]]:
        return {n: i.cls for n, i in self.infos("scorer").items()}

    def policy_classes(self) -> dict[str, type[Policy]]:
        return {n: i.cls for n, i in self.infos("policy").items()}

    def store_classes(self) -> dict[str, type[StateStore]]:
        return {n: i.cls for n, i in self.infos("store").items()}

    def get_class(self, kind: str, name: str) -> type:
        kind = normalize_kind(kind)
        reg = self._collect()
        info = reg.infos[kind].get(name)
        if info is not None:
            return info.cls
        clash = reg.ambiguous[kind].get(name)
        if clash is not None:
            raise ConfigError(str(clash))
        raise UnknownPluginError(LABELS[kind][0], name, list(reg.infos[kind]))

    def get_scorer_class(self, name: str) -> type[Scorer]:
        return self.get_class("scorer", name)

    def get_policy_class(self, name: str) -> type[Policy]:
        return self.get_class("policy", name)

    def get_store_class(self, name: str) -> type[StateStore]:
        return self.get_class("store", name)

    def create_scorer(self, name: str, context: ScorerContext, **params: Any) -> Scorer:
        return _construct("scorer", name, self.get_scorer_class(name), (context,), params)

    def create_policy(self, name: str, **params: Any) -> Policy:
        return _construct("policy", name, self.get_policy_class(name), (), params)

    def create_store(self, name: str, **options: Any) -> StateStore:
        return _construct("store", name, self.get_store_class(name), (), options)

    def provenance(self, kind: str, name: str) -> tuple[str, str]:
        """(distribution name, version) of the package that registered ``name``."""
        self.get_class(kind, name)
        info = self.infos(kind)[name]
        return info.distribution, info.version

    def require(self, kind: str, name: str) -> None:
        """Raise :class:`ConfigError` unless ``name`` is registered (engine start-up check
        for configured defaults); the message lists what is registered and load errors."""
        try:
            self.get_class(kind, name)
        except UnknownPluginError as exc:
            singular, plural = LABELS[normalize_kind(kind)]
            msg = (
                f"the configured {singular} {name!r} is not registered; registered "
                f"{plural}: {', '.join(sorted(exc.known)) or 'none'}"
            )
            if (normalize_kind(kind), name) in self.blocked:
                msg += f"; {name!r} is blocked by plugins.block / {BLOCK_ENV_VAR}"
            if self.load_errors:
                msg += "; plugins that failed to load: " + "; ".join(map(str, self.load_errors))
            if self.skipped:
                msg += f"; not loaded ({ENV_VAR} / plugins settings): {', '.join(self.skipped)}"
            raise ConfigError(
                msg + ". Install the plugin that provides it or fix the setting."
            ) from exc

    # -------------------------------------------------------------- lifecycle
    def call_engine_started(self, engine: Any) -> None:
        self._call_each("engine_started", engine=engine)

    def call_engine_stopping(self, engine: Any) -> None:
        self._call_each("engine_stopping", engine=engine)

    def _call_each(self, hook_name: str, **kwargs: Any) -> None:
        """Call every implementation, logging (not raising) each one's exception."""
        self.load()
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
            try:
                impl.function(**{a: kwargs[a] for a in impl.argnames})
            except Exception:
                log.exception("plugin %s raised in %s", impl.plugin_name, hook_name)


def _plugin_name(plugin: object) -> str:
    return str(getattr(plugin, "__name__", None) or repr(plugin))


def _construct(
    kind: str, name: str, cls: type, args: tuple[Any, ...], params: dict[str, Any]
) -> Any:
    try:
        return cls(*args, **params)
    except TypeError as exc:
        raise ConfigError(
            f"{LABELS[kind][0]} {name!r}: invalid parameters {sorted(params)}: {exc}"
        ) from exc
