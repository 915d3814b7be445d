"""The load generator of ``bench serve``: requests, closed-loop and open-loop drivers.

Both drivers are transport-agnostic coroutines: they take ``make(i) -> request`` and
``send(request) -> awaitable`` (the benchmark passes a grpc.aio stub's ``Rank`` with a
deadline; tests pass anything). Every run stops by itself: no request starts after
``duration_s`` or after ``max_requests``, every request carries a deadline, and a hard
bound cancels whatever is still pending ``drain_s`` after the end.

* **Closed loop** (``concurrency`` clients, each sends its next request when the
  previous answer arrives): measures capacity; latency is send -> answer.
* **Open loop** (Poisson arrivals at ``rate`` per second, independent of answers):
  measures behaviour under bursty traffic. Latency runs from the *scheduled* arrival,
  so a client that falls behind does not hide queueing (no coordinated omission).
  Arrivals beyond ``max_in_flight`` outstanding requests are not sent and are counted
  as errors (code ``CLIENT_MAX_IN_FLIGHT``): the server is overloaded at that rate.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from explorank.benchmarks.latency.encoder_bench import percentiles
from explorank.errors import InvalidArgumentError

__all__ = ["LoadResult", "RequestFactory", "closed_loop", "open_loop"]

MakeFn = Callable[[int], Any]
SendFn = Callable[[Any], Awaitable[Any]]
AfterFn = Callable[[Any, Any], Awaitable[bool]]  # True when it made a call


@dataclass
class LoadResult:
    mode: str
    concurrency: int | None = None
    rate: float | None = None
    latencies_ms: list[float] = field(default_factory=list)
    error_codes: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    elapsed_s: float = 0.0
    duration_s: float = 0.0
    arrivals: int = 0  # open loop: scheduled arrivals, sent or refused
    followups: int = 0  # calls made by ``after`` (Rewards), not part of the Rank figures
    followup_errors: Counter[str] = field(default_factory=Counter)

    @property
    def completed(self) -> int:
        return len(self.latencies_ms)

    @property
    def errors(self) -> int:
        return sum(self.error_codes.values())

    def summary(self) -> dict[str, Any]:
        p50 = p90 = p99 = None
        if self.latencies_ms:
            p50, p90, p99 = percentiles(self.latencies_ms, (50, 90, 99))
        return {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "p50_ms": p50,
            "p90_ms": p90,
            "p99_ms": p99,
            "throughput_rps": self.completed / self.elapsed_s if self.elapsed_s > 0 else 0.0,
            "offered_rps": (self.arrivals / self.duration_s)
            if (self.mode == "open" and self.duration_s)
            else None,
            "completed": self.completed,
            "errors": self.errors,
            "error_codes": dict(self.error_codes),
            "followups": self.followups,
            "followup_errors": dict(self.followup_errors),
            "sent": self.sent,
            "elapsed_s": self.elapsed_s,
        }


def _error_code(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            return str(code().name)
        except Exception:  # pragma: no cover - defensive: any odd exception type
            pass
    return type(exc).__name__


async def _one(
    send: SendFn,
    req: Any,
    t0: float,
    result: LoadResult,
    clock: Callable[[], float],
    after: AfterFn | None,
) -> None:
    try:
        resp = await send(req)
    except asyncio.CancelledError:
        result.error_codes["CANCELLED_BY_CLIENT"] += 1
        raise
    except Exception as exc:
        result.error_codes[_error_code(exc)] += 1
        return
    result.latencies_ms.append((clock() - t0) * 1000.0)
    if after is not None:
        try:
            if await after(req, resp):
                result.followups += 1
        except Exception as exc:  # follow-up calls (Reward) never fail the Rank measurement
            result.followup_errors[_error_code(exc)] += 1


def _check(duration_s: float, max_requests: int | None) -> None:
    if not duration_s > 0:
        raise InvalidArgumentError("--duration", f"must be > 0 seconds, got {duration_s}")
    if max_requests is not None and max_requests < 1:
        raise InvalidArgumentError("--max-requests", f"must be >= 1, got {max_requests}")


async def closed_loop(
    make: MakeFn,
    send: SendFn,
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int | None = None,
    drain_s: float = 15.0,
    clock: Callable[[], float] = time.perf_counter,
    after: AfterFn | None = None,
) -> LoadResult:
    """``concurrency`` clients back to back for ``duration_s`` (or ``max_requests`` in total)."""
    _check(duration_s, max_requests)
    if concurrency < 1:
        raise InvalidArgumentError("--concurrency", f"must be >= 1, got {concurrency}")
    result = LoadResult("closed", concurrency=concurrency, duration_s=duration_s)
    counter = itertools.count()
    start = clock()
    end = start + duration_s

    async def client() -> None:
        while clock() < end:
            i = next(counter)
            if max_requests is not None and i >= max_requests:
                return
            req = make(i)
            result.sent += 1
            await _one(send, req, clock(), result, clock, after)

    tasks = [asyncio.ensure_future(client()) for _ in range(concurrency)]
    _, pending = await asyncio.wait(tasks, timeout=duration_s + drain_s)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    result.elapsed_s = clock() - start
    return result


async def open_loop(
    make: MakeFn,
    send: SendFn,
    *,
    rate: float,
    duration_s: float,
    max_requests: int | None = None,
    max_in_flight: int = 512,
    seed: int = 0,
    drain_s: float = 15.0,
    clock: Callable[[], float] = time.perf_counter,
    after: AfterFn | None = None,
) -> LoadResult:
    """Poisson arrivals at ``rate``/s for ``duration_s``; see the module docstring."""
    _check(duration_s, max_requests)
    if not rate > 0:
        raise InvalidArgumentError("--rate", f"must be > 0 requests/s, got {rate}")
    rng = random.Random(seed)
    result = LoadResult("open", rate=rate, duration_s=duration_s)
    in_flight: set[asyncio.Task[None]] = set()
    start = clock()
    scheduled = start
    i = 0
    while True:
        scheduled += rng.expovariate(rate)
        if scheduled - start >= duration_s or (max_requests is not None and i >= max_requests):
            break
        result.arrivals += 1
        delay = scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= max_in_flight:
            result.error_codes["CLIENT_MAX_IN_FLIGHT"] += 1
            i += 1
            continue
        req = make(i)
        i += 1
        result.sent += 1
        task = asyncio.ensure_future(_one(send, req, scheduled, result, clock, after))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        _, pending = await asyncio.wait(set(in_flight), timeout=drain_s)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    result.elapsed_s = clock() - start
    return result


class RequestFactory:
    """Deterministic Rank requests with realistic, varied text drawn from a catalog.

    Request ``(tag, i)`` is the same for every target, so all targets see identical load:
    ``context_text`` joins 1-4 random catalog texts, ``candidates`` are ``candidates``
    random catalog ids (their embeddings are precomputed in the bundle). With
    ``unique=True`` (the default) each context ends with a distinct ``session tag-i``
    marker and each request has its own user id, so the server's user-embedding cache
    (keyed by the context text) never hits and every request costs an encoder pass;
    ``unique=False`` draws from ``pool`` fixed contexts instead (cache-friendly traffic).
    """

    def __init__(
        self,
        items: Sequence[tuple[str, str]],
        *,
        candidates: int,
        seed: int = 0,
        unique: bool = True,
        pool: int = 64,
        top_k: int = 10,
    ) -> None:
        if not items:
            raise InvalidArgumentError(
                "catalog", "the bundle's catalog is empty; nothing to draw requests from"
            )
        if candidates < 1:
            raise InvalidArgumentError("--candidates", f"must be >= 1, got {candidates}")
        self.ids = [i for i, _ in items]
        self.texts = [t for _, t in items]
        self.candidates = min(candidates, len(items))
        self.seed, self.unique, self.pool, self.top_k = seed, unique, max(1, pool), top_k

    def context(self, tag: str, i: int) -> tuple[str, str]:
        """(user_id, context_text) of request ``i`` of run ``tag``."""
        if not self.unique:
            k = random.Random(f"{self.seed}:{tag}:{i}").randrange(self.pool)
            rng = random.Random(f"{self.seed}:pool:{k}")
            return f"pool-user-{k}", " ".join(
                rng.sample(self.texts, min(len(self.texts), rng.randint(1, 4)))
            )
        rng = random.Random(f"{self.seed}:{tag}:{i}")
        texts = rng.sample(self.texts, min(len(self.texts), rng.randint(1, 4)))
        return f"user-{tag}-{i}", " ".join(texts) + f" (session {tag}-{i})"

    def history(self, tag: str, i: int) -> list[str]:
        """The history ids of request ``i`` of run ``tag``: the catalog items whose texts
        :meth:`context` joins (the same user, described by ids instead of text)."""
        if not self.unique:
            k = random.Random(f"{self.seed}:{tag}:{i}").randrange(self.pool)
            rng = random.Random(f"{self.seed}:pool:{k}")
        else:
            rng = random.Random(f"{self.seed}:{tag}:{i}")
        return rng.sample(self.ids, min(len(self.ids), rng.randint(1, 4)))

    def make(self, tag: str, i: int, *, history: bool = False) -> Any:
        """Request ``i`` of run ``tag``: the user as context text, or (``history=True``) as
        the ids of the same items in ``history_item_ids`` with no text."""
        from explorank.v1 import ranker_pb2

        user_id, text = self.context(tag, i)
        rng = random.Random(f"{self.seed}:cand:{tag}:{i}")
        cands = rng.sample(self.ids, self.candidates)
        return ranker_pb2.RankRequest(
            user_id=user_id,
            context_text="" if history else text,
            history_item_ids=self.history(tag, i) if history else [],
            top_k=self.top_k,
            candidates=[ranker_pb2.Candidate(item_id=c) for c in cands],
        )
