"""Off-policy estimators: the value of a target policy from a log of another policy.

Every estimator is a plain function over numpy arrays with one entry per logged decision:

- ``rewards[i]``: the reward observed for the logged action,
- ``logging_propensities[i]``: the probability the logging policy gave that action (in (0, 1]),
- ``target_propensities[i]``: the probability the target policy gives the same action (in [0, 1]),
- for the doubly robust family, ``q_logged[i]`` (a reward model's prediction for the logged
  action) and ``q_target[i]`` (the reward model's expectation under the target policy).

Each returns an :class:`Estimate` with a standard error, a 95% normal confidence interval
and the effective sample size ``(Σw)² / Σw²`` of the importance weights ``w = target /
logging``. A small ESS means a few decisions carry the whole estimate: the interval is then
not to be trusted even when it looks narrow.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from explorank.errors import InvalidArgumentError

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    """One estimator's answer."""

    name: str
    value: float
    stderr: float
    ci_low: float
    ci_high: float
    ess: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- checks


def _array(name: str, values: Any) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(name, f"must be an array of numbers ({exc})") from exc
    if arr.ndim != 1:
        raise InvalidArgumentError(name, f"must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise InvalidArgumentError(name, "is empty; an estimate needs at least one logged decision")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise InvalidArgumentError(name, f"must be finite; entry {bad} is {arr[bad]!r}")
    return arr


def _check(
    rewards: Any,
    logging_propensities: Any,
    target_propensities: Any,
    **extra: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    r = _array("rewards", rewards)
    p0 = _array("logging_propensities", logging_propensities)
    p1 = _array("target_propensities", target_propensities)
    others = {k: _array(k, v) for k, v in extra.items()}
    for name, arr in (("logging_propensities", p0), ("target_propensities", p1), *others.items()):
        if arr.shape != r.shape:
            raise InvalidArgumentError(
                name,
                f"has {arr.shape[0]} entries but rewards has {r.shape[0]}; pass one per decision",
            )
    if np.any(p0 <= 0.0) or np.any(p0 > 1.0):
        bad = int(np.flatnonzero((p0 <= 0.0) | (p0 > 1.0))[0])
        raise InvalidArgumentError(
            "logging_propensities", f"must be in (0, 1]; entry {bad} is {p0[bad]!r}"
        )
    if np.any(p1 < 0.0) or np.any(p1 > 1.0):
        bad = int(np.flatnonzero((p1 < 0.0) | (p1 > 1.0))[0])
        raise InvalidArgumentError(
            "target_propensities", f"must be in [0, 1]; entry {bad} is {p1[bad]!r}"
        )
    return r, p0, p1, others


def _positive(name: str, value: float) -> float:
    v = float(value)
    if not math.isfinite(v) or v <= 0.0:
        raise InvalidArgumentError(name, f"must be a positive finite number, got {value!r}")
    return v


# --------------------------------------------------------------------------- helpers


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size ``(Σw)² / Σw²`` (0 when every weight is 0). The weights
    are scaled by their largest first (the ratio does not change): squares of tiny weights
    (~1e-158) are subnormal and lost precision, giving an ESS above the sample size."""
    weights = np.asarray(weights, dtype=np.float64)
    top = float(np.abs(weights).max()) if weights.size else 0.0
    if top == 0.0:
        return 0.0
    w = weights / top
    return float(w.sum()) ** 2 / float(np.dot(w, w))


def _mean_estimate(name: str, terms: np.ndarray, weights: np.ndarray) -> Estimate:
    """An estimator that is the sample mean of per-decision terms: normal CI on the mean."""
    n = terms.shape[0]
    value = float(terms.mean())
    stderr = float(terms.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return Estimate(
        name=name,
        value=value,
        stderr=stderr,
        ci_low=value - Z95 * stderr,
        ci_high=value + Z95 * stderr,
        ess=effective_sample_size(weights),
        n=n,
    )


# ------------------------------------------------------------------------- estimators


def ips(rewards: Any, logging_propensities: Any, target_propensities: Any) -> Estimate:
    """Inverse propensity scoring: ``mean(w r)``. Unbiased when the logging propensities
    are right and positive wherever the target acts; its variance grows with the weights."""
    r, p0, p1, _ = _check(rewards, logging_propensities, target_propensities)
    w = p1 / p0
    return _mean_estimate("ips", w * r, w)


def clipped_ips(
    rewards: Any, logging_propensities: Any, target_propensities: Any, max_weight: float = 10.0
) -> Estimate:
    """IPS with weights capped at ``max_weight``: biased (towards the logging policy's
    value where the cap binds) but with bounded variance."""
    cap = _positive("max_weight", max_weight)
    r, p0, p1, _ = _check(rewards, logging_propensities, target_propensities)
    w = np.minimum(p1 / p0, cap)
    return _mean_estimate("clipped_ips", w * r, w)


def snips(rewards: Any, logging_propensities: Any, target_propensities: Any) -> Estimate:
    """Self-normalized IPS: ``Σ w r / Σ w``. Slightly biased, consistent, and usually far
    less variable than IPS. Its standard error comes from the delta method:
    ``sqrt(Σ w² (r - V)²) / Σ w``. When every weight is 0 (the target never takes a
    logged action) the estimate is undefined and returned as NaN with ESS 0."""
    r, p0, p1, _ = _check(rewards, logging_propensities, target_propensities)
    w = p1 / p0
    n = r.shape[0]
    total = float(w.sum())
    if total == 0.0:
        return Estimate("snips", math.nan, math.nan, math.nan, math.nan, 0.0, n)
    value = float(np.dot(w, r)) / total
    resid = w * (r - value)
    stderr = math.sqrt(float(np.dot(resid, resid))) / total if n > 1 else math.nan
    return Estimate(
        name="snips",
        value=value,
        stderr=stderr,
        ci_low=value - Z95 * stderr,
        ci_high=value + Z95 * stderr,
        ess=effective_sample_size(w),
        n=n,
    )


def dr(
    rewards: Any,
    logging_propensities: Any,
    target_propensities: Any,
    q_logged: Any,
    q_target: Any,
) -> Estimate:
    """Doubly robust: ``mean(q_target + w (r - q_logged))``. Unbiased when either the
    propensities or the reward model are right; the better the reward model, the smaller
    the variance (the importance weights only correct the model's residuals)."""
    r, p0, p1, q = _check(
        rewards, logging_propensities, target_propensities, q_logged=q_logged, q_target=q_target
    )
    w = p1 / p0
    return _mean_estimate("dr", q["q_target"] + w * (r - q["q_logged"]), w)


def switch_dr(
    rewards: Any,
    logging_propensities: Any,
    target_propensities: Any,
    q_logged: Any,
    q_target: Any,
    tau: float = 10.0,
) -> Estimate:
    """SWITCH doubly robust (Wang et al. 2017, in the per-decision form used by Open Bandit
    Pipeline): the DR correction ``w (r - q_logged)`` is kept only where ``w <= tau``;
    beyond it the reward model alone is trusted. Trades a little bias for much less
    variance when a few weights are huge. ``tau = inf`` gives DR."""
    cap = float(tau)
    if math.isnan(cap) or cap <= 0.0:
        raise InvalidArgumentError("tau", f"must be a positive number, got {tau!r}")
    r, p0, p1, q = _check(
        rewards, logging_propensities, target_propensities, q_logged=q_logged, q_target=q_target
    )
    w = p1 / p0
    keep = w <= cap
    terms = q["q_target"] + np.where(keep, w * (r - q["q_logged"]), 0.0)
    return _mean_estimate("switch_dr", terms, np.where(keep, w, 0.0))


def all_estimates(
    rewards: Any,
    logging_propensities: Any,
    target_propensities: Any,
    q_logged: Any | None = None,
    q_target: Any | None = None,
    *,
    tau: float = 10.0,
    max_weight: float = 10.0,
) -> list[Estimate]:
    """Every estimator on the same data (the DR family only when a reward model is given)."""
    out = [
        ips(rewards, logging_propensities, target_propensities),
        snips(rewards, logging_propensities, target_propensities),
        clipped_ips(rewards, logging_propensities, target_propensities, max_weight),
    ]
    if q_logged is not None and q_target is not None:
        out.append(dr(rewards, logging_propensities, target_propensities, q_logged, q_target))
        out.append(
            switch_dr(rewards, logging_propensities, target_propensities, q_logged, q_target, tau)
        )
    return out
