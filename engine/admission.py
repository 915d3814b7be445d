"""Admission by time: a request enters the encoder queue only if it can be served in time.

A queue bounded by *count* admits requests that then wait for seconds under overload (seen:
16-19 s at 3x capacity with a 1,024-deep queue, so every client with a 1 s deadline timed out
and goodput collapsed). Here the batcher predicts how long a new request would wait — the
padded tokens queued ahead of it (and in the batch being computed) times the measured encoder
cost per padded token — and refuses it at once with RESOURCE_EXHAUSTED when that wait exceeds
``batching.max_queue_wait_ms``, or when the request would miss its own deadline anyway. Clients
then retry elsewhere or later instead of waiting for a timeout; admitted requests keep a
bounded latency.

The cost per token is an exponentially weighted mean over recent batches, seeded by the
warm-up (which runs every bucket x batch size), so the first requests after start-up are
judged by measured numbers too. Until anything is measured, everything is admitted.
"""

from __future__ import annotations

from explorank.errors import ResourceExhaustedError

__all__ = ["Admission", "ServiceTime"]


class ServiceTime:
    """Encoder seconds per padded token (EWMA over batches)."""

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = float(alpha)
        self.per_token: float | None = None

    def observe(self, seconds: float, padded_tokens: int) -> None:
        if padded_tokens <= 0 or seconds <= 0:
            return
        sample = seconds / padded_tokens
        cur = self.per_token
        self.per_token = sample if cur is None else (1 - self.alpha) * cur + self.alpha * sample

    def predict(self, tokens: int) -> float:
        """Seconds to encode ``tokens`` padded tokens (0 before any measurement)."""
        return 0.0 if self.per_token is None else tokens * self.per_token


class Admission:
    """The admission rule (see the module docstring). ``max_wait_s = None`` disables the
    time rule (only the count cap of the queue applies)."""

    def __init__(self, max_wait_s: float | None, service: ServiceTime | None = None) -> None:
        self.max_wait_s = max_wait_s
        self.service = service or ServiceTime()
        self.rejected = 0

    def check(
        self,
        *,
        ahead_tokens: int,
        own_tokens: int,
        now: float,
        deadline: float | None,
    ) -> float:
        """The predicted wait (s) of a request with ``own_tokens`` behind ``ahead_tokens``;
        raises :class:`ResourceExhaustedError` when it must not be admitted."""
        wait = self.service.predict(ahead_tokens)
        if ahead_tokens == 0 or self.service.per_token is None:
            return wait
        if self.max_wait_s is not None and wait > self.max_wait_s:
            self.rejected += 1
            raise ResourceExhaustedError(
                f"overloaded: the predicted wait for the encoder is {wait * 1000:.0f} ms, over "
                f"the {self.max_wait_s * 1000:.0f} ms limit (batching.max_queue_wait_ms); "
                "retry with backoff or on another replica"
            )
        if deadline is not None:
            finish = now + wait + self.service.predict(own_tokens)
            if finish > deadline:
                self.rejected += 1
                raise ResourceExhaustedError(
                    f"overloaded: the request would finish {finish - deadline:.3f} s after its "
                    f"deadline (predicted encoder wait {wait * 1000:.0f} ms); retry with backoff "
                    "or a longer deadline"
                )
        return wait
