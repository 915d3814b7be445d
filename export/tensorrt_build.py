"""TensorRT FP16 engine (``encoder.plan``) built with the TensorRT 10 Python API.

**Untested on hardware**: written against the documented TensorRT 10 Python API
(``Builder``/``OnnxParser``/``IBuilderConfig``/``IOptimizationProfile``, ``execute_async_v3``)
on a machine without a GPU or TensorRT. ``--tensorrt auto`` skips it (with a logged reason)
where either is missing; ``--tensorrt on`` then fails with :class:`ExportError`.

Why the Python API and not ORT's TensorRT execution provider cache: the plan is then a plain
TensorRT engine that the native backend deserialises directly, the optimization profiles are
explicit (one per sequence-length bucket, matching the engine's length buckets), and precision
constraints can be set per layer.

Build details:

* input: the **unfused** fp32 ONNX export (ORT's fused contrib ops such as ``Attention`` are not
  TensorRT ops; TensorRT does its own fusions);
* FP16 with ``OBEY_PRECISION_CONSTRAINTS``; normalisation layers (LayerNorm, opset 17
  ``LayerNormalization`` -> ``INormalizationLayer``) and reductions (pooling, L2 norm) are pinned
  to fp32, because fp16 variance computation can overflow on long sequences;
* one optimization profile per bucket ``L`` in :data:`DEFAULT_BUCKETS` (capped at
  ``max_seq_length``): sequence ``(previous bucket + 1) .. L`` (opt ``L``), batch 1 / 8 / 64;
* parity: the plan's embeddings vs the fp32 ONNX Runtime embeddings, min cosine >= 0.995.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from explorank.errors import ExportError, InvalidArgumentError

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = (16, 32, 64, 128)
DEFAULT_BATCH = (1, 8, 64)  # min, opt, max
MODES = ("auto", "on", "off")


def _gpu_count() -> tuple[int, str]:
    """Number of CUDA devices and how it was found (cuda-python, then torch)."""
    for mod in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            cudart = __import__(mod, fromlist=["cudaGetDeviceCount"])
            err, count = cudart.cudaGetDeviceCount()
            return (int(count) if int(err) == 0 else 0), mod
        except Exception:  # not installed, or no driver
            continue
    try:
        import torch

        return (torch.cuda.device_count() if torch.cuda.is_available() else 0), "torch.cuda"
    except Exception:
        return 0, "none"


def tensorrt_status() -> tuple[bool, str]:
    """``(available, reason)``: TensorRT importable and at least one CUDA GPU visible."""
    try:
        import tensorrt as trt
    except Exception as exc:
        return (
            False,
            f"the tensorrt Python package is not importable ({exc}); pip install 'explorank[tensorrt]'",
        )
    count, how = _gpu_count()
    if count < 1:
        return False, f"no CUDA GPU is visible (checked with {how})"
    return True, f"TensorRT {trt.__version__}, {count} GPU(s)"


def resolve_mode(mode: str) -> bool:
    """Whether to build a plan for ``--tensorrt MODE``; ``on`` without TensorRT is an error."""
    if mode not in MODES:
        raise InvalidArgumentError("tensorrt", f"{mode!r} is not one of {', '.join(MODES)}")
    if mode == "off":
        return False
    ok, reason = tensorrt_status()
    if ok:
        return True
    if mode == "on":
        raise ExportError(
            f"--tensorrt on: cannot build encoder.plan: {reason}. "
            "Use --tensorrt auto to skip the plan where TensorRT or a GPU is missing."
        )
    log.info("skipping the TensorRT plan (--tensorrt auto): %s", reason)
    return False


def buckets_for(max_seq_length: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> list[int]:
    out = sorted({b for b in buckets if b < max_seq_length} | {max_seq_length})
    return out


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    *,
    max_seq_length: int,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    batch: tuple[int, int, int] = DEFAULT_BATCH,
    workspace_bytes: int = 4 << 30,
    keep_norm_fp32: bool = True,
) -> dict[str, Any]:
    """Build an FP16 engine from the unfused ONNX export; return the manifest entry."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {Path(onnx_path).name}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    config.set_flag(trt.BuilderFlag.FP16)
    pinned = 0
    if keep_norm_fp32:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        fp32_types = {trt.LayerType.NORMALIZATION, trt.LayerType.REDUCE}
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            floating = all(
                layer.get_output(j).dtype in (trt.float32, trt.float16)
                for j in range(layer.num_outputs)
            )
            if layer.type in fp32_types and floating:  # shape/int reductions keep their types
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
                pinned += 1

    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    profiles: list[dict[str, Any]] = []
    lo = 1
    bmin, bopt, bmax = batch
    for length in buckets_for(max_seq_length, buckets):
        profile = builder.create_optimization_profile()
        for name in inputs:
            profile.set_shape(name, (bmin, lo), (bopt, length), (bmax, length))
        config.add_optimization_profile(profile)
        profiles.append(
            {"index": len(profiles), "seq": [lo, length, length], "batch": [bmin, bopt, bmax]}
        )
        lo = length + 1

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError("TensorRT failed to build the FP16 engine (see the TensorRT log above)")
    Path(plan_path).write_bytes(bytes(serialized))
    return {
        "path": Path(plan_path).name,
        "precision": "fp16",
        "tensorrt_version": trt.__version__,
        "inputs": inputs,
        "profiles": profiles,
        "layers_pinned_fp32": pinned,
    }


