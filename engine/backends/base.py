"""The one interface every encoder backend implements, plus GPU detection.

A backend turns a padded batch ``(input_ids, attention_mask)`` into L2-normalised
embeddings ``(batch, d)`` float32. It knows nothing about batching, caching or
asyncio: the dynamic batcher calls :meth:`Backend.encode` from a worker thread.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from explorank.errors import InvalidArgumentError

__all__ = ["Backend", "check_batch", "cuda_device_count", "cuda_ep_usable", "tensorrt_installed"]

log = logging.getLogger(__name__)

BACKEND_NAMES = ("onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "int8", "fp16")
PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")


class Backend(ABC):
    """An encoder that maps padded token batches to embeddings.

    Attributes are plain values so ``GetInfo`` and the logs can report them:

    - ``name``: ``"onnxruntime"`` or ``"tensorrt"``
    - ``provider``: what actually executes, read back after loading (for ONNX Runtime
      the session's first provider, e.g. ``"CPUExecutionProvider"``; never merely what
      was requested, because ORT silently falls back to CPU)
    - ``precision``: ``"fp32"``, ``"int8"`` or ``"fp16"``
    - ``embedding_dim``: d
    """

    name: str
    provider: str
    precision: str
    embedding_dim: int

    @abstractmethod
    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """``(batch, seq)`` int64 ids and mask -> ``(batch, d)`` float32, one row per input row.

        Thread-safe; may be called from any thread.
        """

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to free
        """Release sessions/device memory. Idempotent."""

    def describe(self) -> dict[str, Any]:
        """What is running, for GetInfo and start-up logs."""
        return {
            "backend": self.name,
            "provider": self.provider,
            "precision": self.precision,
            "embedding_dim": self.embedding_dim,
        }

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}/{self.provider}/{self.precision} d={self.embedding_dim}>"


def check_batch(input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a padded batch and return both arrays as C-contiguous int64."""
    ids = np.asarray(input_ids)
    mask = np.asarray(attention_mask)
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise InvalidArgumentError(
            "input_ids", f"expected a non-empty (batch, seq) array, got shape {ids.shape}"
        )
    if mask.shape != ids.shape:
        raise InvalidArgumentError(
            "attention_mask", f"shape {mask.shape} does not match input_ids {ids.shape}"
        )
    if not np.issubdtype(ids.dtype, np.integer) or not np.issubdtype(mask.dtype, np.integer):
        raise InvalidArgumentError(
            "input_ids", f"expected integer arrays, got {ids.dtype} and {mask.dtype}"
        )
    return (
        np.ascontiguousarray(ids, dtype=np.int64),
        np.ascontiguousarray(mask, dtype=np.int64),
    )


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """Number of CUDA devices really usable, 0 when there is no GPU or driver.

    ``onnxruntime-gpu`` lists the CUDA and TensorRT providers as *available* on any
    machine, GPU or not, so availability must come from the driver: ``libcuda``'s
    ``cuInit`` + ``cuDeviceGetCount``. ``CUDA_VISIBLE_DEVICES=""`` (or ``-1``) hides all
    devices, as it does for every CUDA program. Cached: the answer does not change
    while the process lives.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.cuInit(0) != 0:
                return 0
            count = ctypes.c_int(0)
            if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return 0
            return int(count.value)
        except (AttributeError, OSError) as exc:  # pragma: no cover - broken driver install
            log.debug("libcuda present but unusable: %s", exc)
            return 0
    return 0


def cuda_ep_usable() -> bool:
    """A GPU is usable *and* this onnxruntime has the CUDA execution provider
    (``onnxruntime-gpu``): what serving on the CUDA EP needs."""
    if cuda_device_count() == 0:
        return False
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def tensorrt_installed() -> bool:
    """Whether the ``tensorrt`` package is importable (its libraries are what ONNX Runtime's
    TensorRT execution provider loads; ``onnxruntime-gpu`` lists that provider without them)."""
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None
