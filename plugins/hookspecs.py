"""Hook specifications: the whole contract between explorank and its plugins.

Each hook's docstring is its documentation (``docs/plugins.md`` is checked against
this module by a test). Collection hooks receive a ``register`` callback, in the
style of ``llm``: a plugin calls ``register(SomeClass)`` once per thing it adds,
instead of returning lists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT_NAME = "explorank"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_scorers(register: Callable[[type], None]) -> None:
    """Register scorer classes: call ``register(cls)`` for each class implementing
    :class:`explorank.plugins.api.Scorer` (a unique ``name`` class attribute, a
    constructor ``cls(context: ScorerContext, **params)``, a vectorized
    ``score(ctx: ScoreContext) -> np.ndarray`` and, for a learning scorer,
    ``update`` returning the additive statistics delta for one reward). Return value
    ignored."""


@hookspec
def register_policies(register: Callable[[type], None]) -> None:
    """Register exploration policy classes: call ``register(cls)`` for each class
    implementing :class:`explorank.plugins.api.Policy` (a unique ``name``, a
    constructor ``cls(**params)`` taking its parameters from config, ``rank`` returning
    an ordering with per-position propensities, and ``update`` returning the additive
    statistics delta for one reward). Return value ignored."""


@hookspec
def register_state_stores(register: Callable[[type], None]) -> None:
    """Register state store classes: call ``register(cls)`` for each class
    implementing :class:`explorank.plugins.api.StateStore` (event log, idempotent
    rewards, the additive statistics of every policy and scorer). Return value
    ignored."""


@hookspec
def engine_started(engine: Any) -> None:
    """Called once after the engine has loaded its bundle, warmed up and is about to
    report SERVING. ``engine`` is the :class:`explorank.engine.pipeline.Engine`.
    Return value ignored; an exception is logged and does not stop the server."""


@hookspec
def engine_stopping(engine: Any) -> None:
    """Called once when the engine begins a graceful shutdown, before the state
    store is flushed and closed. Return value ignored; exceptions are logged."""
