"""The INT8 encoders, checked and timed on the CPU that serves them, before they serve.

A bundle's INT8 encoders (one or more *variants*: static and/or dynamic, see
docs/bundle.md) passed the accuracy gate on the machine that exported them. ONNX Runtime's
int8 kernels compute differently on CPUs with and without VNNI (see
:mod:`explorank.engine.cpu`), and bundles move between machines, so at start-up the engine
encodes a fixed sample of catalog texts (the same evenly spaced sample the export gated on)
with each INT8 variant and compares the result with the bundle's fp32 catalog embeddings,
using the export's own metrics and tolerances (min cosine >= 0.99, top-10 overlap >= 0.9 by
default).

Whether INT8 pays depends on the CPU too (integer GEMMs are 2-4x faster than fp32 with VNNI,
much less without), so under ``precision = "auto"`` the variants that pass are timed against
fp32 on one small batch of catalog tokens (:func:`timing_batch`, :func:`measure_speed`:
interleaved rounds, fastest call kept) and the fastest serves, fp32 included. The log and
``GetInfo.precision_reason`` carry the measured times; tests inject timings (``measure``).

- ``precision = "auto"``: no variant passes -> fp32; the log, ``GetInfo`` and the
  ``explorank_int8_check_*`` metrics say so and why.
- ``precision = "int8"``: no variant passes -> start-up fails with the measured numbers (an
  explicit accuracy decision is never overridden silently); several pass -> the fastest.
- ``backend.int8_variant`` pins one variant; ``backend.speed_check_rounds = 0`` skips the
  timing (the exporter's order decides); ``backend.int8_check_texts = 0`` skips the check
  and trusts the export gate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from explorank.engine.cpu import int8_kernels
from explorank.engine.parity import DEFAULT_TOLERANCES, embedding_metrics, misses
from explorank.engine.tokenizer import pad_batch
from explorank.errors import ConfigError

if TYPE_CHECKING:
    from explorank.engine.backends import Backend
    from explorank.engine.bundle import Bundle
    from explorank.engine.config import BackendConfig
    from explorank.engine.tokenizer import Tokenizer

__all__ = [
    "Int8Check",
    "PrecisionChoice",
    "check_int8",
    "choose_encoder",
    "measure_speed",
    "sample_indices",
    "timing_batch",
]

log = logging.getLogger("explorank.engine")

BackendFactory = Callable[..., "Backend"]


def sample_indices(n: int, size: int) -> np.ndarray:
    """Evenly spaced row indices (the export's validation sample for the same ``size``)."""
    if n <= 0 or size <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, num=min(n, size)).round().astype(np.int64))


@dataclass(frozen=True)
class Int8Check:
    """The outcome of one load-time check."""

    passed: bool
    metrics: dict[str, float]
    tolerances: dict[str, float]
    texts: int
    kernels: str
    config: str
    seconds: float
    missed: tuple[str, ...] = ()

    def summary(self) -> str:
        parts = []
        for metric, tol in self.tolerances.items():
            parts.append(f"{metric.replace('_', ' ')} {self.metrics[metric]:.4f} (gate {tol:g})")
        return (
            f"{', '.join(parts)} on {self.texts} catalog texts, {self.kernels} int8 kernels, "
            f"config {self.config}"
        )

    def as_info(self) -> dict[str, Any]:
        """Fields of the ``Int8Gate`` message of GetInfo."""
        return {
            "passed": self.passed,
            "min_cosine": float(self.metrics.get("min_cosine", 0.0)),
            "top10_overlap": float(self.metrics.get("top10_overlap", 0.0)),
            "min_cosine_required": float(self.tolerances.get("min_cosine", 0.0)),
            "top10_overlap_required": float(self.tolerances.get("top10_overlap", 0.0)),
            "texts": self.texts,
            "cpu_int8_kernels": self.kernels,
            "int8_config": self.config,
        }


