"""``explorank bench serve``: end-to-end Rank latency and throughput under load.

For each target, one after another (never concurrently: they would share the cores):
start it as a subprocess on a free loopback port (or use ``--address``), warm it up,
run the closed-loop concurrency sweep, then the open-loop Poisson rates, scraping the
server's ``/metrics`` before and after every measurement window, then stop it.

Targets: ``explorank`` (dynamic batching, default settings), ``explorank-nobatch``
(``--max-batch-size 1``), ``explorank-1lane`` (``backend.lanes = 1``: one batch at a time,
the default before encoder lanes), ``explorank-wN`` (``--workers N``: N serving processes on one port,
each with an equal share of the CPUs; e.g. ``explorank-w2``) and ``torch-peer``
(:mod:`.peer_torch_server`: the Hugging Face model in PyTorch per request, what a user would
otherwise write). All get the same client, the same request sequence and the same load
points. ``explorank-history`` (not in the default list) serves with
``ranking.user_representation = "history"`` and gets the same users described by
``history_item_ids`` (the items whose texts make the others' context) instead of text: its
Ranks make no encoder call. Open-loop rates, unless
given, are 50% and 80% of the first target's best closed-loop throughput, and are then
the same for every target.

That sweep is the ``sweep`` scenario (the default). ``scenarios`` may also name
``overload`` (:mod:`.overload`: 3x the measured capacity with 1 s client deadlines, then
back to half of it) and ``soak`` (:mod:`.soak`: half of the capacity for a long time while
the server's RSS is sampled) and ``greedy`` (:mod:`.greedy`: small clients alone, then next
to one client sending the largest requests of new texts); each runs on an explorank server
of its own, after the sweep, and adds a section of that name to the report.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from explorank.benchmarks.latency.connections import open_connections
from explorank.benchmarks.latency.encoder_bench import (
    catalog_token_stream,
    make_inputs,
    percentiles,
)
from explorank.benchmarks.latency.greedy import run_greedy
from explorank.benchmarks.latency.headlines import serve_headline
from explorank.benchmarks.latency.overload import run_overload
from explorank.benchmarks.latency.serve_load import (
    LoadResult,
    RequestFactory,
    closed_loop,
    open_loop,
)
from explorank.benchmarks.latency.serve_procs import (
    ManagedServer,
    check_loopback,
    explorank_command,
    free_port,
    peer_command,
    scrape_metrics,
    triton_peer_command,
    window_stats,
)
from explorank.benchmarks.latency.soak import run_soak
from explorank.errors import ExplorankError, InvalidArgumentError

__all__ = ["TARGETS", "ServeBenchConfig", "run_serve_bench"]

TARGETS = (
    "explorank",
    "explorank-nobatch",
    "torch-peer",
    "explorank-history",
    "triton-peer",
    "explorank-1lane",
)
DEFAULT_TARGETS = TARGETS[:3]
HISTORY_TARGET = "explorank-history"
#: the environment each explorank target is served with beyond the defaults
TARGET_ENV = {
    HISTORY_TARGET: {"EXPLORANK__RANKING__USER_REPRESENTATION": "history"},
    "explorank-1lane": {"EXPLORANK__BACKEND__LANES": "1"},
}
#: Triton's dynamic batcher (PyTriton) on the same INT8 encoder: Open Inference Protocol only
TRITON_TARGET = "triton-peer"
SCENARIOS = ("sweep", "overload", "soak", "greedy")
#: Which API the load uses: explorank's Ranker, or the Open Inference Protocol (KServe v2),
#: whose model "rank" is the same Rank and whose model "encoder" is the encoder alone (the
#: load a Triton deployment of the encoder would see).
APIS = ("ranker", "oip")
OIP_MODELS = ("rank", "encoder")
DEFAULT_BUCKETS = (16, 32, 64, 128)
SCENARIO_RUNNERS = {"overload": run_overload, "soak": run_soak, "greedy": run_greedy}


def workers_of(target: str) -> int | None:
    """N for a target named ``explorank-wN`` (N >= 1), else None."""
    prefix = "explorank-w"
    if target.startswith(prefix) and target[len(prefix) :].isdigit():
        n = int(target[len(prefix) :])
        return n if n >= 1 else None
    return None


@dataclass
class ServeBenchConfig:
    address: str | None = None
    bundle: Path | None = None
    model_dir: Path | None = None
    metrics_url: str | None = None
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    rates: list[float] | None = None
    duration_s: float = 10.0
    warmup_s: float = 2.0
    candidates: int = 100
    max_requests: int = 100_000
    timeout_s: float = 10.0
    unique_contexts: bool = True
    reward_fraction: float = 0.0
    max_in_flight: int = 512
    #: client connections of the sweep, spread evenly over `serve --workers` processes
    connections: int = 8
    #: the interpreter that runs the Triton peer (needs nvidia-pytriton; None: this one)
    triton_python: str | None = None
    threads: int | None = None
    seed: int = 0
    startup_timeout_s: float = 180.0
    quick: bool = False
    # The overload and soak scenarios (modules overload and soak), on the explorank target.
    scenarios: list[str] = field(default_factory=lambda: ["sweep"])
    overload_factor: float = 3.0
    recovery_factor: float = 0.5
    deadline_s: float = 1.0
    max_queue_wait_ms: float | None = None
    capacity_rps: float | None = None  # None: measured (closed loop, capacity_clients)
    capacity_clients: int = 16
    capacity_s: float = 10.0  # as long as one phase: the goodput is a share of it
    single_s: float = 5.0
    soak_s: float = 600.0  # measured, after the warm-up
    soak_warmup_s: float | None = None  # None: soak.soak_warmup_s(soak_s)
    soak_fraction: float = 0.5
    # The greedy scenario (module greedy): small clients alone, then next to one client
    # sending greedy_texts new candidate texts per request.
    greedy_texts: int = 255
    greedy_small_clients: int = 4
    server_args: list[str] = field(default_factory=list)  # more `explorank serve` arguments
    api: str = "ranker"  # the sweep's API: ranker or oip (overload and soak use the Ranker API)
    oip_model: str = "rank"  # with api oip: rank or encoder

    @classmethod
    def quick_defaults(cls, **overrides: Any) -> ServeBenchConfig:
        """Three short points per loop type per target: about 2-3 minutes on 2 cores;
        overload 3 x 3 s phases, soak 10 s."""
        base: dict[str, Any] = dict(
            concurrency=[1, 4, 16],
            duration_s=3.0,
            warmup_s=1.5,
            quick=True,
            capacity_s=2.0,
            single_s=2.0,
            soak_s=10.0,
        )
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def validate(self) -> None:
        unknown = [t for t in self.targets if t not in TARGETS and workers_of(t) is None]
        if unknown or not self.targets:
            raise InvalidArgumentError(
                "--targets",
                f"unknown {unknown or 'empty list'}; choose from {','.join(TARGETS)} "
                "or explorank-wN (N workers, e.g. explorank-w2)",
            )
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise InvalidArgumentError(
                "--concurrency", f"need positive integers, got {self.concurrency}"
            )
        if self.rates is not None and (not self.rates or any(not r > 0 for r in self.rates)):
            raise InvalidArgumentError(
                "--rate", f"need positive rates (requests/s), got {self.rates}"
            )
        if not self.duration_s > 0 or self.duration_s > 3600:
            raise InvalidArgumentError(
                "--duration", f"must be in (0, 3600] seconds, got {self.duration_s}"
            )
        if self.max_requests < 1:
            raise InvalidArgumentError("--max-requests", f"must be >= 1, got {self.max_requests}")
        if not 1 <= self.connections <= 256:
            raise InvalidArgumentError(
                "--connections", f"must be in 1..256, got {self.connections}"
            )
        if not 0.0 <= self.reward_fraction <= 1.0:
            raise InvalidArgumentError(
                "--reward-fraction", f"must be in [0, 1], got {self.reward_fraction}"
            )
        if self.api not in APIS:
            raise InvalidArgumentError(
                "--api", f"unknown {self.api!r}; choose from {','.join(APIS)}"
            )
        if self.oip_model not in OIP_MODELS:
            raise InvalidArgumentError(
                "--oip-model", f"unknown {self.oip_model!r}; choose from {','.join(OIP_MODELS)}"
            )
        if self.address is not None:
            check_loopback(self.address)
        bad = [s for s in self.scenarios if s not in SCENARIOS]
        if bad or not self.scenarios:
            raise InvalidArgumentError(
                "--scenario", f"unknown {bad or 'empty list'}; choose from {','.join(SCENARIOS)}"
            )
        for flag, value, low in (
            ("--overload-factor", self.overload_factor, 0.0),
            ("--deadline-s", self.deadline_s, 0.0),
            ("--capacity", self.capacity_rps, 0.0),
            ("--soak-s", self.soak_s, 0.0),
            ("--soak-warmup-s", self.soak_warmup_s, -1e-9),
            ("--max-queue-wait-ms", self.max_queue_wait_ms, -1e-9),
            ("--greedy-texts", self.greedy_texts, 0.0),
        ):
            if value is not None and not value > low:
                raise InvalidArgumentError(flag, f"must be > {max(low, 0):g}, got {value}")


def _progress(msg: str) -> None:
    print(f"[bench serve] {msg}", file=sys.stderr, flush=True)


def _f(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _bucket(length: int, max_len: int) -> int:
    return min(next((b for b in DEFAULT_BUCKETS if b >= length), max_len), max_len)


def load_profile(factory: RequestFactory, tokenizer: Any, n: int = 300) -> dict[str, Any]:
    """Token-length distribution of the contexts the load sends (truncated as the server does)."""
    texts = [factory.context("profile", i)[1] for i in range(n)]
    lengths = np.array([len(x) for x in tokenizer.encode_batch(texts)])
    p50, p90 = percentiles(lengths.tolist(), (50, 90))
    return {"p50": p50, "p90": p90, "max": int(lengths.max()), "min": int(lengths.min())}


def encoder_batch1_ms(
    bundle: Any, tokenizer: Any, seq: int, threads: int | None, reps: int = 40
) -> float:
    """p50 of the engine's encoder at batch 1 x ``seq`` (real catalog tokens), in this process,
    with the precision the server picks by default (``auto``: the gated INT8 on CPU)."""
    from explorank.engine.backends import create_backend

    stream, cls_id, sep_id = catalog_token_stream(tokenizer, [it.text for it in bundle.items])
    ids, mask = make_inputs(stream, cls_id, sep_id, 1, seq, np.random.default_rng(0))
    with create_backend(
        bundle, backend="auto", precision="auto", provider="auto", intra_op_threads=threads
    ) as be:
        for _ in range(5):
            be.encode(ids, mask)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            be.encode(ids, mask)
            times.append((time.perf_counter() - t0) * 1000.0)
    return percentiles(times, (50,))[0]


async def _measure_target(
    name: str,
    address: str,
    metrics_url: str | None,
    factory: RequestFactory,
    cfg: ServeBenchConfig,
    rates_for: Callable[[list[dict[str, Any]]], list[float]],
    progress: Callable[[str], None],
) -> list[dict[str, Any]]:
    import explorank.oip as oip
    from explorank.v1 import ranker_pb2, ranker_pb2_grpc

    rows: list[dict[str, Any]] = []
    reward_rng = random.Random(cfg.seed)
    conns = await open_connections(
        address, cfg.connections, timeout_s=cfg.timeout_s, progress=progress
    )
    if conns.workers > 1:
        progress(
            f"{name}: {len(conns.channels)} connections over {conns.workers} workers "
            f"({conns.describe()['per_worker']} per worker; {conns.opened} opened)"
        )
    try:
        stubs = [ranker_pb2_grpc.RankerStub(c) for c in conns.channels]
        infers = [oip.stub(c).ModelInfer for c in conns.channels]
        turn = itertools.count()
        batch_dim = name == TRITON_TARGET  # Triton's batching model wants [1, ...] shapes
        convert: Callable[[Any], Any] = (
            (lambda req: oip_request(req, cfg.oip_model, batch_dim=batch_dim))
            if cfg.api == "oip"
            else (lambda r: r)
        )

        def send(req: Any) -> Any:
            i = next(turn) % len(stubs)  # round-robin: the channels alternate workers
            if cfg.api == "oip":
                return infers[i](req, timeout=cfg.timeout_s)
            return stubs[i].Rank(req, timeout=cfg.timeout_s)

        async def reward(req: Any, resp: Any) -> bool:
            if cfg.api == "oip":
                if cfg.oip_model != "rank":
                    return False
                out = oip_outputs(resp)
                if "EVENT_ID" not in out:  # the Triton peer logs no events
                    return False
                event_id, items = out["EVENT_ID"][0], out["ITEM_IDS"]
            else:
                event_id, items = resp.event_id, [i.item_id for i in resp.items]
            if not items or reward_rng.random() >= cfg.reward_fraction:
                return False
            await stubs[next(turn) % len(stubs)].Reward(
                ranker_pb2.RewardRequest(event_id=event_id, item_id=items[0], value=1.0),
                timeout=cfg.timeout_s,
            )
            return True

        after = reward if cfg.reward_fraction > 0 else None
        warm_c = min(max(cfg.concurrency), 16)
        as_history = name == HISTORY_TARGET
        warm = await closed_loop(
            lambda i: convert(factory.make("warm", i, history=as_history)),
            send,
            concurrency=warm_c,
            duration_s=cfg.warmup_s,
            max_requests=cfg.max_requests,
            drain_s=cfg.timeout_s,
        )
        if warm.completed == 0:
            raise ExplorankError(
                f"{name}: no request succeeded during warm-up (errors {dict(warm.error_codes)})"
            )

        async def point(kind: str, value: float) -> None:
            before = scrape_metrics(metrics_url) if metrics_url else None
            tag = f"{kind}{value:g}"

            def make(i: int) -> Any:
                return convert(factory.make(tag, i, history=as_history))

            res: LoadResult
            if kind == "c":
                res = await closed_loop(
                    make,
                    send,
                    concurrency=int(value),
                    duration_s=cfg.duration_s,
                    max_requests=cfg.max_requests,
                    drain_s=cfg.timeout_s + 2,
                    after=after,
                )
            else:
                res = await open_loop(
                    make,
                    send,
                    rate=value,
                    duration_s=cfg.duration_s,
                    max_requests=cfg.max_requests,
                    max_in_flight=cfg.max_in_flight,
                    seed=cfg.seed,
                    drain_s=cfg.timeout_s + 2,
                    after=after,
                )
            stats: dict[str, Any] = {
                "avg_batch_size": None,
                "padding_efficiency": None,
                "batches": None,
            }
            if before is not None and metrics_url:
                stats = window_stats(before, scrape_metrics(metrics_url))
            row = {"target": name, **res.summary(), **stats, "connections": conns.describe()}
            rows.append(row)
            load = f"c={int(value)}" if kind == "c" else f"rate={value:g}/s"
            progress(
                f"{name} {res.mode} {load}: {row['throughput_rps']:.1f} req/s, p50 {_f(row['p50_ms'])} "
                f"p99 {_f(row['p99_ms'])} ms, errors {row['errors']}, avg batch {_f(stats['avg_batch_size'])}, "
                f"padding eff. {_f(stats['padding_efficiency'], 2)}"
            )
            await asyncio.sleep(0.3)  # let stragglers finish before the next window

        for c in cfg.concurrency:
            await point("c", c)
        for r in rates_for(rows):
            await point("r", r)
    finally:
        await conns.close()
    return rows


def _triton_unavailable(config: ServeBenchConfig, python: str) -> str | None:
    """Why the Triton peer cannot run here, or None."""
    import subprocess

    if config.api != "oip" or config.oip_model != "rank":
        return "the Triton peer serves only the Open Inference Protocol model rank (use --api oip)"
    try:
        probe = subprocess.run(
            [python, "-c", "import pytriton, onnxruntime, tokenizers"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run --triton-python {python}: {exc}"
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return (
            f"{python} cannot import nvidia-pytriton, onnxruntime and tokenizers ({last}); "
            "install them in a virtual environment of their own (PyTriton needs numpy<2) "
            "and pass its interpreter as --triton-python"
        )
    return None


def oip_request(req: Any, model: str, *, batch_dim: bool = False) -> Any:
    """The Open Inference Protocol request for a Ranker ``RankRequest``: model ``rank`` (the
    same Rank) or ``encoder`` (its context text alone). ``batch_dim``: every shape gets a
    leading 1 (what a Triton model with ``max_batch_size`` > 0 expects)."""
    import struct

    import explorank.oip as oip

    lead = [1] if batch_dim else []

    def strings(out: Any, name: str, values: list[str]) -> None:
        out.inputs.add(name=name, datatype="BYTES", shape=[*lead, len(values)])
        out.raw_input_contents.append(
            b"".join(struct.pack("<I", len(b)) + b for b in (v.encode() for v in values))
        )

    out = oip.ModelInferRequest(model_name=model)
    if model == "encoder":
        strings(out, "TEXT", [req.context_text])
        return out
    strings(out, "CONTEXT_TEXT", [req.context_text])
    if req.user_id:
        strings(out, "USER_ID", [req.user_id])
    if req.history_item_ids:
        strings(out, "HISTORY_ITEM_IDS", list(req.history_item_ids))
    if req.candidates:
        strings(out, "CANDIDATE_IDS", [c.item_id for c in req.candidates])
    if req.top_k:
        out.inputs.add(name="TOP_K", datatype="INT32", shape=[*lead, 1])
        out.raw_input_contents.append(np.array([req.top_k], dtype="<i4").tobytes())
    return out


def oip_outputs(resp: Any) -> dict[str, list[str]]:
    """The BYTES outputs of a ModelInferResponse (raw contents), decoded."""
    import struct

    out: dict[str, list[str]] = {}
    for tensor, raw in zip(resp.outputs, resp.raw_output_contents, strict=False):
        if tensor.datatype != "BYTES":
            continue
        values, pos = [], 0
        while pos < len(raw):
            (n,) = struct.unpack_from("<I", raw, pos)
            values.append(raw[pos + 4 : pos + 4 + n].decode())
            pos += 4 + n
        out[tensor.name] = values
    return out


def run_serve_bench(
    config: ServeBenchConfig,
    *,
    progress: Callable[[str], None] = _progress,
    logs_dir: Path | None = None,
) -> dict[str, Any]:
    """Run every target and return the report dict (schema in docs/benchmarks.md).

    A target that cannot run here (the torch peer without torch) is listed in ``skipped``;
    one that crashes or never serves is listed in ``failed`` (and the command exits 1)."""
    from explorank.benchmarks.latency.encoder_backends import resolve_model_dir
    from explorank.benchmarks.machine import machine_info
    from explorank.engine.bundle import load_bundle
    from explorank.engine.default_bundle import ensure_default_bundle
    from explorank.engine.tokenizer import Tokenizer

    config.validate()
    t_start = time.perf_counter()
    if config.bundle is None:
        progress(
            "no --bundle: using the default bundle (building it first if missing; that is not bench time)"
        )
    bundle = load_bundle(config.bundle or ensure_default_bundle())
    tokenizer = Tokenizer.from_bundle(bundle)
    factory = RequestFactory(
        [(it.id, it.text) for it in bundle.items],
        candidates=config.candidates,
        seed=config.seed,
        unique=config.unique_contexts,
    )
    profile = load_profile(factory, tokenizer)
    enc_seq = _bucket(int(round(profile["p50"])), bundle.max_seq_length)
    enc_ms: float | None = None
    sweep = "sweep" in config.scenarios
    try:
        if sweep:
            enc_ms = encoder_batch1_ms(bundle, tokenizer, enc_seq, config.threads)
            progress(
                f"encoder batch 1 x seq {enc_seq} (median request, bucketed): p50 {enc_ms:.2f} ms"
            )
    except ExplorankError as exc:
        progress(f"could not measure the encoder's batch-1 latency: {exc}")

    targets = ["explorank"] if config.address else list(config.targets)
    targets = targets if sweep else []
    sections: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    failed: list[dict[str, str]] = []
    derived: list[float] | None = list(config.rates) if config.rates else None

    def rates_for(target_rows: list[dict[str, Any]]) -> list[float]:
        nonlocal derived
        if derived is None:
            peak = max(
                (r["throughput_rps"] for r in target_rows if r["mode"] == "closed"), default=0.0
            )
            derived = [round(f * peak, 1) for f in (0.5, 0.8) if f * peak >= 0.5]
            progress(
                f"open-loop rates (50% and 80% of the first target's peak {peak:.1f} req/s): {derived}"
            )
        return derived

    def skip(target: str, reason: str) -> None:
        """A target that cannot run here: listed under ``skipped`` with the reason."""
        skipped.append({"target": target, "reason": reason})
        progress(f"skipping {target}: {reason}")

    work = Path(tempfile.mkdtemp(prefix="explorank-bench-serve-"))
    try:
        for name in targets:
            if config.address:
                rows += asyncio.run(
                    _measure_target(
                        name,
                        config.address,
                        config.metrics_url,
                        factory,
                        config,
                        rates_for,
                        progress,
                    )
                )
                continue
            port_file = work / f"{name}.port"
            if name == "torch-peer" and config.api != "ranker":
                skip(name, "the torch peer speaks only the Ranker API (use --api ranker)")
                continue
            if name == TRITON_TARGET:
                python = config.triton_python or sys.executable
                why = _triton_unavailable(config, python)
                if why:
                    skip(name, why)
                    continue
                mport = free_port()
                server = ManagedServer(
                    name,
                    triton_peer_command(python, bundle.path, port_file, mport, config.threads),
                    work,
                    port_file,
                    metrics_port=mport,
                )
            elif name == "torch-peer":
                missing = [
                    m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None
                ]
                model_dir, note = resolve_model_dir(
                    bundle, config.model_dir, is_default=config.bundle is None
                )
                if missing or model_dir is None:
                    skip(
                        name,
                        f"{', '.join(missing)} not installed (pip install 'explorank[export]')"
                        if missing
                        else note,
                    )
                    continue
                server = ManagedServer(
                    name,
                    peer_command(bundle.path, model_dir, port_file, config.threads),
                    work,
                    port_file,
                )
            else:
                mport = free_port()
                extra = ["--threads", str(config.threads)] if config.threads else []
                workers = workers_of(name)
                if workers is not None:  # each worker takes its share of the CPUs
                    extra = ["--workers", str(workers)]
                cmd = explorank_command(
                    bundle.path,
                    work,
                    name,
                    port_file,
                    mport,
                    max_batch_size=1 if name == "explorank-nobatch" else None,
                    extra=extra,
                )
                env = TARGET_ENV.get(name)
                server = ManagedServer(name, cmd, work, port_file, metrics_port=mport, env=env)
            t0 = time.perf_counter()
            progress(f"starting {name} ...")
            try:
                with server:
                    address = server.start(config.startup_timeout_s)
                    progress(
                        f"{name} serving on {address} (started in {time.perf_counter() - t0:.1f} s)"
                    )
                    rows += asyncio.run(
                        _measure_target(
                            name, address, server.metrics_url, factory, config, rates_for, progress
                        )
                    )
            except ExplorankError as exc:
                failed.append({"target": name, "reason": str(exc).splitlines()[0]})
                progress(f"{name} failed: {exc}")
        for scenario in ("overload", "soak", "greedy"):
            if scenario in config.scenarios:
                try:
                    sections[scenario] = SCENARIO_RUNNERS[scenario](
                        config, bundle.path, factory, work, progress
                    )
                except ExplorankError as exc:
                    failed.append(
                        {"target": f"explorank-{scenario}", "reason": str(exc).splitlines()[0]}
                    )
                    progress(f"{scenario} failed: {exc}")
    finally:
        if logs_dir is not None:
            logs_dir.mkdir(parents=True, exist_ok=True)
            for log in work.glob("*.log"):
                shutil.copy(log, logs_dir / log.name)
        shutil.rmtree(work, ignore_errors=True)

    return {
        "kind": "serve",
        "machine": machine_info(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
        | {"bundle": str(bundle.path), "model_name": bundle.model_name, "rates_used": derived},
        "load": {
            "candidates": factory.candidates,
            "context_tokens": profile,
            "unique_contexts": config.unique_contexts,
            "duration_s": config.duration_s,
            "max_requests": config.max_requests,
        },
        "skipped": skipped,
        "failed": failed,
        "rows": rows,
        "headline": serve_headline(rows, config.concurrency, enc_ms, enc_seq),
        **sections,
        "elapsed_s": time.perf_counter() - t_start,
    }
