"""The decider: the scorer and policy plugins, the statistics they learn, and the decision
core (:mod:`explorank.engine.decision`) that every decision and every delta goes through.

It builds the plugins at start-up (a plugin that cannot be built for this bundle is left
out and reported in :attr:`Decider.unavailable`, unless it is a configured default), holds
the :class:`~explorank.engine.decision.StatsBook` of every learner, loads and refreshes it
from the state store, and names the plugin and its package when a plugin misbehaves.

All plugin calls and every change to the statistics run on the decider's own thread, one at
a time (:meth:`Decider.run`): the event loop never does the scoring and ranking work, and
plugins are never called concurrently, so they need not be thread-safe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from explorank.engine import decision as core
from explorank.engine import tracing
from explorank.errors import ConfigError, NotFoundError
from explorank.plugins.api import EventRecord, Policy, Scorer, ScorerContext, StatsDelta

if TYPE_CHECKING:
    from explorank.engine.config import RankingConfig
    from explorank.engine.metrics import EngineMetrics
    from explorank.plugins.api import StateStore
    from explorank.plugins.manager import PluginManager

__all__ = ["Decider"]

T = TypeVar("T")

log = logging.getLogger("explorank.engine")


def _lookup(kind: str, name: str, table: Mapping[str, Any]) -> Any:
    found = table.get(name)
    if found is None:
        shown = name if len(name) <= 64 else name[:64] + "…"
        raise NotFoundError(f"unknown {kind} {shown!r}; available: {', '.join(sorted(table))}")
    return found


class Decider:
    """Plugins + statistics + the decision core (see the module docstring)."""

    def __init__(
        self,
        ranking: RankingConfig,
        plugins: PluginManager,
        scorer_context: ScorerContext,
        metrics: EngineMetrics,
    ) -> None:
        self.ranking = ranking
        self.plugins = plugins
        self.scorer_context = scorer_context
        self.metrics = metrics
        self.scorers: dict[str, Scorer] = {}
        self.policies: dict[str, Policy] = {}
        #: (kind, name, why) of every plugin that could not be built (reported by GetInfo)
        self.unavailable: list[tuple[str, str, str]] = []
        self.stats = core.StatsBook()
        self._thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="explorank-decide"
        )

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the decider's thread (see the module docstring)."""
        loop = asyncio.get_running_loop()
        call = functools.partial(fn, *args, **kwargs)
        if tracing.enabled():  # the stage spans on the thread join the caller's trace
            call = functools.partial(contextvars.copy_context().run, call)
        return await loop.run_in_executor(self._thread, call)

    def close(self) -> None:
        self._thread.shutdown(wait=True)

    # ------------------------------------------------------------------ building
    def build(self) -> None:
        """Construct every registered scorer and policy with its configured parameters."""
        rc = self.ranking
        self.plugins.require("scorer", rc.default_scorer)
        self.plugins.require("policy", rc.default_policy)
        unknown = sorted(set(rc.policies) - set(self.plugins.policy_classes()))
        if unknown:
            raise ConfigError(f"ranking.policies configures unknown policies {unknown}")
        unknown = sorted(set(rc.scorers) - set(self.plugins.scorer_classes()))
        if unknown:
            raise ConfigError(f"ranking.scorers configures unknown scorers {unknown}")
        self.scorers, problems = self.build_scorers(self.scorer_context)
        self.unavailable.extend(problems)
        for name in self.plugins.policy_classes():
            try:
                self.policies[name] = self.plugins.create_policy(name, **rc.policies.get(name, {}))
            except Exception as exc:
                if name == rc.default_policy or name in rc.policies:
                    raise ConfigError(f"policy {name!r} cannot be created: {exc}") from exc
                self.unavailable.append(("policy", name, f"{type(exc).__name__}: {exc}"))
                log.warning("policy %s unavailable: %s", name, exc)

    def build_scorers(
        self, context: ScorerContext
    ) -> tuple[dict[str, Scorer], list[tuple[str, str, str]]]:
        """Every scorer built for the bundle ``context`` describes (at start-up, and for a
        bundle being reloaded), with the ones that cannot be built. A configured default or a
        scorer with configured parameters that cannot be built is a :class:`ConfigError`."""
        rc = self.ranking
        scorers: dict[str, Scorer] = {}
        problems: list[tuple[str, str, str]] = []
        for name in self.plugins.scorer_classes():
            try:
                scorers[name] = self.plugins.create_scorer(
                    name, context, **rc.scorers.get(name, {})
                )
            except Exception as exc:  # a third-party scorer that cannot serve this bundle
                if name == rc.default_scorer or name in rc.scorers:
                    raise ConfigError(f"scorer {name!r} cannot be created: {exc}") from exc
                problems.append(("scorer", name, f"{type(exc).__name__}: {exc}"))
                log.warning("scorer %s unavailable for this bundle: %s", name, exc)
        return scorers, problems

    def use_scorers(self, scorers: dict[str, Scorer], problems: list[tuple[str, str, str]]) -> None:
        """Serve with the scorers built for a newly loaded bundle (an atomic swap)."""
        self.scorers = scorers
        self.unavailable = [p for p in self.unavailable if p[0] != "scorer"] + problems

    def scorer_name(self, name: str) -> str:
        """The scorer a request names (empty = the default); NOT_FOUND when unknown."""
        name = name or self.ranking.default_scorer
        _lookup("scorer", name, self.scorers)
        return name

    def policy_name(self, name: str) -> str:
        name = name or self.ranking.default_policy
        _lookup("policy", name, self.policies)
        return name

    # --------------------------------------------------------------- statistics
    def learner_names(self) -> list[str]:
        """The statistics names the store holds for this engine's learners."""
        names = [core.ITEM_STATS]
        names += [core.scorer_key(n) for n, s in self.scorers.items() if s.stateful]
        names += [n for n, p in self.policies.items() if p.stateful]
        return names

    async def load_stats(self, store: StateStore) -> None:
        """(Re)load every learner's statistics from ``store``."""
        for name in self.learner_names():
            fresh = await store.load_stats(name)
            old = self.stats.get(name)
            if old is not None:
                fresh.version = old.version + 1
            self.stats[name] = fresh

    def apply(self, deltas: Mapping[str, StatsDelta]) -> None:
        self.stats.apply(deltas)

    # ------------------------------------------------------------------ deciding
    def decide(
        self,
        scorer_name: str,
        policy_name: str,
        *,
        user: np.ndarray,
        cand_ids: Sequence[str],
        cand_vecs: np.ndarray,
        top_k: int,
        event_id: str,
        scorers: Mapping[str, Scorer] | None = None,
    ) -> core.Decision:
        """One decision through the core, seeded by the event id (timed per stage).
        ``scorers``: the ones of the bundle the request was embedded with (default: the
        current ones)."""
        scorer = (scorers or self.scorers).get(scorer_name) or self.scorers[scorer_name]
        try:
            t0 = time.perf_counter()
            with tracing.stage(
                "score", **{"explorank.scorer": scorer_name, "explorank.candidates": len(cand_ids)}
            ):
                scores = core.score(
                    scorer,
                    scorer_name,
                    user=user,
                    cand_ids=cand_ids,
                    cand_vecs=cand_vecs,
                    stats=self.stats,
                )
            t1 = time.perf_counter()
            self.metrics.stage.labels("score").observe(t1 - t0)
            with tracing.stage("policy", **{"explorank.policy": policy_name}):
                decision = core.choose(
                    self.policies[policy_name],
                    policy_name,
                    scores=scores,
                    user=user,
                    cand_ids=cand_ids,
                    cand_vecs=cand_vecs,
                    top_k=top_k,
                    rng=core.event_rng(self.ranking.seed, event_id),
                    stats=self.stats.get(policy_name),
                    scorer=scorer_name,
                )
            self.metrics.stage.labels("policy").observe(time.perf_counter() - t1)
            return decision
        except core.PluginFailure as exc:
            raise self._named(exc) from exc

    def deltas_for(self, event: EventRecord, item_id: str, value: float) -> dict[str, StatsDelta]:
        """What every learner learns from one reward (through the core)."""
        try:
            return core.deltas_for(
                event,
                item_id,
                value,
                policies=self.policies,
                scorers=self.scorers,
                stats=self.stats,
            )
        except core.PluginFailure as exc:
            raise self._named(exc) from exc

    def _named(self, exc: core.PluginFailure) -> core.PluginFailure:
        """The failure with the plugin's package and version in the message."""
        try:
            info = self.plugins.infos(exc.kind)[exc.name]
            where = f" (plugin {info.plugin}, package {info.distribution} {info.version})"
        except Exception:
            where = ""
        named = core.PluginFailure(exc.kind, exc.name, exc.detail + where)
        return named

    def describe(self) -> dict[str, Any]:
        return {
            "scorers": sorted(self.scorers),
            "policies": sorted(self.policies),
            "default_scorer": self.ranking.default_scorer,
            "default_policy": self.ranking.default_policy,
            "unavailable_plugins": [
                {"kind": k, "name": n, "error": e} for k, n, e in self.unavailable
            ],
        }
