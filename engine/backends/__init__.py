"""Encoder backends and the factory that picks one for a bundle.

``create_backend(bundle, backend=..., precision=..., provider=...)``:

- ``backend="onnxruntime"``: :class:`~explorank.engine.backends.ort.OrtBackend` with the
  provider policy described there.
- ``backend="tensorrt"``: the native :class:`~explorank.engine.backends.tensorrt.TensorRTBackend`
  on the bundle's ``encoder.plan``. A :class:`ConfigError` when the bundle has no plan,
  tensorrt/cuda-python is missing, or there is no GPU; ``precision`` must be the plan's
  (built fp16 by ``explorank export``).
- ``precision="auto"``: the plan's precision where the native TensorRT backend can run;
  else, on a GPU the CUDA execution provider can use, fp16 when the bundle has its fp16
  ONNX encoder; else (CPU) the INT8 encoder when the bundle has one; else fp32.
- ``precision="fp16"`` with ONNX Runtime (:func:`fp16_route`): the bundle's fp16 ONNX
  encoder on the CUDA EP; with ``provider="tensorrt"``, or ``auto`` where TensorRT is
  installed, the fp32 graph under the TensorRT EP with FP16 on (unverified on hardware).
- ``backend="auto"``: the native TensorRT plan when precision is the plan's precision,
  the plan exists, TensorRT is installed and a GPU is present; otherwise ONNX Runtime,
  with the reason logged. Precision is never changed behind the caller's back: it is an
  accuracy decision, so an unattainable precision is an error, not a fallback.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorank.engine.backends.base import (
    BACKEND_NAMES,
    PRECISIONS,
    PROVIDERS,
    Backend,
    check_batch,
    cuda_device_count,
    cuda_ep_usable,
    tensorrt_installed,
)
from explorank.errors import ConfigError

if TYPE_CHECKING:
    from explorank.engine.bundle import Bundle

__all__ = ["Backend", "check_batch", "create_backend", "cuda_device_count", "fp16_route"]

log = logging.getLogger(__name__)


def _plan_precision(bundle: Bundle) -> str:
    entry = bundle.manifest["encoder"].get("tensorrt")
    if isinstance(entry, dict):
        return str(entry.get("precision", "fp16"))
    return "fp16"


def _plan_path(bundle: Bundle) -> Path:
    return bundle.plan_path()  # confined to the bundle and listed in its files


def _tensorrt_blocker(bundle: Bundle, precision: str) -> str | None:
    """Why the native TensorRT backend cannot serve this bundle here, or None."""
    from explorank.engine.backends.tensorrt import tensorrt_unavailable_reason

    if not bundle.has_tensorrt_plan():
        return f"bundle {bundle.path} has no TensorRT plan (export it on a GPU to get encoder.plan)"
    plan_precision = _plan_precision(bundle)
    if precision != plan_precision:
        return (
            f"the bundle's TensorRT plan is {plan_precision}, but precision={precision} was requested "
            f"(set precision={plan_precision} to use it)"
        )
    return tensorrt_unavailable_reason()


def _auto_precision(bundle: Bundle, backend: str, provider: str) -> str:
    if backend != "onnxruntime" and provider in ("auto", "tensorrt") and bundle.has_tensorrt_plan():
        plan_precision = _plan_precision(bundle)
        blocker = _tensorrt_blocker(bundle, plan_precision)
        if blocker is None:
            return plan_precision
        log.info("precision=auto: %s", blocker)
    on_gpu = provider in ("cuda", "tensorrt") or (provider == "auto" and cuda_ep_usable())
    if on_gpu and provider != "tensorrt" and backend != "tensorrt" and bundle.has_fp16_onnx():
        # The fp16 ONNX encoder passed its export gate; it is checked again on this GPU at
        # load (engine/gpu.py) and fp32 serves where it misses.
        return "fp16"
    if not on_gpu and "int8" in bundle.precisions:
        # The INT8 encoder exists only when it passed the export's accuracy gate
        # (min cosine >= 0.99, top-10 overlap >= 0.9); on CPU it is the faster choice.
        return "int8"
    return "fp32"


def fp16_route(
    provider: str,
    *,
    has_fp16_onnx: bool,
    gpus: int,
    available: Sequence[str],
    trt_usable: bool,
    bundle_name: str = "the bundle",
) -> tuple[str, str]:
    """``(model, provider)`` that serve ``precision="fp16"`` with ONNX Runtime: ``("fp16",
    "cuda")`` is the fp16 ONNX encoder on the CUDA EP, ``("fp32", "tensorrt")`` the fp32
    graph under the TensorRT EP with FP16 on. A pure function (GPU availability is passed
    in, for tests); raises :class:`ConfigError` naming the setting to change."""
    if provider == "cpu":
        raise ConfigError(
            "precision=fp16 runs on an NVIDIA GPU only; set backend.provider = auto or cuda, "
            "or backend.precision = auto, fp32 or int8 for the CPU"
        )
    if gpus == 0:
        raise ConfigError(
            "precision=fp16 needs an NVIDIA GPU, but none is usable here (no CUDA driver or "
            "device, or CUDA_VISIBLE_DEVICES hides them); set backend.precision = auto, fp32 or int8"
        )
    if provider == "tensorrt" or (
        provider == "auto" and trt_usable and "TensorrtExecutionProvider" in available
    ):
        return "fp32", "tensorrt"
    if "CUDAExecutionProvider" not in available:
        raise ConfigError(
            f"precision=fp16 on the GPU needs onnxruntime-gpu, but this onnxruntime has "
            f"{', '.join(available)} (pip install 'explorank[gpu]'); or set backend.precision = "
            "auto, fp32 or int8"
        )
    if not has_fp16_onnx:
        raise ConfigError(
            f"precision=fp16 on the CUDA execution provider serves the bundle's fp16 ONNX "
            f"encoder, and {bundle_name} has none (re-export it with `explorank export "
            f"--precision fp32,int8,fp16`); or set backend.precision = auto or fp32"
        )
    return "fp16", "cuda"


def create_backend(
    bundle: Bundle,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    provider: str = "auto",
    intra_op_threads: int | None = None,
    max_batch_size: int = 64,
    int8_variant: str | None = None,
    allow_spinning: bool | None = None,
) -> Backend:
    """Build the encoder backend for ``bundle`` (see the module docstring for the policy).

    ``precision="auto"`` means the TensorRT plan's precision when the native TensorRT
    backend can serve it here (plan + tensorrt + GPU, and backend/provider allow it);
    else, on CPU, the INT8 encoder when the bundle has one (it passed the accuracy gate);
    else fp32.

    ``max_batch_size`` sizes the TensorRT-EP optimisation profile (ONNX Runtime); the
    native TensorRT plan's profiles are fixed when the plan is built.

    ``int8_variant`` names the INT8 encoder (``Bundle.int8_variants``) for ``precision="int8"``;
    default: the bundle's first. ``allow_spinning`` sets ONNX Runtime's intra-op spinning
    (None: its default).
    """
    if backend not in ("auto", *BACKEND_NAMES):
        raise ConfigError(f"backend must be auto, onnxruntime or tensorrt; got {backend!r}")
    if precision == "auto":
        precision = _auto_precision(bundle, backend, provider)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if provider not in PROVIDERS:
        raise ConfigError(f"provider must be one of {', '.join(PROVIDERS)}; got {provider!r}")
    if precision == "int8" and "int8" not in bundle.precisions:
        raise ConfigError(
            f"precision=int8: bundle {bundle.path} has no INT8 encoder (it provides "
            f"{', '.join(bundle.precisions)}); use precision=fp32 or re-export with INT8"
        )

    use_trt = False
    if backend == "tensorrt":
        if provider not in ("auto", "tensorrt"):
            raise ConfigError(
                f"backend=tensorrt runs on the GPU; provider={provider} contradicts it "
                "(leave provider=auto, or use backend=onnxruntime)"
            )
        blocker = _tensorrt_blocker(bundle, precision)
        if blocker:
            raise ConfigError(f"backend=tensorrt: {blocker}")
        use_trt = True
    elif backend == "auto" and provider in ("auto", "tensorrt") and bundle.has_tensorrt_plan():
        blocker = _tensorrt_blocker(bundle, precision)
        if blocker:
            log.info(
                "backend=auto: not using the native TensorRT plan: %s; using onnxruntime", blocker
            )
        else:
            use_trt = True

    if use_trt:
        from explorank.engine.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(
            _plan_path(bundle),
            input_names=bundle.encoder_inputs,
            output_name=bundle.encoder_output,
            embedding_dim=bundle.embedding_dim,
            precision=precision,
        )

    from explorank.engine.backends.ort import OrtBackend

    variant: dict[str, Any] | None = None
    if precision == "int8":
        variant = bundle.int8_variant(int8_variant)
        model = bundle.int8_path(variant["name"])
    elif precision == "fp16":
        import onnxruntime as ort

        model_key, provider = fp16_route(
            provider,
            has_fp16_onnx=bundle.has_fp16_onnx(),
            gpus=cuda_device_count(),
            available=ort.get_available_providers(),
            trt_usable=tensorrt_installed(),
            bundle_name=f"bundle {bundle.path}",
        )
        model = bundle.encoder_path(model_key)
    else:
        model = bundle.encoder_path("fp32")
    return OrtBackend(
        model,
        input_names=bundle.encoder_inputs,
        output_name=bundle.encoder_output,
        embedding_dim=bundle.embedding_dim,
        precision=precision,
        provider=provider,
        intra_op_threads=intra_op_threads,
        max_batch_size=max_batch_size,
        max_seq_length=bundle.max_seq_length,
        variant=None if variant is None else f"{variant['kind']}:{variant['name']}",
        allow_spinning=allow_spinning,
    )
