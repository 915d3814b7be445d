"""Admission by time: a request enters the encoder queue only if it can be served in time.

A queue bounded by *count* admits requests that then wait for seconds under overload (seen:
16-19 s at 3x capacity with a 1,024-deep queue, so every client with a 1 s deadline timed out
and goodput collapsed). Here the batcher predicts how long a new request would wait — the
batches needed for the sequences queued ahead of it (and the batch being computed), each
costing a fixed overhead plus a cost per padded token — and refuses it at once with
RESOURCE_EXHAUSTED when that wait exceeds ``batching.max_queue_wait_ms``, or when the request
would miss its own deadline anyway. Clients then retry elsewhere or later instead of waiting
for a timeout; admitted requests keep a bounded latency.

The batch cost model ``seconds = overhead + per_token x padded_tokens`` is an exponentially
weighted least-squares fit over recent batches, seeded by the warm-up (which runs every
bucket x batch size, so the fit spans small and large batches from the start). Until
anything is measured, everything is admitted.

The model predicts the encoder's own work; the real wait also holds what it does not see —
gaps between batches while the event loop is busy, batches smaller than the largest (one per
length bucket), cores shared with the rest of the process — and sometimes less (batches of
several buckets merged). :class:`WaitCalibration` compares each admitted request's predicted
wait with the wait it then had: the deadline rule uses the prediction scaled by the 95th
percentile of that ratio; the ``max_queue_wait_ms`` limit only when it is below 1 (the model
overestimates; see the class for why). The ratio is exported as
``explorank_admission_wait_factor``.
"""

from __future__ import annotations

from collections import deque

from explorank.errors import ConfigError, ResourceExhaustedError

__all__ = ["DEADLINE_SHARE", "Admission", "ServiceTime", "WaitCalibration"]

#: The default share of the time left to a request's deadline within which its encoding must
#: be predicted to end (``batching.deadline_share``; the Rank goes on after the encoding).
DEADLINE_SHARE = 0.6


class ServiceTime:
    """Encoder batch cost ``overhead + per_token x padded_tokens``, fitted by exponentially
    weighted least squares over observed batches (``alpha`` = weight of the newest).

    Under steady load every batch has about the same size, and the intercept of a line
    through a narrow cloud of points is mostly noise: at 16 clients on the default bundle
    (2-core AVX2 VM) the fit said 47 ms per batch, where a one-sequence batch of 16 tokens
    takes 5 ms in all. The overhead is therefore bounded by the cheapest batch ever measured
    (warm-up runs the smallest shapes), and the slope is re-solved through the weighted mean
    so that predictions where the load is stay what they were."""

    def __init__(self, alpha: float = 0.05) -> None:
        self.alpha = float(alpha)
        self._n = 0
        self._sx = self._sy = self._sxx = self._sxy = self._w = 0.0
        self.overhead = 0.0
        self.per_token: float | None = None
        #: the fastest batch observed (s): no batch's fixed cost can exceed it
        self.cheapest = float("inf")

    def observe(self, seconds: float, padded_tokens: int) -> None:
        if padded_tokens <= 0 or seconds <= 0:
            return
        keep = 1.0 - self.alpha if self._n else 0.0
        x, y = float(padded_tokens), float(seconds)
        self._w = keep * self._w + 1.0
        self._sx = keep * self._sx + x
        self._sy = keep * self._sy + y
        self._sxx = keep * self._sxx + x * x
        self._sxy = keep * self._sxy + x * y
        self._n += 1
        self.cheapest = min(self.cheapest, y)
        mx, my = self._sx / self._w, self._sy / self._w
        var = self._sxx / self._w - mx * mx
        slope = (self._sxy / self._w - mx * my) / var if var > 1e-9 * max(mx * mx, 1.0) else 0.0
        if slope <= 0.0:  # one size seen, or noise: everything proportional to tokens
            self.overhead, self.per_token = 0.0, my / mx
        else:
            self.per_token = slope
            self.overhead = max(0.0, my - slope * mx)
            if self.overhead > self.cheapest:  # see the class docstring
                rest = my - self.cheapest
                self.overhead, self.per_token = (
                    (self.cheapest, rest / mx) if rest > 0 else (0.0, my / mx)
                )

    def predict(self, tokens: int, batches: int = 1) -> float:
        """Seconds to encode ``tokens`` padded tokens in ``batches`` batches (0 before any
        measurement)."""
        if self.per_token is None or tokens <= 0:
            return 0.0
        return batches * self.overhead + tokens * self.per_token


