"""The dynamic batcher: concurrent encoder requests -> few, well-shaped backend calls.

Why it exists: a BERT encoder costs nearly the same for one sequence as for several
(the GEMMs are wider, not longer), and it costs in proportion to the *padded* length.
So concurrent requests are grouped, and only with others of similar length.

How it works (one asyncio task, the scheduler, plus one worker thread):

- ``submit(ids)`` puts a request in the queue of its **length bucket**: the smallest
  bucket >= ``len(ids)``. Sequences longer than the largest bucket get a bucket of their
  own length rounded up to a multiple of 8 (never truncated here: truncation to the
  model's maximum is the tokenizer's job, and silently cutting text would change
  results). With the bucket top equal to ``max_seq_length`` this never happens.
- The scheduler waits until the worker is free, then takes a batch from the bucket whose
  oldest request has waited longest among the *ready* ones (no bucket starves), up to
  ``max_batch_size`` requests and ``max_batch_tokens`` padded tokens (so a batch of long
  texts is smaller than one of short texts: its latency stays bounded). A bucket is ready
  when it holds a full batch or its oldest request has waited ``max_queue_delay_ms``.
  While the worker computes, the next batch keeps forming in the queues, so under load
  batches grow by themselves and the delay is only paid when the system is idle.
- Bucket merging (``merge_buckets``): when the batch has room, requests of other buckets
  join it if padding them (or it) to a common length costs less than the fixed overhead of
  running them as a batch of their own — both costs from the fitted cost model of this
  encoder (:class:`explorank.engine.admission.ServiceTime`). Where a batch's overhead
  dominates (a GPU, a tiny model) several buckets go in one call; where every token counts
  (a BERT on CPU) they stay apart. Either way the requests waiting in other buckets are
  served sooner under concurrency, which is what keeps the tail latency down.
- The backend call runs on an executor thread, so the event loop never blocks: one
  thread, one batch at a time (the backend parallelises internally), unless the encoder
  has lanes (``max_inflight_batches``: that many batches side by side, each on its own
  session with a share of the threads). Each request's future gets exactly its own row.
- Overload: a request is admitted only if its predicted wait (the padded tokens ahead of
  it times the measured encoder cost per token) fits ``max_queue_wait_ms`` and its own
  deadline (:mod:`explorank.engine.admission`); otherwise, and at ``max_queue_size`` queued
  sequences, ``submit`` raises :class:`ResourceExhaustedError` at once. A request whose
  ``deadline`` (``time.monotonic()`` based) passes while queued fails with
  :class:`DeadlineExceededError` and is never computed; a cancelled caller's request is
  dropped too.
- Fairness: a request with more sequences than one batch (``submit_many``) enters the queues
  one batch at a time; the next part is queued behind whatever arrived meanwhile each time a
  part is taken, so one large request cannot hold everyone else back for all of its batches.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np

from explorank.engine import tracing
from explorank.engine.admission import DEADLINE_SHARE, Admission
from explorank.errors import (
    ConfigError,
    DeadlineExceededError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
)

__all__ = ["BatcherMetrics", "BatcherStats", "DynamicBatcher", "EncodeFn"]

#: Batches are padded to their longest sequence rounded up to this (capped at the bucket).
_PAD_MULTIPLE = 8
#: Idle dispatch: when the worker is idle and requests have been arriving more than this
#: many queue delays apart, a request is sent at once instead of waiting for company.
_IDLE_GAP_FACTOR = 4.0

log = logging.getLogger(__name__)

EncodeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class BatcherMetrics(Protocol):
    """Observer of batcher events; the server bridges it to Prometheus. Called on the loop."""

    def observe_batch(
        self, size: int, real_tokens: int, padded_tokens: int, compute_s: float
    ) -> None:
        """One backend call: batch size, real and computed (padded) tokens, seconds."""

    def observe_queue_wait(self, seconds: float) -> None:
        """One request's wait from submit until its batch was formed."""

    def observe_dropped(self, reason: str, count: int) -> None:
        """Requests not computed: reason is "deadline", "cancelled" or "overflow".

        Optional: the batcher only calls it when the metrics object defines it."""


