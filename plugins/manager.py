"""The plugin manager: built-in and third-party plugins, registered the same way.

Built-in plugins are the modules in :data:`DEFAULT_PLUGINS`, registered with the same
``pm.register(module)`` a third-party plugin gets; third-party plugins come from the
``explorank`` entry-point group. Loading happens once, lazily, on first use.

Which external plugins load (both restrictions apply when both are given):

- ``EXPLORANK_PLUGINS=none`` or ``block_external=True`` (config ``plugins.block_external``)
  loads no entry points at all;
- ``EXPLORANK_PLUGINS=a,b`` or ``allow=["a", "b"]`` (config ``plugins.allow``) loads only
  the entry points whose name or distribution name is listed.

A plugin that fails to import or to register is reported by name with its error in
:attr:`PluginManager.load_errors` (and logged), not raised: one broken plugin does not
take the server down. Two plugins registering the same name is a
:class:`DuplicatePluginError` naming both.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pluggy

from explorank import __version__
from explorank.errors import ConfigError
from explorank.plugins import hookspecs
from explorank.plugins.api import Policy, Scorer, ScorerContext, StateStore
from explorank.plugins.errors import DuplicatePluginError, PluginError, UnknownPluginError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
ENV_VAR = "EXPLORANK_PLUGINS"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "explorank.plugins.builtin.scorers",
    "explorank.plugins.builtin.policies_basic",
    "explorank.plugins.builtin.policies_counting",
    "explorank.plugins.builtin.policies_linear",
    "explorank.plugins.builtin.sqlite_store",
    "explorank.plugins.builtin.redis_store",
)

#: kind -> (hook name, base class, attributes a duck-typed class must have)
KINDS: dict[str, tuple[str, type, tuple[str, ...]]] = {
    "scorer": ("register_scorers", Scorer, ("score",)),
    "policy": ("register_policies", Policy, ("rank", "update")),
    "store": (
        "register_state_stores",
        StateStore,
        ("log_event", "get_event", "record_reward", "load_stats", "export_events"),
    ),
}
_KIND_ALIASES = {
    "state store": "store",
    "state_store": "store",
    "stores": "store",
    "scorers": "scorer",
    "policies": "policy",
}


def normalize_kind(kind: str) -> str:
    k = _KIND_ALIASES.get(kind.strip().lower(), kind.strip().lower())
    if k not in KINDS:
        raise ValueError(f"unknown plugin kind {kind!r}; expected one of {sorted(KINDS)}")
    return k


def _canonical(name: str) -> str:
    """PEP 503 normalisation, so ``explorank_plugin_example`` matches ``explorank-plugin-example``."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class PluginLoadError:
    """A plugin that could not be loaded or registered."""

    plugin: str  # entry-point or module name
    distribution: str | None
    error: str

    def __str__(self) -> str:
        dist = f" (from {self.distribution})" if self.distribution else ""
        return f"{self.plugin}{dist}: {self.error}"


@dataclass(frozen=True)
class PluginInfo:
    """One registered scorer, policy or store and where it came from."""

    kind: str
    name: str
    cls: type
    plugin: str  # the pluggy plugin name (module or entry-point name)
    distribution: str
    version: str

    @property
    def description(self) -> str:
        return str(getattr(self.cls, "description", "") or "")


