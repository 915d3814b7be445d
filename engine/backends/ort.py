"""ONNX Runtime backend: one InferenceSession, provider chosen by availability and config.

Provider policy (``provider=``):

- ``"cpu"``: CPUExecutionProvider.
- ``"cuda"``: CUDA EP, with IO binding (inputs bound from host, output bound on the
  device, one copy back). A :class:`ConfigError` when there is no GPU or ORT ends up on
  CPU anyway. :meth:`OrtBackend.enable_cuda_graphs` adds CUDA graphs for a planned set of
  shapes (:mod:`explorank.engine.backends.cuda_graphs`).
- ``"tensorrt"``: ORT's TensorRT EP (CUDA EP and CPU behind it for unsupported nodes),
  with an engine cache and one optimisation profile spanning ``1..max_batch_size`` x
  ``1..max_seq_length``. ``precision="fp16"`` turns on TensorRT FP16.
- ``"auto"``: TensorRT EP -> CUDA EP -> CPU, but GPU providers are only tried when a GPU
  is really present (:func:`cuda_device_count`), and the TensorRT EP only when the
  ``tensorrt`` package is installed: ``onnxruntime-gpu`` lists them as available on any
  machine and silently falls back to CPU, so the provider reported here is always the
  one read back from ``session.get_providers()``.

Precision: ``fp32`` serves ``encoder.onnx`` (on the CUDA EP with TF32 off: fp32 stays the
accuracy reference); ``int8`` serves ``encoder.int8.onnx`` (dynamically quantised, CPU only:
its integer kernels exist for CPU); ``fp16`` is the bundle's ``encoder.fp16.onnx`` on the
CUDA EP, or the fp32 graph under the TensorRT EP with FP16 enabled (GPU only; the factory
:func:`explorank.engine.backends.create_backend` picks the model for the provider).

Session settings: intra-op threads = CPUs actually available to the process (cgroup /
affinity aware, :mod:`explorank.engine.cpu`), inter-op 1 and sequential execution (a
BERT graph is a chain; parallel branches only add scheduling overhead), all graph
optimisations (the bundle is already fused; the rest is cheap constant folding).

The CUDA and TensorRT-EP paths are untested on hardware in this repository's CI (no GPU
was available when they were written); the CPU path is covered by unit tests.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from explorank.engine.backends.base import (
    PROVIDERS,
    Backend,
    check_batch,
    cuda_device_count,
    tensorrt_installed,
)
from explorank.engine.backends.cuda_graphs import GraphPlan, run_planned
from explorank.engine.cpu import available_cpus
from explorank.errors import BundleError, ConfigError

__all__ = ["OrtBackend", "ORT_PROVIDER_NAMES"]

log = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"
ORT_PROVIDER_NAMES = {"cpu": CPU_EP, "cuda": CUDA_EP, "tensorrt": TRT_EP}
_KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_NP_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
#: ONNX Runtime's exception types for a model file that does not parse.
_CORRUPT_MODEL_ERRORS = ("InvalidProtobuf", "InvalidGraph")


def _default_trt_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "explorank" / "ort-trt-cache"


class OrtBackend(Backend):
    """An ONNX Runtime encoder session. See the module docstring for the provider policy."""

    name = "onnxruntime"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        input_names: Sequence[str],
        output_name: str,
        embedding_dim: int,
        precision: str = "fp32",
        provider: str = "auto",
        intra_op_threads: int | None = None,
        max_batch_size: int = 64,
        max_seq_length: int = 128,
        trt_cache_dir: str | os.PathLike[str] | None = None,
        variant: str | None = None,
        allow_spinning: bool | None = None,
    ) -> None:
        import onnxruntime as ort

        if provider not in PROVIDERS:
            raise ConfigError(f"provider must be one of {', '.join(PROVIDERS)}; got {provider!r}")
        if precision not in ("fp32", "int8", "fp16"):
            raise ConfigError(f"precision must be fp32, int8 or fp16; got {precision!r}")
        if intra_op_threads is not None and int(intra_op_threads) < 1:
            raise ConfigError(f"intra_op_threads must be >= 1 (or unset); got {intra_op_threads}")
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise BundleError(f"encoder model {self.model_path} is missing")
        self.precision = precision
        #: Which INT8 encoder ("kind:name") for precision int8, else None.
        self.variant = variant
        self.embedding_dim = int(embedding_dim)
        self.intra_op_threads = int(intra_op_threads) if intra_op_threads else available_cpus()
        #: ONNX Runtime's ``session.intra_op.allow_spinning`` (None: its default, on)
        self.allow_spinning = allow_spinning
        self._output = output_name
        self._lock = threading.Lock()
        self._closed = False
        self._graphs: _CudaGraphs | None = None
        self._graph_mode = "off"
        #: the session with a thread per CPU of a ``serve --workers`` group (enable_burst)
        self._burst: Any = None
        self._peers: Any = None
        self.burst_threads = 0
        self.burst_batches = 0
        #: sessions computing batches side by side under concurrency (enable_lanes)
        self._lanes: list[Any] = []
        self._lane_peers: list[Any] = []
        self._lane_of = threading.local()
        self.lanes = 1
        self.lane_threads = 0
        self.lane_batches = 0
        self.cuda_graphs = "off (not enabled)"

        gpus = cuda_device_count()
        attempts = self._provider_attempts(
            provider,
            precision,
            available=ort.get_available_providers(),
            gpus=gpus,
            max_batch_size=max_batch_size,
            max_seq_length=max_seq_length,
            trt_cache_dir=Path(trt_cache_dir) if trt_cache_dir else _default_trt_cache(),
            input_names=input_names,
            trt_usable=tensorrt_installed(),
        )
        if gpus and any(p != [CPU_EP] for p in attempts):
            _preload_cuda_libraries(ort)
        opts = self._session_options()

        session = None
        last_error: Exception | None = None
        for i, providers in enumerate(attempts):
            try:
                session = ort.InferenceSession(str(self.model_path), opts, providers=providers)
            except Exception as exc:  # ORT raises its own Fail/RuntimeException types
                last_error = exc
                names = [p[0] if isinstance(p, tuple) else p for p in providers]
                if i + 1 < len(attempts):
                    log.warning(
                        "onnxruntime: providers %s failed (%s); trying the next", names, exc
                    )
                continue
            break
        if session is None:
            if type(last_error).__name__ in _CORRUPT_MODEL_ERRORS:
                raise BundleError(
                    f"encoder model {self.model_path} is not a valid ONNX model (truncated or "
                    f"corrupted?): {last_error}"
                ) from last_error
            raise ConfigError(
                f"cannot create an ONNX Runtime session for {self.model_path} with provider={provider}: {last_error}"
            ) from last_error
        self._session: Any = session
        self.providers: list[str] = list(session.get_providers())
        self.provider = self.providers[0]
        self._check_provider(provider, precision)
        self._io_binding = self.provider == CUDA_EP

        graph_inputs = {i.name: i for i in session.get_inputs()}
        names = list(input_names) or list(graph_inputs)
        for name in names:
            if name not in graph_inputs:
                raise BundleError(
                    f"manifest lists encoder input {name!r} but {self.model_path.name} has inputs {sorted(graph_inputs)}"
                )
            if name not in _KNOWN_INPUTS:
                raise BundleError(
                    f"encoder input {name!r} is not one the engine can feed ({', '.join(_KNOWN_INPUTS)})"
                )
        for name in graph_inputs:
            if name not in names:
                raise BundleError(
                    f"{self.model_path.name} needs input {name!r}; add it to the manifest's encoder.inputs"
                )
        self._inputs = [(n, _NP_TYPES.get(graph_inputs[n].type, np.int64)) for n in names]
        outputs = [o.name for o in session.get_outputs()]
        if output_name not in outputs:
            raise BundleError(
                f"manifest names encoder output {output_name!r} but {self.model_path.name} has {outputs}"
            )
        log.info(
            "onnxruntime %s: %s precision=%s provider=%s threads=%d",
            ort.__version__,
            self.model_path.name,
            precision,
            self.provider,
            self.intra_op_threads,
        )

    def _session_options(self) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only; provider fallbacks are reported by us
        if self.allow_spinning is not None:
            opts.add_session_config_entry(
                "session.intra_op.allow_spinning", "1" if self.allow_spinning else "0"
            )
        return opts

    @staticmethod
    def cuda_options(precision: str, *, cuda_graph: bool = False) -> dict[str, str]:
        """CUDA EP options: TF32 off for fp32 (it would round fp32 MatMuls to a 10-bit
        mantissa), and ``enable_cuda_graph`` for the graph session."""
        opts = {"use_tf32": "0" if precision == "fp32" else "1"}
        if cuda_graph:
            opts["enable_cuda_graph"] = "1"
        return opts

    @staticmethod
    def _provider_attempts(
        provider: str,
        precision: str,
        *,
        available: Sequence[str],
        gpus: int,
        max_batch_size: int,
        max_seq_length: int,
        trt_cache_dir: Path,
        input_names: Sequence[str] = (),
        trt_usable: bool = True,
    ) -> list[list[Any]]:
        """Lists of providers to try in order (a pure function of its inputs, for tests).

        ``trt_usable``: whether TensorRT's libraries are installed; ``auto`` tries the
        TensorRT EP only then."""
        wants_gpu = provider in ("cuda", "tensorrt")
        if precision == "fp16" and provider == "cpu":
            raise ConfigError(
                "precision=fp16 runs on an NVIDIA GPU only (the CUDA or TensorRT execution "
                "provider); set backend.provider = auto or cuda, or backend.precision = auto, "
                "fp32 or int8 for the CPU"
            )
        if precision == "int8" and wants_gpu:
            raise ConfigError(
                f"precision=int8 runs on CPU only (encoder.int8.onnx uses CPU integer kernels); "
                f"use provider=cpu, or precision=fp32/fp16 with provider={provider}"
            )
        if wants_gpu and gpus == 0:
            raise ConfigError(
                f"provider={provider} needs an NVIDIA GPU, but none is usable here "
                "(no CUDA driver or device, or CUDA_VISIBLE_DEVICES hides them); use provider=cpu or auto"
            )
        if wants_gpu and ORT_PROVIDER_NAMES[provider] not in available:
            raise ConfigError(
                f"provider={provider}: this onnxruntime build lacks {ORT_PROVIDER_NAMES[provider]} "
                f"(available: {', '.join(available)}); install onnxruntime-gpu"
            )
        if precision == "fp16" and provider == "auto" and gpus == 0:
            raise ConfigError(
                "precision=fp16 needs an NVIDIA GPU, but none is usable here (no CUDA driver or "
                "device, or CUDA_VISIBLE_DEVICES hides them); set backend.precision = auto, "
                "fp32 or int8"
            )
        if (
            precision == "fp16"
            and provider == "auto"
            and not ((TRT_EP in available and trt_usable) or CUDA_EP in available)
        ):
            raise ConfigError(
                f"precision=fp16 needs onnxruntime-gpu (this onnxruntime has "
                f"{', '.join(available)}); pip install 'explorank[gpu]', or set "
                "backend.precision = auto, fp32 or int8"
            )
        names = list(input_names) or ["input_ids", "attention_mask"]
        shapes_min = ",".join(f"{n}:1x1" for n in names)
        shapes_max = ",".join(f"{n}:{max_batch_size}x{max_seq_length}" for n in names)
        trt_opts = {
            "trt_fp16_enable": precision == "fp16",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(trt_cache_dir),
            "trt_timing_cache_enable": True,
            "trt_profile_min_shapes": shapes_min,
            "trt_profile_max_shapes": shapes_max,
            "trt_profile_opt_shapes": shapes_max,
        }
        trt = (TRT_EP, trt_opts)
        cuda = (CUDA_EP, OrtBackend.cuda_options(precision))
        if provider == "cpu":
            return [[CPU_EP]]
        if provider == "cuda":
            return [[cuda, CPU_EP]]
        if provider == "tensorrt":
            trt_cache_dir.mkdir(parents=True, exist_ok=True)
            return [[trt, cuda, CPU_EP]]
        # auto
        if precision == "int8" or gpus == 0:
            return [[CPU_EP]]
        attempts: list[list[Any]] = []
        if TRT_EP in available and trt_usable:
            trt_cache_dir.mkdir(parents=True, exist_ok=True)
            attempts.append([trt, cuda, CPU_EP])
        if CUDA_EP in available and not (precision == "fp16" and attempts):
            # fp16 on the TensorRT EP is the fp32 graph: no fallback to the CUDA EP with it
            attempts.append([cuda, CPU_EP])
        if precision != "fp16":
            attempts.append([CPU_EP])
        return attempts

    def _check_provider(self, requested: str, precision: str) -> None:
        """Fail loudly where ORT silently fell back from what was explicitly asked for."""
        if requested in ("cuda", "tensorrt") and self.provider != ORT_PROVIDER_NAMES[requested]:
            raise ConfigError(
                f"provider={requested} was requested but ONNX Runtime runs on {self.provider} "
                f"(providers in use: {self.providers}); check the CUDA/cuDNN/TensorRT libraries"
            )
        if precision == "fp16" and self.provider not in (TRT_EP, CUDA_EP):
            raise ConfigError(
                f"precision=fp16 runs on the GPU, but ONNX Runtime runs on {self.provider} "
                f"(providers in use: {self.providers}); check the CUDA/cuDNN libraries"
            )
        if requested == "auto" and self.provider == CPU_EP and cuda_device_count() > 0:
            log.warning("onnxruntime: a GPU is present but the session runs on CPU")

    def _feeds(self, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        for name, dtype in self._inputs:
            if name == "input_ids":
                arr = ids
            elif name == "attention_mask":
                arr = mask
            else:  # token_type_ids: single-segment inputs
                arr = np.zeros_like(ids)
            feeds[name] = arr if arr.dtype == dtype else arr.astype(dtype)
        return feeds

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        ids, mask = check_batch(input_ids, attention_mask)
        feeds = self._feeds(ids, mask)
        session = self._session
        if session is None:
            raise RuntimeError("the ONNX Runtime backend is closed")
        out = self._run_graphs(feeds) if self._graphs is not None else None
        if out is None:
            if self._io_binding:
                out = self._run_bound(session, feeds)
            else:
                out = self._run_cpu(session, feeds)
        out = np.asarray(out, dtype=np.float32)
        if out.shape != (ids.shape[0], self.embedding_dim):
            raise BundleError(
                f"encoder returned shape {out.shape}, expected ({ids.shape[0]}, {self.embedding_dim}); "
                "the manifest's embedding_dim or output name is wrong"
            )
        return out

    def _run_cpu(self, session: Any, feeds: dict[str, np.ndarray]) -> Any:
        """One batch on the CPU: on this thread's lane (bind_lane) while batches overlap
        (enable_lanes),
        else on the session with every thread — or on the burst session while the worker
        group's work is serial too (enable_burst)."""
        lane = None
        lanes, lane_peers = self._lanes, self._lane_peers
        i = getattr(self._lane_of, "index", None)
        if lanes and i is not None and i < len(lanes):
            lane = lane_peers[i]
            if not lane.others_idle():
                session = lanes[i]
                self.lane_batches += 1
            lane.started()
        burst, peers = self._burst, self._peers
        try:
            if peers is not None:
                if session is self._session and burst is not None and peers.others_idle():
                    session = burst
                    self.burst_batches += 1
                peers.started()
            try:
                return session.run([self._output], feeds)[0]
            finally:
                if peers is not None:
                    peers.ended()
        finally:
            if lane is not None:
                lane.ended()

    def bind_lane(self, index: int) -> None:
        """Make the calling thread lane ``index``: the batcher's executor thread ``i`` is
        lane ``i`` (``DynamicBatcher(lane_init=...)``). A thread bound to no lane runs every
        batch on the session with every thread and takes no part in the lanes' rule."""
        self._lane_of.index = int(index)

    def _run_bound(self, session: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
        binding = session.io_binding()
        for name, arr in feeds.items():
            binding.bind_cpu_input(name, arr)
        binding.bind_output(self._output, "cuda")
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    # ------------------------------------------------------------------ CUDA graphs
    def enable_cuda_graphs(self, plan: GraphPlan, mode: str = "auto") -> str:
        """Serve the shapes of ``plan`` from CUDA graphs; returns a status line (also kept in
        ``self.cuda_graphs`` and :meth:`describe`).

        A second session with ``enable_cuda_graph`` runs the planned shapes (each captured
        on its first run, i.e. at warm-up); this session keeps running any other shape.
        ``mode``: ``on`` raises :class:`ConfigError` when graphs cannot be used here,
        ``auto`` logs why and serves without them, ``off`` does nothing."""
        import onnxruntime as ort

        if mode not in ("auto", "on", "off"):
            raise ConfigError(f"backend.gpu.cuda_graphs must be auto, on or off; got {mode!r}")
        self._graph_mode = mode
        if mode == "off":
            self.cuda_graphs = "off (backend.gpu.cuda_graphs = off)"
            return self.cuda_graphs
        problem = None
        if self.provider != CUDA_EP:
            problem = f"the encoder runs on {self.provider}, not the CUDA execution provider"
        elif not len(plan):
            problem = "the plan has no shapes"
        graphs = None
        if problem is None:
            try:
                session = ort.InferenceSession(
                    str(self.model_path),
                    self._session_options(),
                    providers=[(CUDA_EP, self.cuda_options(self.precision, cuda_graph=True))],
                )
                graphs = _CudaGraphs(session, self._inputs, self._output, self.embedding_dim, plan)
            except Exception as exc:  # ORT refuses graphs for graphs with CPU nodes, etc.
                problem = f"ONNX Runtime cannot capture this encoder: {exc}"
        if problem is not None:
            if mode == "on":
                raise ConfigError(f"backend.gpu.cuda_graphs = on: {problem}")
            log.warning("CUDA graphs off: %s", problem)
            self.cuda_graphs = f"off: {problem}"
            return self.cuda_graphs
        with self._lock:
            self._graphs = graphs
        self.cuda_graphs = (
            f"on: {len(plan)} shapes (lengths {list(plan.lengths)}, batch sizes up to "
            f"{max(max(s) for s in plan.sizes)}), captured at first use"
        )
        log.info("CUDA graphs %s", self.cuda_graphs)
        return self.cuda_graphs

    def _run_graphs(self, feeds: dict[str, np.ndarray]) -> np.ndarray | None:
        with self._lock:
            graphs = self._graphs
            if graphs is None:
                return None
            try:
                return run_planned(graphs.plan, feeds, graphs.run)
            except Exception as exc:
                if self._graph_mode == "on":
                    raise RuntimeError(
                        f"CUDA graph run failed (backend.gpu.cuda_graphs = on): {exc}"
                    ) from exc
                log.warning("CUDA graph run failed (%s); serving without CUDA graphs", exc)
                self._graphs = None
                self.cuda_graphs = f"off: a graph run failed ({exc})"
                return None

    def enable_burst(self, cpus: Sequence[int], peers: Any) -> bool:
        """Hold a second CPU session with one thread per CPU in ``cpus`` and run a batch on
        it whenever ``peers.others_idle()`` (a :class:`~explorank.engine.workers.PeerActivity`:
        the group's work is serial); ``peers.started()``/``ended()`` are told
        about every batch, so that the other workers can tell in turn. The session's threads
        are created with this thread's affinity widened to ``cpus`` for the moment, so they
        may run where the process itself is not pinned. Returns False, and changes nothing,
        unless this is a CPU session with fewer threads than ``cpus``."""
        import onnxruntime as ort

        if self.provider != CPU_EP or len(cpus) <= self.intra_op_threads or self._closed:
            return False
        opts = self._session_options()
        opts.intra_op_num_threads = len(cpus)
        # Its threads stop spinning when a batch ends: they run on the other workers' cores,
        # which those may need next (one client alternating between two workers: 40-42
        # req/s, 24-38 with the threads left spinning; a lone client on one connection pays
        # ~5 % to wake them).
        opts.add_session_config_entry("session.force_spinning_stop", "1")
        pinned = hasattr(os, "sched_getaffinity")
        mine = os.sched_getaffinity(0) if pinned else None
        if pinned:
            os.sched_setaffinity(0, cpus)
        try:
            burst = ort.InferenceSession(str(self.model_path), opts, providers=[CPU_EP])
        finally:
            if mine is not None:
                os.sched_setaffinity(0, mine)
        self._burst, self._peers = burst, peers
        self.burst_threads = len(cpus)
        log.info(
            "onnxruntime: burst session with %d threads (CPUs %s) for when the group's work "
            "is serial",
            len(cpus),
            ",".join(map(str, cpus)),
        )
        return True

    def enable_lanes(self, lanes: int, *, quiet_s: float = 1.0) -> int:
        """Compute up to ``lanes`` batches side by side, each on its own session with an
        equal share of this session's threads, while batches overlap (concurrent load);
        while they do not (one client; :class:`~explorank.engine.workers.PeerActivity` with
        ``quiet_s`` decides, as between workers), a batch runs on this session with every
        thread. Returns the lanes in use: 1 (nothing changed) unless this is a CPU session
        with at least two threads; at most one lane per thread.

        Why: on two cores under concurrent load two one-thread batches side by side served
        more than one two-thread batch at a time (docs/operations.md, "Encoder lanes"): a
        one-thread session never waits at a barrier for a thread the event loop or the
        tokenizer has just taken its core from. A lone batch, though, is faster with every
        thread, hence the rule."""
        import onnxruntime as ort

        from explorank.engine.workers import PeerActivity

        lanes = min(int(lanes), self.intra_op_threads)
        if self.provider != CPU_EP or lanes < 2 or self._closed or self._lanes:
            return self.lanes
        threads = self.intra_op_threads // lanes
        opts = self._session_options()
        opts.intra_op_num_threads = threads
        if threads > 1:  # an idle lane's threads must not spin on a core the other one needs
            opts.add_session_config_entry("session.force_spinning_stop", "1")
        sessions = [
            ort.InferenceSession(str(self.model_path), opts, providers=[CPU_EP])
            for _ in range(lanes)
        ]
        self._lane_peers = PeerActivity.in_process(lanes, quiet_s=quiet_s)
        self._lanes = sessions
        self.lanes, self.lane_threads = lanes, threads
        log.info(
            "onnxruntime: %d encoder lanes of %d thread%s each while batches overlap; a "
            "batch alone runs with all %d threads",
            lanes,
            threads,
            "" if threads == 1 else "s",
            self.intra_op_threads,
        )
        return lanes

    def extra_sessions(self) -> list[tuple[str, Any, bool]]:
        """(label, encode function, every shape?) of each session besides the main one, for
        the warm-up; the functions tell no peer and count no batch. The burst session runs
        every shape; a lane one batch per length (a first run of a shape costs a one-thread
        CPU session 0-20 % more than the next — 6.4 vs 5.1 ms at 1 x 16, 1.31 vs 1.18 s at
        32 x 128 on the AVX2 VM — so warming every shape there would only delay serving)."""
        out: list[tuple[str, Any, bool]] = [
            (f"encoder lane {i + 1} of {len(self._lanes)}", partial(self._warm, s), False)
            for i, s in enumerate(self._lanes)
        ]
        if self._burst is not None:
            out.append(("the burst session", self.warm_burst, True))
        return out

    def _warm(self, session: Any, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        ids, mask = check_batch(input_ids, attention_mask)
        return np.asarray(session.run([self._output], self._feeds(ids, mask))[0], dtype=np.float32)

    def warm_burst(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray | None:
        """Run one batch on the burst session (warm-up: ONNX Runtime's first run of each
        shape), telling no peer and counting no burst batch; None without a burst session."""
        burst = self._burst
        if burst is None:
            return None
        return self._warm(burst, input_ids, attention_mask)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._session = None
                self._burst = None
                self._lanes = []
                self._graphs = None

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        info = super().describe()
        info.update(
            {
                "providers": list(self.providers),
                "model": self.model_path.name,
                **({"int8_variant": self.variant} if self.variant else {}),
                "intra_op_threads": self.intra_op_threads,
                "inter_op_threads": 1,
                "intra_op_spinning": "default (on)"
                if self.allow_spinning is None
                else ("on" if self.allow_spinning else "off"),
                "graph_optimization": "ORT_ENABLE_ALL",
                "io_binding": self._io_binding,
                "onnxruntime_version": ort.__version__,
            }
        )
        if self.lanes > 1:
            info["lanes"] = self.lanes
            info["lane_threads"] = self.lane_threads
            info["lane_batches"] = self.lane_batches
        if self.burst_threads:
            info["burst_threads"] = self.burst_threads
            info["burst_batches"] = self.burst_batches
        if self._io_binding:
            info["cuda_graphs"] = self.cuda_graphs
            graphs = self._graphs
            if graphs is not None:
                info["cuda_graph_plan"] = graphs.plan.describe()
                info["cuda_graphs_captured"] = len(graphs.slots)
        return info


class _GraphSlot:
    """One planned shape: device buffers bound once, and the run option naming its graph."""

    __slots__ = ("binding", "inputs", "output", "run_options")

    def __init__(self, binding: Any, inputs: dict[str, Any], output: Any, run_options: Any):
        self.binding = binding
        self.inputs = inputs
        self.output = output
        self.run_options = run_options


class _CudaGraphs:
    """The graph session and a slot per planned shape (created on first use, when ORT
    captures that shape's graph). Calls are serialised by the backend's lock."""

    def __init__(
        self,
        session: Any,
        inputs: Sequence[tuple[str, Any]],
        output: str,
        embedding_dim: int,
        plan: GraphPlan,
    ) -> None:
        self.session = session
        self.plan = plan
        self.slots: dict[tuple[int, int], _GraphSlot] = {}
        self._inputs = list(inputs)
        self._output = output
        self._dim = embedding_dim
        self._ids = {shape: i + 1 for i, shape in enumerate(plan.shapes)}

    def _slot(self, shape: tuple[int, int]) -> _GraphSlot:
        import onnxruntime as ort

        slot = self.slots.get(shape)
        if slot is not None:
            return slot
        binding = self.session.io_binding()
        values = {}
        for name, dtype in self._inputs:
            value = ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, "cuda", 0)
            binding.bind_ortvalue_input(name, value)
            values[name] = value
        out = ort.OrtValue.ortvalue_from_shape_and_type(
            (shape[0], self._dim), np.float32, "cuda", 0
        )
        binding.bind_ortvalue_output(self._output, out)
        run_options = ort.RunOptions()
        run_options.add_run_config_entry("gpu_graph_id", str(self._ids[shape]))
        slot = self.slots[shape] = _GraphSlot(binding, values, out, run_options)
        return slot

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """``feeds`` of exactly a planned shape: copy them into the slot's buffers (one
        host-to-device copy each), replay (or, the first time, capture) its graph, copy the
        output back once."""
        shape = tuple(next(iter(feeds.values())).shape)
        slot = self._slot((int(shape[0]), int(shape[1])))
        for name, _ in self._inputs:
            slot.inputs[name].update_inplace(feeds[name])
        self.session.run_with_iobinding(slot.binding, slot.run_options)
        return np.asarray(slot.binding.copy_outputs_to_cpu()[0])


def _preload_cuda_libraries(ort: Any) -> None:
    """Let ONNX Runtime find CUDA/cuDNN from the ``nvidia-*`` pip packages when they are not
    on the loader's path (``onnxruntime.preload_dlls``, ORT >= 1.21). Its messages go to the
    debug log: a missing library shows up as the session's own error."""
    import contextlib
    import io

    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            preload(msvc=False)
    except Exception as exc:  # never fatal: the session reports what is really missing
        log.debug("onnxruntime.preload_dlls failed: %s", exc)
    if buf.getvalue().strip():
        log.debug("onnxruntime.preload_dlls: %s", buf.getvalue().strip())