@dataclass
class BatcherStats:
    """Running totals, always kept (cheap); ``padding_efficiency`` = real / computed tokens."""

    batches: int = 0
    requests: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    compute_s: float = 0.0
    dropped_deadline: int = 0
    dropped_cancelled: int = 0
    rejected_overflow: int = 0
    failed_batches: int = 0
    #: batches failed in a row (0 after any success): health turns NOT_SERVING at 3
    consecutive_failures: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)

    @property
    def padding_efficiency(self) -> float:
        return self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0


class _Request:
    __slots__ = (
        "ids",
        "future",
        "enqueued",
        "deadline",
        "timer",
        "bucket",
        "owner",
        "trace",
        "predicted_wait",
    )

    def __init__(self, ids: np.ndarray, future: asyncio.Future[np.ndarray], deadline: float | None):
        self.ids = ids
        self.future = future
        self.enqueued = time.monotonic()
        self.deadline = deadline
        self.timer: asyncio.TimerHandle | None = None
        self.bucket = 0
        self.owner: _Backlog | None = None
        #: the caller's span (tracing on): queue and encode spans are recorded under it
        self.trace: Any = None
        #: the wait admission predicted for it (s), compared with its real wait when taken
        self.predicted_wait: float | None = None


class _Backlog:
    """The not yet queued part of one large request (see "Fairness" above)."""

    __slots__ = ("waiting",)

    def __init__(self, waiting: list[_Request]) -> None:
        self.waiting: deque[_Request] = deque(waiting)


def _safe(fn: Callable[..., None], *args: Any) -> None:
    """Call a metrics hook; a broken exporter must never stop the batcher."""
    try:
        fn(*args)
    except Exception:
        log.exception("batcher metrics hook %r failed", getattr(fn, "__name__", fn))


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _as_ids(ids: Any, field_name: str) -> np.ndarray:
    if type(ids) is np.ndarray and ids.dtype == np.int64 and ids.ndim == 1 and ids.shape[0]:
        return ids  # the common case, checked cheaply
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.shape[0] == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise InvalidArgumentError(
            field_name,
            f"expected a non-empty 1-D integer array of token ids, got {arr.dtype}{arr.shape}",
        )
    return arr if arr.dtype == np.int64 else arr.astype(np.int64)


def _by_parent(reqs: Sequence[_Request]) -> dict[int, tuple[Any, list[_Request]]]:
    groups: dict[int, tuple[Any, list[_Request]]] = {}
    for req in reqs:
        if req.trace is not None:
            groups.setdefault(id(req.trace), (req.trace, []))[1].append(req)
    return groups


def _trace_queue(taken: Sequence[_Request], now: float) -> None:
    """One ``queue`` span per request (its sequences in this batch): enqueue -> batch formed."""
    end = tracing.mono_to_ns(now)
    for parent, mine in _by_parent(taken).values():
        start = tracing.mono_to_ns(min(r.enqueued for r in mine))
        tracing.record(parent, "queue", start, end, {"explorank.sequences": len(mine)})


def _trace_encode(reqs: Sequence[_Request], start: int, end: int, length: int, real: int) -> None:
    """One ``encode`` span per request in the batch, with the batch's size and padding."""
    n = len(reqs)
    batch = {
        "explorank.batch_size": n,
        "explorank.padded_length": length,
        "explorank.real_tokens": real,
        "explorank.padded_tokens": n * length,
        "explorank.padding_efficiency": real / (n * length) if n * length else 1.0,
    }
    for parent, mine in _by_parent(reqs).values():
        tracing.record(parent, "encode", start, end, {**batch, "explorank.sequences": len(mine)})