class PluginManager:
    """Typed access to explorank's registered plugins (see the module docstring)."""

    def __init__(
        self,
        *,
        allow: Iterable[str] | None = None,
        block_external: bool = False,
        default_plugins: Iterable[str] = DEFAULT_PLUGINS,
        env: dict[str, str] | None = None,
    ) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.allow = None if allow is None else list(allow)
        self.block_external = bool(block_external)
        self.default_plugins = tuple(default_plugins)
        self._env = os.environ if env is None else env
        self.load_errors: list[PluginLoadError] = []
        #: entry points not loaded because of the block / allow settings
        self.skipped: list[str] = []
        self._dists: dict[str, tuple[str, str]] = {}  # plugin name -> (dist, version)
        self._extra: list[tuple[object, str | None]] = []
        self._registry: dict[str, dict[str, PluginInfo]] | None = None
        self._loaded = False
        self._lock = threading.RLock()

    # --------------------------------------------------------------- loading
    def register(self, plugin: object, name: str | None = None) -> None:
        """Register one more plugin object (a module or an instance with hookimpls).

        Used by tests and by applications embedding explorank; provenance comes from
        the distribution that ships the plugin's top-level module, if any."""
        with self._lock:
            if self._loaded:
                self._register_external(plugin, name, None)
            else:
                self._extra.append((plugin, name))
            self._registry = None

    def load(self) -> None:
        """Load built-in and entry-point plugins (once; later calls do nothing)."""
        with self._lock:
            if self._loaded:
                return
            for module_name in self.default_plugins:
                self._register_builtin(module_name)
            for plugin, name in self._extra:
                self._register_external(plugin, name, None)
            self._extra.clear()
            self._load_entry_points()
            self._loaded = True

    def _register_builtin(self, module_name: str) -> None:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                log.debug("built-in plugin %s is not available; skipped", module_name)
                return
            self._fail(module_name, None, exc)
            return
        except Exception as exc:
            self._fail(module_name, None, exc)
            return
        try:
            self.pm.register(module, name=module_name)
        except Exception as exc:
            self._fail(module_name, None, exc)
            return
        self._dists[module_name] = ("explorank", __version__)

    def _register_external(
        self, plugin: object, name: str | None, dist: md.Distribution | None
    ) -> None:
        plugin_name = name or getattr(plugin, "__name__", None) or repr(plugin)
        dist_name = dist.metadata["Name"] if dist is not None else None
        if self.pm.is_registered(plugin) or self.pm.get_plugin(plugin_name) is not None:
            log.debug("plugin %s already registered; skipped", plugin_name)
            return
        try:
            self.pm.register(plugin, name=plugin_name)
            self.pm.check_pending()
        except Exception as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            self._fail(plugin_name, dist_name, exc)
            return
        if dist is not None:
            self._dists[plugin_name] = (dist_name or "unknown", dist.version)

    def _entry_point_allowed(self, ep: md.EntryPoint) -> bool:
        env = self._env.get(ENV_VAR, "").strip()
        if self.block_external or env.lower() == "none":
            return False
        dist = ep.dist.metadata["Name"] if ep.dist is not None else ""
        names = {_canonical(ep.name), _canonical(dist)} if dist else {_canonical(ep.name)}
        lists = [self.allow] if self.allow is not None else []
        if env:
            lists.append([a for a in env.split(",") if a.strip()])
        return all(names & {_canonical(a.strip()) for a in allowed} for allowed in lists)

    def _load_entry_points(self) -> None:
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            if not self._entry_point_allowed(ep):
                self.skipped.append(ep.name)
                log.info(
                    "plugin %s not loaded (%s / plugins.allow / plugins.block_external)",
                    ep.name,
                    ENV_VAR,
                )
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                self._fail(ep.name, ep.dist.metadata["Name"] if ep.dist else None, exc)
                continue
            self._register_external(plugin, ep.name, ep.dist)

    def _fail(self, plugin: str, dist: str | None, exc: BaseException) -> None:
        err = PluginLoadError(plugin, dist, f"{type(exc).__name__}: {exc}")
        self.load_errors.append(err)
        log.warning("plugin %s failed to load and is ignored: %s", plugin, err.error)

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
    def _collect(self) -> dict[str, dict[str, PluginInfo]]:
        with self._lock:
            if self._registry is not None:
                return self._registry
            self.load()
            registry: dict[str, dict[str, PluginInfo]] = {k: {} for k in KINDS}
            for kind, (hook_name, _, _) in KINDS.items():
                caller = getattr(self.pm.hook, hook_name)
                # Call every implementation separately to attribute each class to its plugin.
                for impl in caller.get_hookimpls():
                    plugin_name = impl.plugin_name
                    dist, version = self._provenance_of(plugin_name, impl.plugin)
                    register = self._make_register(registry[kind], kind, plugin_name, dist, version)
                    try:
                        impl.function(**{a: register for a in impl.argnames})
                    except DuplicatePluginError:
                        raise
                    except Exception as exc:
                        self._fail(plugin_name, dist, exc)
            self._registry = registry
            return registry

    def _make_register(
        self, table: dict[str, PluginInfo], kind: str, plugin: str, dist: str, version: str
    ) -> Callable[..., None]:
        def register(cls: type, **_: Any) -> None:
            problem = self._invalid(kind, cls)
            if problem:
                self._fail(
                    plugin, dist, PluginError(f"cannot register {cls!r} as a {kind}: {problem}")
                )
                return
            name = str(getattr(cls, "name", ""))
            info = PluginInfo(kind, name, cls, plugin, dist, version)
            other = table.get(name)
            if other is not None:
                if other.cls is cls and other.plugin == plugin:
                    return
                raise DuplicatePluginError(
                    f"two plugins register a {kind} named {name!r}: {_who(other)} and {_who(info)}; "
                    f"uninstall or block one of them ({ENV_VAR}=<allowed,names> or plugins.allow)"
                )
            table[name] = info

        return register

    @staticmethod
    def _invalid(kind: str, cls: Any) -> str | None:
        _, base, required = KINDS[kind]
        if not isinstance(cls, type):
            return "register() takes a class, not an instance"
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name.strip():
            return "the class needs a non-empty string attribute 'name'"
        if issubclass(cls, base):
            return None
        missing = [a for a in required if not callable(getattr(cls, a, None))]
        if missing:
            return f"not a {base.__name__} subclass and missing {', '.join(missing)}"
        return None

    # ------------------------------------------------------------ accessors
    def infos(self, kind: str) -> dict[str, PluginInfo]:
        return dict(self._collect()[normalize_kind(kind)])

    def scorer_classes(self) -> dict[str, type[Scorer]]:
        return {n: i.cls for n, i in self.infos("scorer").items()}

    def policy_classes(self) -> dict[str, type[Policy]]:
        return {n: i.cls for n, i in self.infos("policy").items()}

    def store_classes(self) -> dict[str, type[StateStore]]:
        return {n: i.cls for n, i in self.infos("store").items()}

    def get_class(self, kind: str, name: str) -> type:
        table = self.infos(kind)
        info = table.get(name)
        if info is None:
            raise UnknownPluginError(_KIND_LABEL[normalize_kind(kind)], name, list(table))
        return info.cls

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
        return _construct("state store", name, self.get_store_class(name), (), options)

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
            k = normalize_kind(kind)
            msg = (
                f"the configured {_KIND_LABEL[k]} {name!r} is not registered; registered "
                f"{_KIND_PLURAL[k]}: {', '.join(sorted(exc.known)) or 'none'}"
            )
            if self.load_errors:
                msg += "; plugins that failed to load: " + "; ".join(map(str, self.load_errors))
            if self.skipped:
                msg += f"; blocked by {ENV_VAR}/plugins settings: {', '.join(self.skipped)}"
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


_KIND_LABEL = {"scorer": "scorer", "policy": "policy", "store": "state store"}
_KIND_PLURAL = {"scorer": "scorers", "policy": "policies", "store": "state stores"}


def _who(info: PluginInfo) -> str:
    return f"{info.plugin} ({info.distribution} {info.version})"


def _construct(
    label: str, name: str, cls: type, args: tuple[Any, ...], params: dict[str, Any]
) -> Any:
    try:
        return cls(*args, **params)
    except TypeError as exc:
        raise ConfigError(f"{label} {name!r}: invalid parameters {sorted(params)}: {exc}") from exc
