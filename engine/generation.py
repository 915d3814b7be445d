"""A served model *generation*: one bundle with its encoder pipeline and the scorers built for
it, and the live catalog on top of it.

The engine serves one generation at a time. A hot reload builds the next one next to it —
load and verify the bundle, check its INT8 encoder on this CPU, warm every batch shape, build
the scorers, replay the catalog changes — and only then swaps it in, atomically; the old one
keeps serving the Ranks that started on it, and is stopped once they are done. A bundle that
fails any of this never serves: the old one goes on as if nothing happened.

Catalog changes (items added with their text, items retired) are applied here too: added
texts are encoded by the generation's own encoder, through its batcher, so they are
embedded exactly as the catalog's own items were.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from explorank.engine.catalog import Catalog
from explorank.engine.embedder import Embedder
from explorank.plugins.api import CatalogChange, Scorer, ScorerContext

if TYPE_CHECKING:
    from explorank.engine.bundle import Bundle
    from explorank.engine.config import Config
    from explorank.engine.decider import Decider
    from explorank.engine.int8_check import PrecisionChoice
    from explorank.engine.metrics import EngineMetrics

__all__ = ["Generation", "apply_changes", "prepare"]

log = logging.getLogger("explorank.engine")


@dataclass
class Generation:
    """One bundle being served (see the module docstring)."""

    bundle: Bundle
    backend: Any
    embedder: Embedder
    scorers: dict[str, Scorer]
    scorer_problems: list[tuple[str, str, str]]
    precision_choice: PrecisionChoice
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def catalog(self) -> Catalog:
        return self.embedder.catalog

    def acquire(self) -> None:
        self.inflight += 1
        self.idle.clear()

    def release(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self.idle.set()

    async def close(self, grace_s: float) -> None:
        """Wait (up to ``grace_s``) for the calls that started on this generation, then stop
        its batcher and free its encoder."""
        try:
            await asyncio.wait_for(self.idle.wait(), timeout=grace_s)
        except asyncio.TimeoutError:
            log.warning(
                "%d calls still running on %s after %.1f s; stopping it anyway",
                self.inflight,
                self.bundle.model_version,
                grace_s,
            )
        await self.embedder.stop()
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()


def head_providers(backend: Any) -> tuple[str, ...]:
    """ONNX Runtime providers for scoring heads: the encoder's device, as ORT names.

    A head is a small MLP: on a GPU the CUDA EP (never the TensorRT EP, whose engine
    build would cost more than the head), else the CPU; the native TensorRT backend's
    provider ("TensorRT") is not an ORT provider at all."""
    import onnxruntime as ort

    on_gpu = getattr(backend, "provider", "") in (
        "TensorRT",
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
    )
    if on_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        return ("CUDAExecutionProvider", "CPUExecutionProvider")
    return ("CPUExecutionProvider",)


def scorer_context(bundle: Bundle, backend: Any) -> ScorerContext:
    return ScorerContext(
        embedding_dim=bundle.embedding_dim,
        heads=bundle.heads(),
        bundle_dir=bundle.path,
        providers=head_providers(backend),
        intra_op_threads=1,
    )


def _enable_burst(backend: Any) -> None:
    """In a worker of ``serve --workers N``: let ``backend`` borrow the group's idle cores
    (:mod:`explorank.engine.workers`)."""
    from explorank.engine.workers import group_cpus, peer_activity

    peers = peer_activity()
    enable = getattr(backend, "enable_burst", None)
    if peers is None or enable is None:
        return
    enable(group_cpus(), peers)


def prepare(
    config: Config,
    bundle: Bundle,
    metrics: EngineMetrics,
    *,
    decider: Decider | None = None,
    backend: Any = None,
) -> Generation:
    """Everything a generation needs, short of starting its batcher: the tokenizer, the
    encoder (its INT8 check included) and, given a ``decider``, the scorers for this bundle.
    Blocking (it loads models): reloads run it on a worker thread."""
    from explorank.engine.gpu import finish_gpu_encoder
    from explorank.engine.int8_check import PrecisionChoice, choose_encoder
    from explorank.engine.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_bundle(bundle)
    if backend is None:
        backend, choice = choose_encoder(
            bundle, tokenizer, config.backend, max_batch_size=config.batching.max_batch_size
        )
        # On a GPU: the fp16 encoder checked on this GPU, and CUDA graphs (engine/gpu.py).
        backend, choice = finish_gpu_encoder(backend, choice, bundle, tokenizer, config)
        enable_lanes = getattr(backend, "enable_lanes", None)
        if enable_lanes is not None and config.backend.lane_count() > 1:
            enable_lanes(config.backend.lane_count())
        if config.server.worker_burst:
            _enable_burst(backend)
    else:
        served = str(getattr(backend, "precision", "unknown"))
        choice = PrecisionChoice(
            config.backend.precision, served, f"{served}: backend given by the caller"
        )
    embedder = Embedder(
        bundle,
        backend,
        tokenizer,
        batching=config.batching,
        cache=config.cache,
        metrics=metrics,
        max_new_texts=config.limits.max_new_texts,
        ranking=config.ranking,
    )
    scorers: dict[str, Scorer] = {}
    problems: list[tuple[str, str, str]] = []
    if decider is not None:
        scorers, problems = decider.build_scorers(scorer_context(bundle, backend))
    return Generation(bundle, backend, embedder, scorers, problems, choice)


async def apply_changes(embedder: Embedder, changes: Sequence[CatalogChange]) -> int:
    """Apply ``changes`` (in sequence order) to ``embedder``'s catalog, encoding added texts
    with its encoder; returns how many changed something. Consecutive adds are encoded
    together, in chunks that fit one request's share of the encoder queue."""
    applied = 0
    i = 0
    catalog = embedder.catalog
    while i < len(changes):
        change = changes[i]
        if change.seq and change.seq <= catalog.seq:
            i += 1
            continue
        if change.kind == "remove":
            catalog = catalog.removed([change.item_id], change.seq)
            applied += 1
            i += 1
            continue
        run: list[CatalogChange] = []
        while i < len(changes) and changes[i].kind == "add":
            if not (changes[i].seq and changes[i].seq <= catalog.seq):
                run.append(changes[i])
            i += 1
        vectors = await embedder.encode_many([c.text for c in run])
        catalog = catalog.added(
            [(c.item_id, c.text) for c in run], vectors, max(c.seq for c in run)
        )
        applied += len(run)
    embedder.set_catalog(catalog)
    return applied


def describe_swap(old: Generation, new: Generation, seconds: float) -> str:
    return (
        f"switched from {old.bundle.model_version} to {new.bundle.model_version} "
        f"({len(new.catalog)} items, precision {new.precision_choice.served}) "
        f"after {seconds:.1f} s of loading and warm-up"
    )