class DynamicBatcher:
    """Groups concurrent ``submit`` calls into length-bucketed batches for ``encode_fn``.

    ``encode_fn(input_ids, attention_mask) -> (batch, d)`` is typically
    ``Backend.encode``. ``max_batch_size=1`` disables batching (each request runs alone,
    still off the loop). ``max_inflight_batches`` > 1 computes that many batches at once,
    on as many executor threads (the encoder's lanes: ``OrtBackend.enable_lanes``; thread
    ``i`` first calls ``lane_init(i)``); the cost model then takes a batch's time divided by
    the batches computing alongside it.
    """

    def __init__(
        self,
        encode_fn: EncodeFn,
        *,
        max_batch_size: int = 32,
        max_queue_delay_ms: float = 2.0,
        max_queue_size: int = 1024,
        max_request_share: float = 1.0,
        max_queue_wait_ms: float | None = None,
        deadline_share: float = DEADLINE_SHARE,
        max_batch_tokens: int | None = None,
        merge_buckets: bool = False,
        length_buckets: Sequence[int] = (16, 32, 64, 128),
        executor: concurrent.futures.Executor | None = None,
        metrics: BatcherMetrics | None = None,
        pad_id: int = 0,
        warmup_batch_sizes: Sequence[int] | None = None,
        max_inflight_batches: int = 1,
        lane_init: Callable[[int], None] | None = None,
    ) -> None:
        if int(max_batch_size) < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if not max_queue_delay_ms >= 0:
            raise ConfigError(f"max_queue_delay_ms must be >= 0, got {max_queue_delay_ms}")
        if int(max_queue_size) < 1:
            raise ConfigError(f"max_queue_size must be >= 1, got {max_queue_size}")
        if not 0.0 < max_request_share <= 1.0:
            raise ConfigError(f"max_request_share must be in (0, 1], got {max_request_share}")
        if max_queue_wait_ms is not None and not max_queue_wait_ms > 0:
            raise ConfigError(f"max_queue_wait_ms must be > 0 or unset, got {max_queue_wait_ms}")
        if max_batch_tokens is not None and int(max_batch_tokens) < 1:
            raise ConfigError(f"max_batch_tokens must be >= 1 or unset, got {max_batch_tokens}")
        if int(max_inflight_batches) < 1:
            raise ConfigError(f"max_inflight_batches must be >= 1, got {max_inflight_batches}")
        buckets = sorted({int(b) for b in length_buckets})
        if not buckets or buckets[0] < 1:
            raise ConfigError(
                f"length_buckets must be positive token counts, got {list(length_buckets)}"
            )
        self._encode_fn = encode_fn
        self.max_batch_size = int(max_batch_size)
        self.max_queue_delay_s = float(max_queue_delay_ms) / 1000.0
        self.max_queue_size = int(max_queue_size)
        #: the most sequences one submit_many may queue at once
        self.max_per_request = max(1, int(self.max_queue_size * max_request_share))
        self.length_buckets: tuple[int, ...] = tuple(buckets)
        #: padded tokens per batch (None: only max_batch_size limits a batch)
        self.max_batch_tokens = None if max_batch_tokens is None else int(max_batch_tokens)
        self.merge_buckets = bool(merge_buckets)
        self.pad_id = int(pad_id)
        self._max_inflight = int(max_inflight_batches)
        if warmup_batch_sizes is None:
            sizes = {
                1 << k
                for k in range(self.max_batch_size.bit_length())
                if 1 << k <= self.max_batch_size
            }
            sizes.add(self.max_batch_size)
        else:
            sizes = {int(s) for s in warmup_batch_sizes}
            bad = [s for s in sizes if not 1 <= s <= self.max_batch_size]
            if bad:
                raise ConfigError(
                    f"warmup_batch_sizes {bad} are outside 1..max_batch_size={self.max_batch_size}"
                )
        self.warmup_batch_sizes: tuple[int, ...] = tuple(sorted(sizes))
        self._own_executor = executor is None
        # One thread per batch in flight, each batch on the first idle one: serial work
        # keeps to one thread (a thread pool would hand it to whichever thread wakes first).
        # Thread i starts with lane_init(i): the backend's lane i computes its batches.
        self._executors: list[concurrent.futures.Executor] = (
            [
                concurrent.futures.ThreadPoolExecutor(
                    max_workers=1,
                    thread_name_prefix=f"explorank-encode-{i}",
                    initializer=None if lane_init is None else partial(lane_init, i),
                )
                for i in range(self._max_inflight)
            ]
            if executor is None
            else [executor] * self._max_inflight
        )
        self._executor = self._executors[0]
        self._idle_executors = list(range(self._max_inflight))
        self._metrics = metrics
        # observe_dropped is optional: a metrics object without it still works
        self._on_dropped: Callable[[str, int], None] | None = getattr(
            metrics, "observe_dropped", None
        )
        self.stats = BatcherStats()
        self.admission = Admission(
            None if max_queue_wait_ms is None else float(max_queue_wait_ms) / 1000.0,
            deadline_share=deadline_share,
        )
        self._queues: dict[int, deque[_Request]] = {}
        self._backlogs: set[_Backlog] = set()
        self._pending = 0  # sequences queued or in a backlog
        self._pending_tokens = 0  # their padded tokens (bucket lengths)
        self._state = "new"
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._wakeup: asyncio.Future[None] | None = None
        self._executing = 0
        #: (monotonic start, padded tokens) of the batches being computed
        self._exec_started: list[tuple[float, int]] = []
        self._last_arrival: float | None = None
        self._arrival_gap: float | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._state != "new":
            raise UnavailableError(f"batcher cannot start: it is {self._state}")
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(self._max_inflight)
        self._state = "running"
        self._scheduler = self._loop.create_task(self._schedule(), name="explorank-batcher")
        self._scheduler.add_done_callback(self._scheduler_done)

    async def stop(self, drain: bool = True) -> None:
        """Stop accepting work. ``drain=True`` computes everything queued (without waiting
        for more); ``drain=False`` fails queued requests with :class:`UnavailableError`.
        Either way the batch in flight finishes and its callers get their rows."""
        if self._state != "running":
            self._state = "stopped"
            return
        self._state = "stopping"
        self._closing = True
        if not drain:
            self._fail_queued(
                UnavailableError("the encoder batcher is shutting down; retry elsewhere")
            )
        self._notify()
        if self._scheduler is not None:
            await asyncio.gather(self._scheduler, return_exceptions=True)
        if self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)
        if self._own_executor:
            for ex in self._executors:
                ex.shutdown(wait=False)
        self._state = "stopped"

    @property
    def state(self) -> str:
        """``new``, ``running``, ``stopping``, ``stopped`` or ``failed``."""
        return self._state

    @property
    def _executing_tokens(self) -> int:
        """Padded tokens of the batches being computed."""
        return sum(tokens for _, tokens in self._exec_started)

    @property
    def pending(self) -> int:
        """Requests queued and not yet taken into a batch (dropped ones until pruned)."""
        return self._pending

    def bucket_for(self, length: int) -> int:
        """Padded length for a sequence of ``length`` tokens."""
        i = bisect.bisect_left(self.length_buckets, length)
        if i < len(self.length_buckets):
            return self.length_buckets[i]
        return -(-length // 8) * 8

    def batch_limit(self, length: int) -> int:
        """The most sequences in one batch padded to ``length`` tokens (at least 1)."""
        if self.max_batch_tokens is None:
            return self.max_batch_size
        return max(1, min(self.max_batch_size, self.max_batch_tokens // max(1, length)))

    def describe(self) -> dict[str, Any]:
        return {
            "max_batch_size": self.max_batch_size,
            "max_batch_tokens": self.max_batch_tokens,
            "merge_buckets": self.merge_buckets,
            "max_queue_delay_ms": self.max_queue_delay_s * 1000.0,
            "max_queue_size": self.max_queue_size,
            "length_buckets": list(self.length_buckets),
            "warmup_batch_sizes": list(self.warmup_batch_sizes),
        }

    # ------------------------------------------------------------------ submit
    async def submit(self, ids: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """Encode one sequence of token ids; returns its ``(d,)`` embedding."""
        (req,) = self._admit([_as_ids(ids, "input_ids")], deadline)
        return await req.future

    async def submit_many(
        self, list_of_ids: Sequence[np.ndarray], deadline: float | None = None
    ) -> np.ndarray:
        """Encode several sequences (admitted all or none); returns ``(n, d)`` in order."""
        if len(list_of_ids) == 0:
            raise InvalidArgumentError("input_ids", "no sequences to encode; pass at least one")
        arrays = [_as_ids(ids, f"input_ids[{i}]") for i, ids in enumerate(list_of_ids)]
        reqs = self._admit(arrays, deadline)
        futures = [r.future for r in reqs]
        try:
            rows = [await fut for fut in futures]
        except BaseException:
            for fut in futures:
                if not fut.done():
                    fut.cancel()
                elif not fut.cancelled():
                    fut.exception()  # mark retrieved: one error is reported, not n
            raise
        return np.stack(rows)

    def _ahead(self) -> tuple[int, int]:
        """(padded tokens, batches) a request arriving now waits for: what is queued and
        being computed — not the parts of large requests still in their backlogs, which are
        queued behind whatever arrives meanwhile (see "Fairness" above)."""
        waiting = [r for owner in self._backlogs for r in owner.waiting]
        tokens = self._pending_tokens - sum(r.bucket for r in waiting) + self._executing_tokens
        queued = self._pending - len(waiting)
        # the fewest batches they can take; how many more the buckets, the token budget and
        # merging make is left to the calibration of the prediction (admission.py)
        return tokens, self._executing + -(-queued // self.max_batch_size)

    def precheck(self, deadline: float | None) -> None:
        """Refuse now, before any work on the request (tokenizing it), when the queue alone
        already rules it out: the batcher is not running, or the wait for what is queued
        exceeds ``max_queue_wait_ms`` or the deadline. Under overload a refusal then costs
        almost nothing, so the capacity goes to the requests that are admitted."""
        self._require_running()
        # its own encoding (for the deadline rule) is at least one smallest-bucket sequence
        self._check_time(self.length_buckets[0], 1, 1, time.monotonic(), deadline)

    def _require_running(self) -> None:
        if self._state != "running":
            raise UnavailableError(f"the encoder batcher is {self._state}, not accepting requests")

    def _check_time(
        self, own_tokens: int, own_batches: int, n: int, now: float, deadline: float | None
    ) -> float:
        """Admission by time for ``n`` sequences of ``own_tokens`` padded tokens behind what
        is queued and computing; a refusal is counted and raised. Returns the cost model's
        own (uncalibrated) prediction of the wait: the calibration compares that one with the
        real wait, so that its factor never feeds back into what it measures."""
        ahead_tokens, ahead_batches = self._ahead()
        done = 0.0
        if self._exec_started:  # the batch computing now is partly done already
            start, tokens = self._exec_started[0]
            done = min(now - start, self.admission.service.predict(tokens, 1))
        try:
            self.admission.check(
                ahead_tokens=ahead_tokens,
                ahead_batches=ahead_batches,
                done_s=done,
                own_tokens=own_tokens,
                own_batches=own_batches,
                now=now,
                deadline=deadline,
            )
        except ResourceExhaustedError:
            self.stats.rejected_overflow += n
            self._observe_dropped("overflow", n)
            raise
        return self.admission.predict_wait(ahead_tokens, ahead_batches, done)

    def _admit(self, arrays: list[np.ndarray], deadline: float | None) -> list[_Request]:
        self._require_running()
        n = len(arrays)
        if n > self.max_per_request:
            # A caller's error, not overload: retrying would never help.
            raise InvalidArgumentError(
                "input_ids",
                f"{n} sequences in one request exceed the encoder queue's per-request share "
                f"({self.max_per_request} of {self.max_queue_size}: batching.max_queue_size x "
                "batching.max_request_share); send fewer",
            )
        if self._pending + n > self.max_queue_size:
            self._prune()
            if self._pending + n > self.max_queue_size:
                self.stats.rejected_overflow += n
                self._observe_dropped("overflow", n)
                raise ResourceExhaustedError(
                    f"encoder queue is full ({self._pending} of {self.max_queue_size} queued); retry with backoff"
                )
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            self.stats.dropped_deadline += n
            self._observe_dropped("deadline", n)
            raise DeadlineExceededError("the request's deadline passed before encoding could start")
        buckets = [self.bucket_for(arr.shape[0]) for arr in arrays]
        predicted = self._check_time(sum(buckets), -(-n // self.max_batch_size), n, now, deadline)
        if self._last_arrival is not None:
            gap = now - self._last_arrival
            self._arrival_gap = (
                gap if self._arrival_gap is None else 0.7 * self._arrival_gap + 0.3 * gap
            )
        self._last_arrival = now
        loop = self._loop
        assert loop is not None
        parent = tracing.capture()
        reqs = []
        for arr, bucket in zip(arrays, buckets, strict=True):
            req = _Request(arr, loop.create_future(), deadline)
            req.bucket = bucket
            req.trace = parent
            if deadline is not None:
                req.timer = loop.call_later(deadline - now, self._expire, req)
            reqs.append(req)
        self._pending += n
        self._pending_tokens += sum(buckets)
        first, rest = reqs[: self.max_batch_size], reqs[self.max_batch_size :]
        for req in first:
            req.predicted_wait = predicted
        if rest:
            owner = _Backlog(rest)
            self._backlogs.add(owner)
            for req in reqs:
                req.owner = owner
        if any([self._enqueue(req) for req in first]):
            self._notify()
        return reqs

    def _enqueue(self, req: _Request) -> bool:
        """Put ``req`` at the tail of its bucket; True when the scheduler should look."""
        queue = self._queues.get(req.bucket)
        if queue is None:
            queue = self._queues[req.bucket] = deque()
        queue.append(req)
        return len(queue) == 1 or len(queue) >= self.max_batch_size

    def _release(self, owner: _Backlog, count: int, now: float) -> None:
        """Queue the next ``count`` sequences of a large request, behind current arrivals."""
        wake = False
        for _ in range(min(count, len(owner.waiting))):
            req = owner.waiting.popleft()
            req.enqueued = now
            wake = self._enqueue(req) or wake
        if not owner.waiting:
            self._backlogs.discard(owner)
        if wake:
            self._notify()

    def _expire(self, req: _Request) -> None:
        if not req.future.done():
            req.future.set_exception(
                DeadlineExceededError(
                    "the request's deadline passed while it waited for the encoder"
                )
            )

    # ------------------------------------------------------------------ scheduler
    def _notify(self) -> None:
        if self._wakeup is not None:
            _resolve(self._wakeup)

    async def _sleep(self, timeout: float | None) -> None:
        loop = self._loop
        assert loop is not None
        fut: asyncio.Future[None] = loop.create_future()
        self._wakeup = fut
        handle = None
        if timeout is not None:
            handle = loop.call_later(max(timeout, 0.0), _resolve, fut)
        try:
            await fut
        finally:
            self._wakeup = None
            if handle is not None:
                handle.cancel()

    async def _schedule(self) -> None:
        assert self._slots is not None and self._loop is not None
        while True:
            await self._slots.acquire()
            try:
                batch = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            if batch is None:
                self._slots.release()
                return
            self._executing += 1
            task = self._loop.create_task(self._execute(*batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _next_batch(self) -> tuple[int, list[_Request]] | None:
        while True:
            now = time.monotonic()
            chosen: int | None = None
            chosen_age = float("inf")
            next_due = float("inf")
            for key, queue in list(self._queues.items()):
                while queue and queue[0].future.done():  # expired or cancelled heads
                    self._drop(queue.popleft())
                if not queue:
                    del self._queues[key]
                    continue
                head = queue[0].enqueued
                due = head + self.max_queue_delay_s
                if (
                    len(queue) >= self.batch_limit(key)
                    or due <= now
                    or self._closing
                    or (self._executing == 0 and self._sparse_arrivals())
                ):
                    if head < chosen_age:
                        chosen, chosen_age = key, head
                else:
                    next_due = min(next_due, due)
            if chosen is not None:
                length = chosen
                reqs = self._take(chosen, now, self.batch_limit(chosen))
                if reqs and self.merge_buckets:
                    length = self._merge(reqs, chosen, now)
                if reqs:
                    return length, reqs
                continue
            if not self._queues:
                if self._closing:
                    return None
                await self._sleep(None)
            else:
                await self._sleep(next_due - now)

    def _sparse_arrivals(self) -> bool:
        """True when requests arrive so far apart that waiting for a batch to fill would
        only add latency (a single client, light traffic). Under load the gap shrinks
        below the queue delay and batches form as before."""
        gap = self._arrival_gap
        return self.max_batch_size == 1 or (
            gap is not None and gap > _IDLE_GAP_FACTOR * self.max_queue_delay_s
        )

    def _merge(self, reqs: list[_Request], length: int, now: float) -> int:
        """Add requests of other buckets to ``reqs`` (padded to ``length``) while that costs
        less than running them as their own batch (see "Bucket merging" above); returns the
        batch's padded length."""
        service = self.admission.service
        per_token = service.per_token
        if per_token is None or not per_token > 0:
            return length
        budget = service.overhead / per_token  # tokens of padding worth one batch overhead
        others = sorted(
            (q[0].enqueued, key) for key, q in self._queues.items() if q and key != length
        )
        for _, key in others:
            new_length = max(length, key)
            room = self.batch_limit(new_length) - len(reqs)
            if room <= 0:
                continue
            queue = self._queues.get(key)
            if not queue:
                continue
            m = min(room, len(queue))
            extra = m * (length - key) if key < length else len(reqs) * (key - length)
            if extra > budget:
                continue
            taken = self._take(key, now, m)
            if taken:
                reqs.extend(taken)
                length = new_length
        return length

    def _take(self, key: int, now: float, limit: int) -> list[_Request]:
        queue = self._queues[key]
        out: list[_Request] = []
        released: dict[_Backlog, int] = {}
        observe_wait = self._metrics.observe_queue_wait if self._metrics is not None else None
        calibration = self.admission.calibration
        while queue and len(out) < limit:
            req = queue.popleft()
            self._pending -= 1
            self._pending_tokens -= req.bucket
            if req.owner is not None:
                released[req.owner] = released.get(req.owner, 0) + 1
            if req.future.done():
                self._count_drop(req)
                continue
            if req.deadline is not None and req.deadline <= now:
                self._expire(req)
                self._count_drop(req)
                continue
            out.append(req)
            if req.predicted_wait is not None:
                calibration.observe(req.predicted_wait, now - req.enqueued)
            if observe_wait is not None:
                _safe(observe_wait, now - req.enqueued)
        if not queue:
            del self._queues[key]
        for owner, count in released.items():
            self._release(owner, count, now)
        if tracing.enabled():
            _trace_queue(out, now)
        return out

    def _drop(self, req: _Request) -> None:
        """A dead request left the queue: count it, and let its request's backlog move up."""
        self._pending -= 1
        self._pending_tokens -= req.bucket
        self._count_drop(req)
        if req.owner is not None and req.owner in self._backlogs:
            self._release(req.owner, 1, time.monotonic())

    def _count_drop(self, req: _Request) -> None:
        reason = "cancelled" if req.future.cancelled() else "deadline"
        if reason == "cancelled":
            self.stats.dropped_cancelled += 1
        else:
            self.stats.dropped_deadline += 1
        if req.timer is not None:
            req.timer.cancel()
        self._observe_dropped(reason, 1)

    def _prune(self) -> None:
        """Remove dead requests everywhere (only on the overflow path: O(queued))."""
        for key, queue in list(self._queues.items()):
            live = deque(r for r in queue if not r.future.done())
            for r in queue:
                if r.future.done():
                    self._drop(r)
            if live:
                self._queues[key] = live
            else:
                del self._queues[key]
        for owner in list(self._backlogs):
            dead = [r for r in owner.waiting if r.future.done()]
            for r in dead:
                owner.waiting.remove(r)
            if not owner.waiting:
                self._backlogs.discard(owner)
            for r in dead:
                self._drop(r)

    def _fail_queued(self, exc: BaseException) -> None:
        waiting = [r for owner in self._backlogs for r in owner.waiting]
        for req in [r for q in self._queues.values() for r in q] + waiting:
            if req.timer is not None:
                req.timer.cancel()
            if not req.future.done():
                req.future.set_exception(exc)
        self._queues.clear()
        self._backlogs.clear()
        self._pending = 0
        self._pending_tokens = 0

    def _scheduler_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("encoder batcher scheduler failed: %r", exc)
            self._state = "failed"
            self._fail_queued(UnavailableError(f"the encoder batcher failed: {exc!r}"))

    def _observe_dropped(self, reason: str, n: int) -> None:
        if self._on_dropped is not None:
            _safe(self._on_dropped, reason, n)

    # ------------------------------------------------------------------ execution
    async def _execute(self, length: int, reqs: list[_Request]) -> None:
        assert self._loop is not None and self._slots is not None
        n = len(reqs)
        longest = max(req.ids.shape[0] for req in reqs)
        length = min(length, -(-longest // _PAD_MULTIPLE) * _PAD_MULTIPLE)
        started = (time.monotonic(), n * length)
        self._exec_started.append(started)
        try:
            ids = np.full((n, length), self.pad_id, dtype=np.int64)
            mask = np.zeros((n, length), dtype=np.int64)
            real = 0
            for row, req in enumerate(reqs):
                k = req.ids.shape[0]
                ids[row, :k] = req.ids
                mask[row, :k] = 1
                real += k
            t0 = time.perf_counter()
            t0_ns = time.time_ns()
            alongside = self._executing
            lane = min(self._idle_executors)  # a slot is held: one is idle
            self._idle_executors.remove(lane)
            try:
                try:
                    out = await self._loop.run_in_executor(
                        self._executors[lane], self._encode_fn, ids, mask
                    )
                finally:
                    self._idle_executors.append(lane)
                out = np.asarray(out)
                if out.ndim != 2 or out.shape[0] != n:
                    raise RuntimeError(
                        f"encode_fn returned shape {out.shape} for a batch of {n}; expected one row per input"
                    )
            except Exception as exc:  # fails this batch's requests only
                self.stats.failed_batches += 1
                self.stats.consecutive_failures += 1
                log.warning("an encoder batch of %d failed: %r", n, exc)
                for req in reqs:
                    if req.timer is not None:
                        req.timer.cancel()
                    if not req.future.done():
                        req.future.set_exception(exc)
                return
            self.stats.consecutive_failures = 0
            compute_s = time.perf_counter() - t0
            # batches computed side by side share the encoder: each took its time for the
            # throughput of a fraction of it (the cost model predicts waits in series)
            alongside = max(alongside, self._executing)
            self.admission.service.observe(compute_s / alongside, n * length)
            for row, req in enumerate(reqs):
                if req.timer is not None:
                    req.timer.cancel()
                if not req.future.done():
                    req.future.set_result(out[row].copy())
            st = self.stats
            st.batches += 1
            st.requests += n
            st.real_tokens += real
            st.padded_tokens += n * length
            st.compute_s += compute_s
            st.batch_sizes[n] += 1
            if self._metrics is not None:
                _safe(self._metrics.observe_batch, n, real, n * length, compute_s)
            if tracing.enabled():
                _trace_encode(reqs, t0_ns, time.time_ns(), length, real)
        finally:
            self._exec_started.remove(started)
            self._executing -= 1
            self._slots.release()

    # ------------------------------------------------------------------ warm-up
    def warmup_shapes(self) -> list[tuple[int, int]]:
        """Every ``(batch_size, padded_length)`` the warm-up runs: buckets x warm-up sizes
        (each bucket's sizes capped by ``max_batch_tokens``, its own cap included)."""
        shapes = []
        for length in self.length_buckets:
            cap = self.batch_limit(length)
            sizes = sorted({b for b in self.warmup_batch_sizes if b <= cap} | {cap})
            shapes += [(b, length) for b in sizes]
        return shapes

    async def warmup(
        self,
        shapes: Sequence[tuple[int, int]] | None = None,
        *,
        encode_fn: Callable[[np.ndarray, np.ndarray], Any] | None = None,
        label: str = "the encoder",
    ) -> list[tuple[int, int]]:
        """Run each shape through ``encode_fn`` once (off the loop); returns the shapes run.

        Lazy backends (TensorRT profiles, cuDNN autotuning, ORT's first-run allocations)
        pay their one-time costs here rather than on a client's request. Another
        ``encode_fn`` (a second session of the same encoder) is warmed the same way, and its
        times are not taken as the encoder's cost for admission.
        """
        shapes = list(shapes) if shapes is not None else self.warmup_shapes()
        fn = self._encode_fn if encode_fn is None else encode_fn
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        log.info("warming up %s: %d shapes", label, len(shapes))
        for i, (b, length) in enumerate(shapes, 1):
            ids = np.full((b, length), self.pad_id, dtype=np.int64)
            mask = np.ones((b, length), dtype=np.int64)
            t_shape = time.perf_counter()
            out = await loop.run_in_executor(self._executor, fn, ids, mask)
            if encode_fn is None:
                self.admission.service.observe(time.perf_counter() - t_shape, b * length)
            if np.asarray(out).shape[0] != b:
                raise RuntimeError(
                    f"encode_fn returned {np.asarray(out).shape} for a warm-up batch of {b}"
                )
            if i % 8 == 0 or i == len(shapes):
                log.info("warm-up %d/%d shapes (%.1fs)", i, len(shapes), time.perf_counter() - t0)
        return shapes
