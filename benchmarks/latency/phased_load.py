"""Open-loop load in phases, every request recorded: the driver of the overload and soak
scenarios of ``bench serve`` (:mod:`.overload`, :mod:`.soak`).

One Poisson arrival process whose rate changes at the phase boundaries *without a pause*:
whatever queue an overload phase built is still there when the next phase starts, which is
what a recovery phase has to show. (The exponential gaps are memoryless, so restarting the
draw at a boundary keeps each phase an exact Poisson process at its own rate.)

Every arrival becomes a :class:`Record`: its phase, its scheduled time, how late the client
sent it (``lag_ms``: the check that the client was not the limit), its outcome (the gRPC
status name, ``OK`` for an answer) and two latencies: from the *scheduled* arrival (no
coordinated omission: the figure for answered requests) and from the moment it was sent
(the round trip: the figure for rejections, which should come back at once). A request is
attributed to the phase it arrived in, whenever its answer comes. The client's own CPU use
per phase (% of one core) is the other check: a client near 100 % delays answers too.

The run is bounded like :mod:`.serve_load`: every request carries the deadline of ``send``,
arrivals beyond ``max_in_flight`` outstanding requests are not sent (``CLIENT_MAX_IN_FLIGHT``),
and what is still pending ``drain_s`` after the last phase is cancelled
(``CANCELLED_BY_CLIENT``).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from explorank.benchmarks.latency.encoder_bench import percentiles
from explorank.benchmarks.latency.serve_load import MakeFn, SendFn, _error_code, closed_loop
from explorank.errors import InvalidArgumentError

__all__ = [
    "OK",
    "REJECTED",
    "TIMED_OUT",
    "Phase",
    "PhasedRun",
    "Record",
    "closed_point",
    "phase_summary",
    "phased_open_loop",
    "recovered_after_s",
    "timeline",
]

OK = "OK"
REJECTED = "RESOURCE_EXHAUSTED"
TIMED_OUT = "DEADLINE_EXCEEDED"
NOT_SENT = "CLIENT_MAX_IN_FLIGHT"


@dataclass(frozen=True)
class Phase:
    """``rate`` Poisson arrivals per second for ``duration_s`` seconds."""

    name: str
    rate: float
    duration_s: float


@dataclass
class Record:
    phase: int
    t_s: float  # scheduled arrival, seconds since the start of the run
    lag_ms: float = 0.0  # how late the client sent it
    code: str = ""  # "OK", a gRPC status name, CLIENT_MAX_IN_FLIGHT or CANCELLED_BY_CLIENT
    latency_ms: float | None = None  # scheduled arrival -> answer or error
    rtt_ms: float | None = None  # sent -> answer or error


@dataclass
class PhasedRun:
    phases: list[Phase]
    records: list[Record] = field(default_factory=list)
    elapsed_s: float = 0.0
    #: (wall clock, this process's CPU time) at each phase start and at the end (after the
    #: drain): the client's CPU use per phase, in % of one core.
    cpu_marks: list[tuple[float, float]] = field(default_factory=list)

    def client_cpu_pct(self, k: int) -> float | None:
        if k + 1 >= len(self.cpu_marks):
            return None
        (w0, c0), (w1, c1) = self.cpu_marks[k], self.cpu_marks[k + 1]
        return (c1 - c0) / (w1 - w0) * 100.0 if w1 > w0 else None

    def start_of(self, k: int) -> float:
        return sum(p.duration_s for p in self.phases[:k])

    @property
    def length_s(self) -> float:
        return self.start_of(len(self.phases))


async def _record(
    send: SendFn, req: Any, sent: float, scheduled: float, rec: Record, clock: Callable[[], float]
) -> None:
    try:
        await send(req)
        rec.code = OK
    except asyncio.CancelledError:
        rec.code = "CANCELLED_BY_CLIENT"
        raise
    except Exception as exc:
        rec.code = _error_code(exc)
    finally:
        now = clock()
        rec.latency_ms = (now - scheduled) * 1000.0
        rec.rtt_ms = (now - sent) * 1000.0


async def phased_open_loop(
    make: MakeFn,
    send: SendFn,
    phases: Sequence[Phase],
    *,
    seed: int = 0,
    max_in_flight: int = 4096,
    drain_s: float = 15.0,
    clock: Callable[[], float] = time.perf_counter,
    prebuild: bool = False,
) -> PhasedRun:
    """Drive ``phases`` back to back and record every arrival (see the module docstring).

    ``prebuild``: draw every arrival time and build every request before the run starts,
    so that the client spends nothing on building them while it measures (a 100-candidate
    Rank takes ~0.3 ms to build: at 3x capacity, a quarter of the client's CPU). Costs the
    memory of all of them at once: for runs of minutes, not hours."""
    if not phases:
        raise InvalidArgumentError("phases", "need at least one phase")
    for p in phases:
        if not p.rate > 0 or not p.duration_s > 0:
            raise InvalidArgumentError(
                "phases", f"{p.name}: rate and duration must be > 0, got {p.rate}, {p.duration_s}"
            )
    rng = random.Random(seed)
    # the arrival times of each phase (the same draws whether or not they are built ahead)
    arrivals: list[list[float]] = []
    offset = 0.0
    for ph in phases:
        end = offset + ph.duration_s
        times, t = [], offset
        while True:
            t += rng.expovariate(ph.rate)
            if t >= end:
                break
            times.append(t)
        arrivals.append(times)
        offset = end
    built = [make(i) for i in range(sum(map(len, arrivals)))] if prebuild else None
    run = PhasedRun(list(phases))
    in_flight: set[asyncio.Task[None]] = set()
    start = clock()
    i = 0
    for k, times in enumerate(arrivals):
        run.cpu_marks.append((clock(), time.process_time()))
        for t in times:
            delay = start + t - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            now = clock()
            rec = Record(k, t, lag_ms=max(0.0, (now - start - t) * 1000.0))
            run.records.append(rec)
            if len(in_flight) >= max_in_flight:
                rec.code = NOT_SENT
                continue
            req = built[i] if built is not None else make(i)
            i += 1
            task = asyncio.ensure_future(_record(send, req, clock(), start + t, rec, clock))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
    wait = start + offset - clock()
    if wait > 0:  # the last phase lasts its full length even when its last arrival came early
        await asyncio.sleep(wait)
    if in_flight:
        _, pending = await asyncio.wait(set(in_flight), timeout=drain_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    run.elapsed_s = clock() - start
    run.cpu_marks.append((clock(), time.process_time()))
    return run


def _pcts(values: list[float], qs: Sequence[float]) -> list[float | None]:
    return list(percentiles(values, qs)) if values else [None] * len(qs)


def phase_summary(run: PhasedRun, k: int) -> dict[str, Any]:
    """Counts, rates (per second of the phase) and latencies of the arrivals of phase ``k``.

    ``admitted`` are the requests answered OK (their rate is the goodput); a request the
    server queued but that then missed its deadline is under ``deadline_exceeded``.
    ``offered == sent + not_sent`` and ``sent == admitted + rejected + deadline_exceeded +
    sum(other_errors)``.
    """
    ph = run.phases[k]
    recs = [r for r in run.records if r.phase == k]
    codes = Counter(r.code for r in recs)
    ok = [r.latency_ms for r in recs if r.code == OK and r.latency_ms is not None]
    rej = [r.rtt_ms for r in recs if r.code == REJECTED and r.rtt_ms is not None]
    lag = [r.lag_ms for r in recs]
    a50, a90, a99 = _pcts(ok, (50, 90, 99))
    r50, r99 = _pcts(rej, (50, 99))
    (lag99,) = _pcts(lag, (99,))
    d = ph.duration_s
    other = {c: n for c, n in codes.items() if c not in (OK, REJECTED, TIMED_OUT, NOT_SENT)}
    return {
        "phase": ph.name,
        "rate": ph.rate,
        "duration_s": d,
        "start_s": run.start_of(k),
        "offered": len(recs),
        "sent": len(recs) - codes[NOT_SENT],
        "not_sent": codes[NOT_SENT],
        "admitted": codes[OK],
        "rejected": codes[REJECTED],
        "deadline_exceeded": codes[TIMED_OUT],
        "other_errors": other,
        "offered_rps": len(recs) / d,
        "goodput_rps": codes[OK] / d,
        "rejected_rps": codes[REJECTED] / d,
        "deadline_exceeded_rps": codes[TIMED_OUT] / d,
        "admitted_p50_ms": a50,
        "admitted_p90_ms": a90,
        "admitted_p99_ms": a99,
        "admitted_max_ms": max(ok) if ok else None,
        "rejection_p50_ms": r50,
        "rejection_p99_ms": r99,
        "client_lag_p99_ms": lag99,
        "client_lag_max_ms": max(lag) if lag else None,
        "client_cpu_pct": run.client_cpu_pct(k),
    }


def timeline(run: PhasedRun, bin_s: float) -> list[dict[str, Any]]:
    """Arrivals in consecutive ``bin_s`` windows: counts per second by outcome and the
    p50/p99 of the answered ones (by scheduled arrival, so a window's latency is that of
    the requests that *arrived* in it)."""
    if not bin_s > 0:
        raise InvalidArgumentError("bin_s", f"must be > 0, got {bin_s}")
    n = max(1, math.ceil(run.length_s / bin_s - 1e-9))
    bins: list[list[Record]] = [[] for _ in range(n)]
    for r in run.records:
        bins[min(n - 1, int(r.t_s / bin_s))].append(r)
    out = []
    for j, recs in enumerate(bins):
        codes = Counter(r.code for r in recs)
        ok = [r.latency_ms for r in recs if r.code == OK and r.latency_ms is not None]
        p50, p99 = _pcts(ok, (50, 99))
        width = min(bin_s, run.length_s - j * bin_s) or bin_s
        out.append(
            {
                "t_s": j * bin_s,
                "width_s": width,
                "offered_rps": len(recs) / width,
                "goodput_rps": codes[OK] / width,
                "rejected_rps": codes[REJECTED] / width,
                "deadline_exceeded_rps": codes[TIMED_OUT] / width,
                "other_rps": (len(recs) - codes[OK] - codes[REJECTED] - codes[TIMED_OUT]) / width,
                "admitted_p50_ms": p50,
                "admitted_p99_ms": p99,
            }
        )
    return out


def recovered_after_s(run: PhasedRun, k: int, bound_ms: float, bin_s: float) -> float | None:
    """Seconds from the start of phase ``k`` to the start of its first ``bin_s`` window in
    which every arrival was answered OK within ``bound_ms`` at the 99th percentile (None:
    not within the phase). Windows with no arrivals are skipped."""
    start, end = run.start_of(k), run.start_of(k + 1)
    t = start
    while t < end - 1e-9:
        recs = [r for r in run.records if r.phase == k and t <= r.t_s < t + bin_s]
        ok = [r.latency_ms for r in recs if r.code == OK and r.latency_ms is not None]
        if recs and len(ok) == len(recs) and percentiles(ok, (99,))[0] <= bound_ms:
            return t - start
        t += bin_s
    return None


# --- closed-loop reference points: capacity and the single client ------------------------------


async def closed_point(
    make: MakeFn, send: SendFn, *, concurrency: int, duration_s: float, drain_s: float
) -> dict[str, Any]:
    """One closed-loop window: throughput (answers per second) and latency percentiles."""
    res = await closed_loop(
        make, send, concurrency=concurrency, duration_s=duration_s, drain_s=drain_s
    )
    s = res.summary()
    return {
        "concurrency": concurrency,
        "duration_s": duration_s,
        "throughput_rps": s["throughput_rps"],
        "p50_ms": s["p50_ms"],
        "p99_ms": s["p99_ms"],
        "completed": s["completed"],
        "errors": s["error_codes"],
    }