@dataclass
class PrecisionChoice:
    """Which precision serves, why, and the INT8 checks and timings behind the decision."""

    requested: str
    served: str
    reason: str
    check: Int8Check | None = field(default=None)
    #: "kind:name" of the INT8 encoder served, when one is.
    variant: str | None = None
    #: Every load-time check run, by "kind:name".
    checks: dict[str, Int8Check] = field(default_factory=dict)
    #: The warm-up speed comparison: candidate ("fp32" or "int8 kind:name") -> ms per call.
    timings_ms: dict[str, float] = field(default_factory=dict)
    timing_shape: tuple[int, int] | None = None


def _tolerances(bundle: Bundle) -> dict[str, float]:
    entry = bundle.manifest.get("parity", {}).get("int8") or {}
    tol = entry.get("tolerances") if isinstance(entry, dict) else None
    return {k: float(v) for k, v in (tol or DEFAULT_TOLERANCES["int8"]).items()}


def check_int8(
    backend: Backend,
    tokenizer: Tokenizer,
    bundle: Bundle,
    *,
    texts: int = 512,
    batch_size: int | None = None,
    variant: Mapping[str, Any] | None = None,
) -> Int8Check:
    """Encode the sample with ``backend`` and compare it with the bundle's fp32 embeddings.

    Batches are length-sorted and ``batch_size`` long (default: the export's validation batch
    size from the manifest): dynamic INT8 scales activations per batch, so the check groups
    the texts exactly as the export's gate did. ``variant`` (an entry of
    ``Bundle.int8_variants``) names the configuration checked (default: the first)."""
    t0 = time.perf_counter()
    if batch_size is None:
        batch_size = int(bundle.manifest.get("validation", {}).get("batch_size", 64))
    idx = sample_indices(len(bundle.items), texts)
    rows = tokenizer.encode_batch([bundle.items[i].text for i in idx.tolist()])
    out = np.empty((len(rows), bundle.embedding_dim), dtype=np.float32)
    order = np.argsort([len(r) for r in rows], kind="stable")  # similar lengths pad little
    for start in range(0, len(order), batch_size):
        sel = order[start : start + batch_size]
        ids, mask = pad_batch([rows[i] for i in sel.tolist()], pad_id=tokenizer.pad_id)
        out[sel] = backend.encode(ids, mask)
    tolerances = _tolerances(bundle)
    metrics = embedding_metrics(bundle.item_embeddings[idx], out)
    missed = misses(metrics, tolerances)
    if variant is None:
        variants = bundle.int8_variants()
        variant = variants[0] if variants else {}
    return Int8Check(
        passed=not missed,
        metrics={k: float(v) for k, v in metrics.items()},
        tolerances=tolerances,
        texts=int(idx.shape[0]),
        kernels=int8_kernels(),
        config=str(variant.get("name", "unknown")),
        seconds=round(time.perf_counter() - t0, 3),
        missed=tuple(missed),
    )


