"""Export a BERT checkpoint + mean pooling + L2 normalisation to one ONNX graph.

Why one graph: the engine then feeds token ids and gets the final, normalised embedding back in
one backend call, with no numpy post-processing per request, and every backend (ORT CPU/CUDA,
TensorRT) runs exactly the same math.

Exporter choice (measured with torch 2.13, transformers 5.24, onnxruntime 1.31 on MiniLM-L6):

* the legacy TorchScript exporter (``torch.onnx.export(..., dynamo=False)``, opset 17) gives a
  graph on which the ONNX Runtime transformer optimizer fuses everything: 1
  EmbedLayerNormalization, 6 Attention, 12 SkipLayerNormalization, 6 BiasGelu;
* the dynamo exporter (``dynamo=True``, opset 18) produces a graph that the optimizer cannot
  load (``Duplicate definition of name (embedding)`` in the ORT session, and with
  ``opt_level=0`` "Graph is not a DAG" at the Gelu/AddBias fusion), so no fusion applies.

We therefore use the legacy exporter, with ``attn_implementation="eager"`` so that attention is
the explicit MatMul/Softmax pattern the Attention fusion recognises (SDPA exports as a pattern it
does not). The inputs are ``input_ids`` and ``attention_mask`` (int64, dynamic ``batch`` and
``seq`` axes); ``token_type_ids`` is not an input: BERT's default all-zero segment ids are folded
into the graph, and the optimizer's EmbedLayerNormalization fusion does not need them.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from explorank.errors import ExportError, InvalidArgumentError

log = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "embedding"
OPSET = 17


@dataclass(frozen=True)
class Architecture:
    """The numbers the optimizer, TensorRT and the manifest need about the encoder."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int

    def as_manifest(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "num_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
        }


def check_model_dir(model_dir: Path) -> Path:
    """A model dir must be a Hugging Face checkpoint directory with a config and a tokenizer."""
    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise InvalidArgumentError(
            "model", f"{model_dir} is not a directory (pass a Hugging Face checkpoint dir)"
        )
    if not (model_dir / "config.json").is_file():
        raise InvalidArgumentError(
            "model", f"{model_dir} has no config.json; is it a Hugging Face checkpoint dir?"
        )
    if not any((model_dir / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        raise InvalidArgumentError("model", f"{model_dir} has no tokenizer.json or vocab.txt")
    return model_dir


def load_encoder(model_dir: Path) -> tuple[Any, Architecture]:
    """Load the checkpoint with eager attention, in eval mode, without touching the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    model_dir = check_model_dir(model_dir)
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    for attr in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size"):
        if not hasattr(config, attr):
            raise InvalidArgumentError(
                "model",
                f"{model_dir}: config has no {attr}; explorank exports BERT-family encoders",
            )
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # silence "pooler weights newly initialized" (unused here)
    hf_logging.disable_progress_bar()  # a sub-second "Loading weights" bar is noise in the export log
    try:
        model = AutoModel.from_pretrained(
            model_dir, local_files_only=True, attn_implementation="eager"
        )
    except Exception as exc:  # transformers raises many types; all mean "not loadable"
        raise InvalidArgumentError(
            "model", f"{model_dir}: cannot load the checkpoint ({exc})"
        ) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    model.eval()
    arch = Architecture(
        model_type=str(config.model_type),
        num_layers=int(config.num_hidden_layers),
        hidden_size=int(config.hidden_size),
        num_heads=int(config.num_attention_heads),
        intermediate_size=int(config.intermediate_size),
        vocab_size=int(config.vocab_size),
        max_position_embeddings=int(getattr(config, "max_position_embeddings", 512)),
    )
    return model, arch


def pooled_encoder(model: Any) -> Any:
    """Wrap a HF encoder as ``(input_ids, attention_mask) -> L2-normalised mean-pooled embedding``.

    Mean pooling is masked (padding does not count) and the denominator is clamped so that an
    all-padding row yields zeros rather than NaN; normalisation uses ``x / max(||x||, 1e-12)``,
    exactly what :func:`torch.nn.functional.normalize` computes.
    """
    import torch

    class PooledEncoder(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(summed / counts, p=2.0, dim=-1)

    return PooledEncoder(model).eval()


def export_onnx(module: Any, out_path: Path, *, opset: int = OPSET) -> Path:
    """Export ``module`` (from :func:`pooled_encoder`) with dynamic batch and sequence axes."""
    import torch

    out_path = Path(out_path)
    # Example inputs: batch 2, seq 8, with padding in row 1, so no shape is specialised.
    ids = torch.tensor(
        [[101, 7, 8, 9, 10, 11, 12, 102], [101, 7, 8, 102, 0, 0, 0, 0]], dtype=torch.int64
    )
    ids = ids.clamp(max=int(module.encoder.config.vocab_size) - 1)
    mask = (ids != 0).to(torch.int64)
    dynamic_axes = {name: {0: "batch", 1: "seq"} for name in INPUT_NAMES}
    dynamic_axes[OUTPUT_NAME] = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings and the legacy-exporter deprecation notice
        try:
            torch.onnx.export(
                module,
                (ids, mask),
                str(out_path),
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as exc:
            raise ExportError(f"torch.onnx.export failed: {exc}") from exc
    return out_path


def torch_embed(module: Any, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """The PyTorch reference embeddings for one padded batch."""
    import torch

    with torch.inference_mode():
        out = module(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
    return out.detach().cpu().numpy().astype(np.float32)


def load_tokenizer(model_dir: Path, max_seq_length: int) -> Any:
    """A ``tokenizers.Tokenizer`` for ``model_dir`` that truncates to ``max_seq_length``.

    Checkpoints that ship only ``vocab.txt`` get a ``tokenizer.json`` converted through
    transformers' fast tokenizer, so the bundle always carries one (the engine reads only it).
    """
    from tokenizers import Tokenizer

    path = Path(model_dir) / "tokenizer.json"
    if path.is_file():
        tok = Tokenizer.from_file(str(path))
    else:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        fast = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        backend = getattr(fast, "backend_tokenizer", None) or getattr(fast, "_tokenizer", None)
        if backend is None:
            raise ExportError(
                f"{model_dir}: cannot build a fast tokenizer (tokenizer.json) for the bundle"
            )
        tok = Tokenizer.from_str(backend.to_str())
    tok.no_padding()
    tok.enable_truncation(max_length=max_seq_length)
    return tok


def tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids per text (with special tokens, truncated), unpadded."""
    return [enc.ids for enc in tokenizer.encode_batch(texts)]
