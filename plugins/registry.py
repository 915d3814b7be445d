"""What plugins register: the kinds, the records of who registered what, and the rules that
resolve a name registered twice (see :mod:`explorank.plugins.manager` for loading)."""

from __future__ import annotations

import re
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import Any

from explorank.plugins.api import Policy, Scorer, StateStore
from explorank.plugins.errors import PluginError

BLOCK_ENV_VAR = "EXPLORANK_PLUGINS_BLOCK"

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
#: kind -> (singular, plural) for messages
LABELS = {
    "scorer": ("scorer", "scorers"),
    "policy": ("policy", "policies"),
    "store": ("state store", "state stores"),
}
_KIND_ALIASES = {
    "state store": "store",
    "state_store": "store",
    "stores": "store",
    "state stores": "store",
    "scorers": "scorer",
    "policies": "policy",
}
#: Plugin names: letters, digits, ``_ . -``; they appear in config keys and store keys.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


def normalize_kind(kind: str) -> str:
    k = _KIND_ALIASES.get(kind.strip().lower(), kind.strip().lower())
    if k not in KINDS:
        raise ValueError(f"unknown plugin kind {kind!r}; expected one of {sorted(KINDS)}")
    return k


@dataclass(frozen=True)
class PluginLoadError:
    """A plugin that could not be loaded or registered."""

    plugin: str  # entry-point or module name
    distribution: str | None
    error: str
    traceback: str = ""

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
    builtin: bool = False

    @property
    def description(self) -> str:
        return str(getattr(self.cls, "description", "") or "")

    def who(self) -> str:
        return f"{self.plugin} ({self.distribution} {self.version})"


@dataclass(frozen=True)
class PluginClash:
    """Two plugins registered the same name; ``resolution`` says what was done."""

    kind: str
    name: str
    plugins: tuple[PluginInfo, ...]
    resolution: str

    def __str__(self) -> str:
        who = " and ".join(p.who() for p in self.plugins)
        return f"{LABELS[self.kind][0]} {self.name!r} is registered by {who}: {self.resolution}"


@dataclass
class Registry:
    """Every registered class by kind and name, with what was blocked and what clashed.

    ``is_blocked(name)`` says whether a name is blocked; ``override`` lists the names a
    third-party plugin may take over from a built-in; ``fail(plugin, dist, error)`` records
    a registration that was refused."""

    is_blocked: Callable[[str], bool]
    override: Container[str]
    fail: Callable[[str, str | None, BaseException], None]
    infos: dict[str, dict[str, PluginInfo]] = field(default_factory=lambda: {k: {} for k in KINDS})
    ambiguous: dict[str, dict[str, PluginClash]] = field(
        default_factory=lambda: {k: {} for k in KINDS}
    )
    blocked: list[tuple[str, str]] = field(default_factory=list)
    clashes: list[PluginClash] = field(default_factory=list)

    def register_callback(self, kind: str, origin: PluginInfo) -> Callable[..., None]:
        """The ``register(cls)`` a plugin's hook receives, for one plugin and kind."""
        table, ambiguous = self.infos[kind], self.ambiguous[kind]

        def register(cls: type, **_: Any) -> None:
            problem = self._invalid(kind, cls)
            if problem:
                err = PluginError(f"cannot register {cls!r} as a {LABELS[kind][0]}: {problem}")
                self.fail(origin.plugin, origin.distribution, err)
                return
            name = str(cls.name)  # type: ignore[attr-defined]
            info = PluginInfo(
                kind, name, cls, origin.plugin, origin.distribution, origin.version, origin.builtin
            )
            if self.is_blocked(name):
                self.blocked.append((kind, name))
                return
            other = table.get(name) or next(iter(ambiguous.get(name, _NO_CLASH).plugins), None)
            if other is None:
                table[name] = info
                return
            if other.cls is cls and other.plugin == info.plugin:
                return
            self._clash(kind, name, other, info)

        return register

    def _clash(self, kind: str, name: str, first: PluginInfo, second: PluginInfo) -> None:
        table, ambiguous = self.infos[kind], self.ambiguous[kind]
        if first.builtin != second.builtin:
            builtin, external = (first, second) if first.builtin else (second, first)
            if name in self.override:
                table[name] = external
                how = f"{external.plugin}'s replaces the built-in (plugins.override)"
            else:
                table[name] = builtin
                how = (
                    f"the built-in is used; set plugins.override = [{name!r}] to use "
                    f"{external.plugin}'s, or plugins.block = [{external.plugin!r}] to hide it"
                )
            self.clashes.append(PluginClash(kind, name, (builtin, external), how))
            return
        table.pop(name, None)
        previous = ambiguous.get(name)
        plugins = (*previous.plugins, second) if previous else (first, second)
        how = (
            f"neither is used; block all but one (plugins.block = [{second.plugin!r}] or "
            f"{BLOCK_ENV_VAR}={second.plugin})"
        )
        clash = PluginClash(kind, name, plugins, how)
        ambiguous[name] = clash
        self.clashes = [c for c in self.clashes if (c.kind, c.name) != (kind, name)] + [clash]

    @staticmethod
    def _invalid(kind: str, cls: Any) -> str | None:
        _, base, required = KINDS[kind]
        if not isinstance(cls, type):
            return "register() takes a class, not an instance"
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            return (
                "the class needs a string attribute 'name' of letters, digits, '_', '.' or "
                f"'-' (at most 64, starting with a letter or digit), got {name!r}"
            )
        if issubclass(cls, base):
            return None
        missing = [a for a in required if not callable(getattr(cls, a, None))]
        if missing:
            return f"not a {base.__name__} subclass and missing {', '.join(missing)}"
        return None


_NO_CLASH = PluginClash("scorer", "", (), "")