class _DeviceBuffers:
    """Device memory through torch.cuda when available, else cuda-python (cudaMalloc/cudaMemcpy)."""

    def __init__(self) -> None:
        self._torch: Any = None
        self._cudart: Any = None
        self._ptrs: list[int] = []
        self._tensors: list[Any] = []
        try:
            import torch

            if torch.cuda.is_available():
                self._torch = torch
        except ImportError:
            pass
        if self._torch is None:
            for mod in ("cuda.bindings.runtime", "cuda.cudart"):
                try:
                    self._cudart = __import__(mod, fromlist=["cudaMalloc"])
                    break
                except ImportError:
                    continue
        if self._torch is None and self._cudart is None:
            raise ExportError(
                "TensorRT parity needs torch with CUDA or cuda-python to hold device buffers"
            )

    def upload(self, array: np.ndarray) -> int:
        array = np.ascontiguousarray(array)
        if self._torch is not None:
            t = self._torch.from_numpy(array).cuda()
            self._tensors.append(t)
            return int(t.data_ptr())
        err, ptr = self._cudart.cudaMalloc(max(array.nbytes, 1))
        self._ptrs.append(int(ptr))
        self._cudart.cudaMemcpy(
            ptr, array.ctypes.data, array.nbytes, self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        )
        return int(ptr)

    def empty(self, shape: tuple[int, ...], dtype: Any) -> int:
        return self.upload(np.zeros(shape, dtype=dtype))

    def download(self, ptr: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        out = np.empty(shape, dtype=dtype)
        if self._torch is not None:
            self._torch.cuda.synchronize()
            for t in self._tensors:
                if int(t.data_ptr()) == ptr:
                    return t.cpu().numpy().reshape(shape).astype(dtype)
        self._cudart.cudaMemcpy(
            out.ctypes.data, ptr, out.nbytes, self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        )
        return out

    def free(self) -> None:
        self._tensors.clear()
        for ptr in self._ptrs:
            self._cudart.cudaFree(ptr)
        self._ptrs.clear()


def run_plan(
    plan_path: Path, batches: Sequence[tuple[np.ndarray, np.ndarray]], entry: dict[str, Any]
) -> np.ndarray:
    """Embeddings of padded ``(input_ids, attention_mask)`` batches through the plan.

    Each batch runs on the profile whose sequence range holds its width (batch size must be at
    most the profile's max batch). Synchronous and unoptimised: this is for parity only.
    """
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
    if engine is None:
        raise ExportError(f"TensorRT could not deserialize {plan_path}")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    out_name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
    bufs = _DeviceBuffers()
    results = []
    try:
        for ids, mask in batches:
            width = ids.shape[1]
            profile = next(p for p in entry["profiles"] if p["seq"][0] <= width <= p["seq"][2])
            context.set_optimization_profile_async(profile["index"], 0)
            feeds = {"input_ids": ids, "attention_mask": mask}
            for name in names:
                if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
                    continue
                dtype = trt.nptype(engine.get_tensor_dtype(name))
                arr = feeds.get(name, np.zeros_like(ids)).astype(dtype)  # token_type_ids -> zeros
                context.set_input_shape(name, arr.shape)
                context.set_tensor_address(name, bufs.upload(arr))
            shape = tuple(context.get_tensor_shape(out_name))
            out_dtype = trt.nptype(engine.get_tensor_dtype(out_name))
            out_ptr = bufs.empty(shape, out_dtype)
            context.set_tensor_address(out_name, out_ptr)
            if not context.execute_async_v3(0):
                raise ExportError("TensorRT execution failed during the parity check")
            results.append(bufs.download(out_ptr, shape, out_dtype).astype(np.float32))
    finally:
        bufs.free()
    return np.concatenate(results, axis=0)
