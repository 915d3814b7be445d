"""ONNX Runtime backend: one InferenceSession, provider chosen by availability and config.

Provider policy (``provider=``):

- ``"cpu"``: CPUExecutionProvider.
- ``"cuda"``: CUDA EP, with IO binding (inputs bound from host, output bound on the
  device, one copy back). A :class:`ConfigError` when there is no GPU or ORT ends up on
  CPU anyway.
- ``"tensorrt"``: ORT's TensorRT EP (CUDA EP and CPU behind it for unsupported nodes),
  with an engine cache and one optimisation profile spanning ``1..max_batch_size`` x
  ``1..max_seq_length``. ``precision="fp16"`` turns on TensorRT FP16.
- ``"auto"``: TensorRT EP -> CUDA EP -> CPU, but GPU providers are only tried when a GPU
  is really present (:func:`cuda_device_count`): ``onnxruntime-gpu`` lists them as
  available on any machine and silently falls back to CPU, so the provider reported
  here is always the one read back from ``session.get_providers()``.

Precision: ``fp32`` serves ``encoder.onnx``; ``int8`` serves ``encoder.int8.onnx``
(dynamically quantised, CPU only: its integer kernels exist for CPU); ``fp16`` means
the fp32 graph under the TensorRT EP with FP16 enabled (GPU only).

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
from pathlib import Path
from typing import Any

import numpy as np

from explorank.engine.backends.base import PROVIDERS, Backend, check_batch, cuda_device_count
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
        self._output = output_name
        self._lock = threading.Lock()
        self._closed = False

        attempts = self._provider_attempts(
            provider,
            precision,
            available=ort.get_available_providers(),
            gpus=cuda_device_count(),
            max_batch_size=max_batch_size,
            max_seq_length=max_seq_length,
            trt_cache_dir=Path(trt_cache_dir) if trt_cache_dir else _default_trt_cache(),
            input_names=input_names,
        )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only; provider fallbacks are reported by us

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
    ) -> list[list[Any]]:
        """Lists of providers to try in order (a pure function of its inputs, for tests)."""
        wants_gpu = provider in ("cuda", "tensorrt")
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
        if precision == "fp16" and provider not in ("tensorrt", "auto"):
            raise ConfigError(
                "precision=fp16 with onnxruntime needs the TensorRT execution provider on a GPU; "
                "set provider=tensorrt (or backend=tensorrt with a bundle plan), or precision=fp32"
            )
        if precision == "fp16" and provider == "auto" and (gpus == 0 or TRT_EP not in available):
            raise ConfigError(
                "precision=fp16 needs a GPU with TensorRT (none usable here); use precision=fp32 or int8 on CPU"
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
        if provider == "cpu":
            return [[CPU_EP]]
        if provider == "cuda":
            return [[CUDA_EP, CPU_EP]]
        if provider == "tensorrt":
            trt_cache_dir.mkdir(parents=True, exist_ok=True)
            return [[trt, CUDA_EP, CPU_EP]]
        # auto
        if precision == "int8" or gpus == 0:
            return [[CPU_EP]]
        attempts: list[list[Any]] = []
        if TRT_EP in available:
            trt_cache_dir.mkdir(parents=True, exist_ok=True)
            attempts.append([trt, CUDA_EP, CPU_EP])
        if precision != "fp16" and CUDA_EP in available:
            attempts.append([CUDA_EP, CPU_EP])
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
        if precision == "fp16" and self.provider != TRT_EP:
            raise ConfigError(
                f"precision=fp16 needs the TensorRT execution provider, but ONNX Runtime runs on {self.provider}"
            )
        if requested == "auto" and self.provider == CPU_EP and cuda_device_count() > 0:
            log.warning("onnxruntime: a GPU is present but the session runs on CPU")

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        ids, mask = check_batch(input_ids, attention_mask)
        feeds: dict[str, np.ndarray] = {}
        for name, dtype in self._inputs:
            if name == "input_ids":
                arr = ids
            elif name == "attention_mask":
                arr = mask
            else:  # token_type_ids: single-segment inputs
                arr = np.zeros_like(ids)
            feeds[name] = arr if arr.dtype == dtype else arr.astype(dtype)
        session = self._session
        if session is None:
            raise RuntimeError("the ONNX Runtime backend is closed")
        if self._io_binding:
            out = self._run_bound(session, feeds)
        else:
            out = session.run([self._output], feeds)[0]
        out = np.asarray(out, dtype=np.float32)
        if out.shape != (ids.shape[0], self.embedding_dim):
            raise BundleError(
                f"encoder returned shape {out.shape}, expected ({ids.shape[0]}, {self.embedding_dim}); "
                "the manifest's embedding_dim or output name is wrong"
            )
        return out

    def _run_bound(self, session: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
        binding = session.io_binding()
        for name, arr in feeds.items():
            binding.bind_cpu_input(name, arr)
        binding.bind_output(self._output, "cuda")
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._session = None

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
                "graph_optimization": "ORT_ENABLE_ALL",
                "io_binding": self._io_binding,
                "onnxruntime_version": ort.__version__,
            }
        )
        return info
