"""Errors raised by the plugin layer."""

from __future__ import annotations

from explorank.errors import ExplorankError, NotFoundError


class PluginError(ExplorankError):
    """A plugin is missing, failed to load, or broke its contract."""


class DuplicatePluginError(PluginError):
    """Two plugins registered the same name."""


class UnknownPluginError(PluginError, NotFoundError):
    """No plugin of that kind is registered under that name."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.known = known
        super().__init__(
            f"unknown {kind} {name!r}; registered: {', '.join(sorted(known)) or 'none'}"
        )
