"""Where explorank keeps files by default: a cache directory (the default bundle, derived
caches; safe to delete) and a state directory (the sqlite event log and policy state; not).
Neither is ever the current directory.

- cache: ``$EXPLORANK_CACHE_DIR``, else ``$XDG_CACHE_HOME/explorank``, else
  ``~/.cache/explorank``;
- state: ``$EXPLORANK_STATE_DIR``, else ``$XDG_STATE_HOME/explorank``, else
  ``~/.local/state/explorank``; the sqlite store's file there is :data:`STATE_DB_NAME`.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["STATE_DB_NAME", "default_cache_dir", "default_state_db", "default_state_dir"]

#: The sqlite state database's file name inside the state directory.
STATE_DB_NAME = "state.db"


def _xdg(own: str, xdg: str, fallback: tuple[str, ...]) -> Path:
    env = os.environ.get(own)
    if env:
        return Path(env).expanduser()
    base = os.environ.get(xdg)
    root = Path(base).expanduser() if base else Path.home().joinpath(*fallback)
    return root / "explorank"


def default_cache_dir() -> Path:
    """``$EXPLORANK_CACHE_DIR``, else ``$XDG_CACHE_HOME/explorank``, else ``~/.cache/explorank``."""
    return _xdg("EXPLORANK_CACHE_DIR", "XDG_CACHE_HOME", (".cache",))


def default_state_dir() -> Path:
    """``$EXPLORANK_STATE_DIR``, else ``$XDG_STATE_HOME/explorank``, else
    ``~/.local/state/explorank``."""
    return _xdg("EXPLORANK_STATE_DIR", "XDG_STATE_HOME", (".local", "state"))


def default_state_db(state_dir: Path | None = None) -> Path:
    """The sqlite state database in ``state_dir`` (default: :func:`default_state_dir`)."""
    return (state_dir or default_state_dir()) / STATE_DB_NAME