class WaitCalibration:
    """How much longer admitted requests really waited than predicted: the ``quantile`` of
    the ratio measured / predicted over the last ``window`` admitted requests, bounded to
    ``[lo, hi]``; 1 until ``min_samples`` are measured. A high quantile, not the mean: the
    waits spread around the prediction (batches of other buckets first, batch times that
    vary), and the deadline rule should hold for most admitted requests, not the average one.
    The 95th percentile over 500: under 3x overload with 1 s deadlines (``bench serve
    --scenario overload``, AVX2 VM, two pairs of runs, deadline share 0.8 then) it let no
    admitted request time out (0.0 deadline-exceeded per second against 1.0-2.9 with the 90th
    over 200) and lowered the admitted p99 to 912-916 from 978-996 ms at about the same
    admitted rate (39.7 / 51.3 against 40.7 / 45.2 req/s); the 99th cut the admitted rate
    (35.4 / 37.1 against 38.1 / 44.7).

    :class:`Admission` applies the factor in full to the deadline rule (a request that would
    time out is better refused) and to ``max_queue_wait_ms`` only below 1 (it lowers
    predictions that were too long). Raising the limit's prediction too was tried: a small
    request that waits behind one batch of a large request's (which the fairness rule puts
    ahead of it by design) looks like a mispredicted wait, the factor went to its bound and
    one client sending 255 new texts per request got the small clients 2,269 refusals in
    10 s (``bench serve --scenario greedy``; none without).

    The ratios are of the cost model's own predictions (never of calibrated ones, which would
    feed the factor back into what it measures). Waits predicted shorter than
    ``min_predicted_s`` are not used (a request admitted into an empty queue tells nothing
    about the prediction's scale)."""

    def __init__(
        self,
        window: int = 500,
        quantile: float = 0.95,
        lo: float = 0.5,
        hi: float = 4.0,
        min_predicted_s: float = 0.005,
        min_samples: int = 20,
    ) -> None:
        if window < 1 or not 0.0 < quantile <= 1.0 or not 0.0 < lo <= 1.0 <= hi:
            raise ValueError(
                f"bad calibration settings: window={window}, quantile={quantile}, lo={lo}, hi={hi}"
            )
        self.quantile, self.lo, self.hi = float(quantile), float(lo), float(hi)
        self.min_predicted_s = float(min_predicted_s)
        self.min_samples = max(1, int(min_samples))
        self._window = int(window)
        self._ratios: deque[float] = deque(maxlen=self._window)
        self._factor = 1.0
        self._stale = 0
        self.observed = 0

    def observe(self, predicted_s: float, actual_s: float) -> None:
        if not predicted_s >= self.min_predicted_s or not actual_s >= 0.0:
            return
        self._ratios.append(actual_s / predicted_s)
        self.observed += 1
        self._stale += 1

    @property
    def factor(self) -> float:
        n = len(self._ratios)
        if n < self.min_samples:
            return 1.0
        # recomputed after every tenth of the window's new samples (after each while few)
        if self._stale and (n < 100 or self._stale * 10 >= self._window):
            ranked = sorted(self._ratios)
            q = ranked[min(n - 1, int(self.quantile * n))]
            self._factor = min(self.hi, max(self.lo, q))
            self._stale = 0
        return self._factor


class Admission:
    """The admission rule (see the module docstring). ``max_wait_s = None`` disables the
    time rule (only the count cap of the queue applies); ``deadline_share`` is the share of
    the time left to a deadline that the encoding may take."""

    def __init__(
        self,
        max_wait_s: float | None,
        service: ServiceTime | None = None,
        calibration: WaitCalibration | None = None,
        deadline_share: float = DEADLINE_SHARE,
    ) -> None:
        if not 0.0 < deadline_share <= 1.0:
            raise ConfigError(f"deadline_share must be in (0, 1], got {deadline_share}")
        self.max_wait_s = max_wait_s
        self.deadline_share = float(deadline_share)
        self.service = service or ServiceTime()
        # calibrated on waits of at least a tenth of the limit: a short predicted wait is
        # mostly the rest of the batch being computed, whose ratio says little about a long one
        self.calibration = calibration or WaitCalibration(
            min_predicted_s=max(0.005, 0.1 * max_wait_s) if max_wait_s else 0.005
        )
        self.rejected = 0

    def predict_wait(self, ahead_tokens: int, ahead_batches: int = 1, done_s: float = 0.0) -> float:
        """The cost model's wait (s, uncalibrated) behind ``ahead_tokens`` in ``ahead_batches``
        batches, of which ``done_s`` seconds are already done."""
        return max(0.0, self.service.predict(ahead_tokens, ahead_batches) - done_s)

    def check(
        self,
        *,
        ahead_tokens: int,
        own_tokens: int,
        now: float,
        deadline: float | None,
        ahead_batches: int = 1,
        own_batches: int = 1,
        done_s: float = 0.0,
    ) -> float:
        """The predicted wait (s, calibrated) of a request with ``own_tokens`` behind
        ``ahead_tokens`` (``ahead_batches`` batches' worth), of which ``done_s`` seconds are
        already done (the batch computing now started that long ago); raises
        :class:`ResourceExhaustedError` when it must not be admitted."""
        predicted = self.predict_wait(ahead_tokens, ahead_batches, done_s)
        factor = self.calibration.factor
        # the limit uses the model's wait, scaled down only; the deadline rule the calibrated
        # one, up as well (see WaitCalibration for why)
        wait = predicted * min(1.0, factor)
        if ahead_tokens == 0 or self.service.per_token is None:
            return wait
        # the limit is for the wait alone: counting the request's own batches would refuse a
        # large request (a full batch of long texts takes most of a second on two cores)
        # whenever anything at all is queued
        if self.max_wait_s is not None and wait > self.max_wait_s:
            self.rejected += 1
            raise ResourceExhaustedError(
                f"overloaded: the predicted wait for the encoder is {wait * 1000:.0f} ms, over "
                f"the {self.max_wait_s * 1000:.0f} ms limit (batching.max_queue_wait_ms); "
                "retry with backoff or on another replica"
            )
        if deadline is not None:
            finish = now + predicted * factor + self.service.predict(own_tokens, own_batches)
            # the encoder must be done within deadline_share of the time left: the rest is
            # for what follows it (scoring, the policy, logging the event, the response)
            if finish > now + self.deadline_share * (deadline - now):
                self.rejected += 1
                raise ResourceExhaustedError(
                    f"overloaded: the request's encoding would end {finish - now:.3f} s from "
                    f"now (predicted encoder wait {predicted * factor * 1000:.0f} ms), too close to its "
                    f"deadline {deadline - now:.3f} s away (batching.deadline_share "
                    f"{self.deadline_share:g}); retry with backoff or a longer deadline"
                )
        return wait
