"""Encoder backends and the factory that picks one for a bundle.

``create_backend(bundle, backend=..., precision=..., provider=...)``:

- ``backend="onnxruntime"``: :class:`~explorank.engine.backends.ort.OrtBackend` with the
  provider policy described there.
- ``backend="tensorrt"``: the native :class:`~explorank.engine.backends.tensorrt.TensorRTBackend`
  on the bundle's ``encoder.plan``. A :class:`ConfigError` when the bundle has no plan,
  tensorrt/cuda-python is missing, or there is no GPU; ``precision`` must be the plan's
  (built fp16 by ``explorank export``).
- ``precision="auto"``: the plan's precision where the native TensorRT backend can run,
  else fp32.
- ``backend="auto"``: the native TensorRT plan when precision is the plan's precision,
  the plan exists, TensorRT is installed and a GPU is present; otherwise ONNX Runtime,
  with the reason logged. Precision is never changed behind the caller's back: it is an
  accuracy decision, so an unattainable precision is an error, not a fallback.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorank.engine.backends.base import (
    BACKEND_NAMES,
    PRECISIONS,
    PROVIDERS,
    Backend,
    check_batch,
    cuda_device_count,
)
from explorank.errors import ConfigError

if TYPE_CHECKING:
    from explorank.engine.bundle import Bundle

__all__ = ["Backend", "check_batch", "create_backend", "cuda_device_count"]

log = logging.getLogger(__name__)


def _plan_precision(bundle: Bundle) -> str:
    entry = bundle.manifest["encoder"].get("tensorrt")
    if isinstance(entry, dict):
        return str(entry.get("precision", "fp16"))
    return "fp16"


def _plan_path(bundle: Bundle) -> Path:
    return bundle.encoder_path("fp16")  # confined to the bundle and listed in its files


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
    on_gpu = provider in ("cuda", "tensorrt") or (provider == "auto" and cuda_device_count() > 0)
    if not on_gpu and "int8" in bundle.precisions:
        # The INT8 encoder exists only when it passed the export's accuracy gate
        # (min cosine >= 0.99, top-10 overlap >= 0.9); on CPU it is the faster choice.
        return "int8"
    return "fp32"


def create_backend(
    bundle: Bundle,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    provider: str = "auto",
    intra_op_threads: int | None = None,
    max_batch_size: int = 64,
    int8_variant: str | None = None,
) -> Backend:
    """Build the encoder backend for ``bundle`` (see the module docstring for the policy).

    ``precision="auto"`` means the TensorRT plan's precision when the native TensorRT
    backend can serve it here (plan + tensorrt + GPU, and backend/provider allow it);
    else, on CPU, the INT8 encoder when the bundle has one (it passed the accuracy gate);
    else fp32.

    ``max_batch_size`` sizes the TensorRT-EP optimisation profile (ONNX Runtime); the
    native TensorRT plan's profiles are fixed when the plan is built.

    ``int8_variant`` names the INT8 encoder (``Bundle.int8_variants``) for ``precision="int8"``;
    default: the bundle's first.
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
    )