def timing_batch(
    bundle: Bundle, tokenizer: Tokenizer, *, batch: int = 4, seq: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed ``(batch, seq)`` batch of real catalog tokens (full mask) for the warm-up
    speed comparison: the catalog's token stream cut into windows, deterministic."""
    seq = max(2, min(seq, bundle.max_seq_length))
    texts = [it.text for it in bundle.items[: max(batch * 4, 16)]] or ["explorank"]
    encoded = tokenizer.encode_batch(texts)
    pieces = [np.asarray(e[1:-1], dtype=np.int64) for e in encoded if len(e) > 2]
    stream = np.concatenate(pieces) if pieces else np.asarray([tokenizer.pad_id], np.int64)
    first, last = int(encoded[0][0]), int(encoded[0][-1])
    ids = np.empty((batch, seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = first, last
    body = seq - 2
    if body > 0:
        starts = (np.arange(batch) * 37) % len(stream)
        ids[:, 1:-1] = stream[(starts[:, None] + np.arange(body)[None, :]) % len(stream)]
    return ids, np.ones_like(ids)


def measure_speed(
    candidates: Mapping[str, Backend],
    ids: np.ndarray,
    mask: np.ndarray,
    *,
    rounds: int = 3,
    timer: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Seconds per call of each candidate on one batch: ``rounds`` rounds in which every
    candidate runs twice in a row, the second call timed (the first rotating, so drift hits
    all alike); the fastest timed call of each is kept (the least disturbed by other work).

    Why twice: right after another session's call, that session's intra-op threads still
    spin and take cores from the one being timed. On the AVX2 VM a call that followed
    another session's took 74-91 ms (best of 12) against 37-47 ms for the same sessions
    called twice in a row, and with one timed call per round the speed check chose fp32 in
    2 of 10 start-ups with 7 rounds (and in 2 of 19 servers that ``bench serve`` started),
    where INT8 is ~20 % faster."""
    names = list(candidates)
    best = {name: float("inf") for name in names}
    for r in range(max(1, rounds)):
        for j in range(len(names)):
            name = names[(r + j) % len(names)]
            candidates[name].encode(ids, mask)  # untimed: the other sessions' threads settle
            t0 = timer()
            candidates[name].encode(ids, mask)
            best[name] = min(best[name], timer() - t0)
    return best


#: ``measure(candidates, ids, mask) -> seconds per call``; tests inject fixed timings.
Measure = Callable[[Mapping[str, "Backend"], np.ndarray, np.ndarray], Mapping[str, float]]


def _label(variant: Mapping[str, Any]) -> str:
    return f"{variant.get('kind', 'dynamic')}:{variant['name']}"


def choose_encoder(
    bundle: Bundle,
    tokenizer: Tokenizer,
    bc: BackendConfig,
    *,
    max_batch_size: int,
    create: BackendFactory | None = None,
    measure: Measure | None = None,
) -> tuple[Backend, PrecisionChoice]:
    """Create the encoder backend ``bc`` asks for; on CPU, check every INT8 variant of the
    bundle on this CPU and, under ``auto``, time the ones that pass against fp32 and serve the
    fastest (see the module docstring).

    Returns the backend and the :class:`PrecisionChoice`; raises :class:`ConfigError` when
    ``precision = "int8"`` was set explicitly and no INT8 variant passes the check."""
    if create is None:
        from explorank.engine.backends import create_backend

        create = create_backend

    def build(precision: str, variant: Mapping[str, Any] | None = None) -> Backend:
        kwargs: dict[str, Any] = {}
        if variant is not None:
            kwargs["int8_variant"] = variant["name"]
        return create(
            bundle,
            backend=bc.backend,
            precision=precision,
            provider=bc.provider,
            intra_op_threads=bc.intra_op_threads,
            allow_spinning=bc.allow_spinning,
            max_batch_size=max_batch_size,
            **kwargs,
        )

    variants = bundle.int8_variants()
    if bc.int8_variant != "auto":
        variants = [bundle.int8_variant(bc.int8_variant)]
    first = build(bc.precision, variants[0] if variants else None)
    served = first.precision
    if served != "int8":
        why = "the bundle has no INT8 encoder" if "int8" not in bundle.precisions else ""
        reason = f"{bc.precision}: serving {served}" + (f" ({why})" if why else "")
        return first, PrecisionChoice(bc.precision, served, reason)

    # INT8 on CPU: check each variant on this CPU (the first one is built already).
    passing: dict[str, Backend] = {}
    checks: dict[str, Int8Check] = {}
    unchecked_why = ""
    if bc.int8_check_texts == 0:
        unchecked_why = "backend.int8_check_texts = 0"
    elif not bundle.items:
        unchecked_why = "the catalog is empty"
    labels = {_label(v): v for v in variants}
    try:
        for i, (label, variant) in enumerate(labels.items()):
            backend = first if i == 0 else build("int8", variant)
            if unchecked_why:
                passing[label] = backend
                continue
            try:
                check = check_int8(
                    backend, tokenizer, bundle, texts=bc.int8_check_texts, variant=variant
                )
            except BaseException:
                backend.close()
                raise
            checks[label] = check
            if check.passed:
                log.info("INT8 encoder %s passed the load-time check: %s", label, check.summary())
                passing[label] = backend
            else:
                log.warning(
                    "INT8 encoder %s missed the load-time check on this CPU (%s; %s)",
                    label,
                    "; ".join(check.missed),
                    check.summary(),
                )
                backend.close()
    except BaseException:
        for backend in passing.values():
            backend.close()
        raise

    if not passing:
        missed = "; ".join(f"{label}: {'; '.join(c.missed)}" for label, c in checks.items())
        first_check = next(iter(checks.values()))
        if bc.precision == "int8":
            raise ConfigError(
                "precision=int8: the bundle's INT8 encoder misses the accuracy gate on this CPU ("
                + missed
                + f"; {first_check.summary()}). Serve precision=auto or fp32, or re-export the "
                "bundle on this machine or with `explorank export --int8-search portable`"
            )
        log.warning("no INT8 encoder passed the load-time check (%s); serving fp32", missed)
        reason = (
            f"{bc.precision}: int8 missed the load-time check on this CPU ({missed}); serving fp32"
        )
        return build("fp32"), PrecisionChoice(
            bc.precision, "fp32", reason, first_check, checks=checks
        )

    candidates: dict[str, Backend] = {f"int8 {label}": be for label, be in passing.items()}
    rounds = bc.speed_check_rounds
    fp32: Backend | None = None
    timings: dict[str, float] = {}
    shape: tuple[int, int] | None = None
    try:
        if rounds > 0 and (bc.precision == "auto" or len(candidates) > 1):
            if bc.precision == "auto":
                fp32 = build("fp32")
                candidates = {"fp32": fp32, **candidates}
            ids, mask = timing_batch(bundle, tokenizer)
            shape = (int(ids.shape[0]), int(ids.shape[1]))
            t0 = time.perf_counter()
            seconds: Mapping[str, float]
            if measure is None:
                seconds = measure_speed(candidates, ids, mask, rounds=rounds)
            else:
                seconds = measure(candidates, ids, mask)
            timings = {name: round(1000.0 * float(seconds[name]), 3) for name in candidates}
            log.info(
                "warm-up speed comparison (%d x %d, %d rounds, %.0f ms): %s",
                shape[0],
                shape[1],
                rounds,
                1000 * (time.perf_counter() - t0),
                ", ".join(f"{n} {ms:.2f} ms" for n, ms in timings.items()),
            )
            winner = min(timings, key=lambda n: (timings[n], list(candidates).index(n)))
        else:
            winner = next(iter(candidates))
    except BaseException:
        for backend in candidates.values():
            backend.close()
        raise
    for name, backend in candidates.items():
        if name != winner:
            backend.close()
    chosen = candidates[winner]
    served_label = winner.removeprefix("int8 ") if winner != "fp32" else None
    served_check = checks.get(served_label) if served_label else next(iter(checks.values()), None)
    measured = ""
    if timings and shape:
        measured = (
            " ("
            + ", ".join(f"{n} {ms:.1f} ms" for n, ms in timings.items())
            + f" per {shape[0]}x{shape[1]} batch)"
        )
    passed_note = (
        f"int8 not checked on this CPU ({unchecked_why})"
        if unchecked_why
        else f"{', '.join(passing)} passed the load-time check on this CPU"
    )
    if winner == "fp32":
        reason = f"{bc.precision}: fp32 is the fastest here{measured}; {passed_note}"
        log.info("serving fp32: it is faster than INT8 on this CPU%s", measured)
        return chosen, PrecisionChoice(
            bc.precision, "fp32", reason, served_check, None, checks, timings, shape
        )
    if timings:
        how = f"int8 {served_label} is the fastest{measured}"
    elif len(passing) > 1:
        how = f"int8 {served_label}, the exporter's first choice (speed_check_rounds = 0)"
    else:
        how = f"int8 {served_label}"
    reason = f"{bc.precision}: {how}; {passed_note}"
    if unchecked_why:
        reason = f"{bc.precision}: {how}; not checked on this CPU ({unchecked_why})"
    return chosen, PrecisionChoice(
        bc.precision, "int8", reason, served_check, served_label, checks, timings, shape
    )
