"""FLOP count of a BERT encoder forward pass, for achieved-GFLOP/s figures.

What is counted (one multiply-add = 2 FLOPs, the convention of every GEMM benchmark, so
the result compares directly with the matrix-multiply ceiling in :mod:`.ceiling`), per
layer, for ``b`` sequences of ``s`` tokens, hidden size ``h``, FFN size ``i``:

======================  ======================
Q, K, V projections     ``3 · 2·b·s·h·h``
attention output proj.  ``2·b·s·h·h``
scores ``Q·Kᵀ``         ``2·b·s·s·h`` (summed over heads: ``heads · d_head = h``)
context ``P·V``         ``2·b·s·s·h``
FFN up + down           ``2 · 2·b·s·h·i``
======================  ======================

so a layer is ``b·s·(8h² + 4hi) + 4·b·s²·h``. **Not counted**: the embedding lookups
(gathers, no arithmetic), biases, layer norms, softmax, GELU and the mean pooling
(element-wise work, ~1-2% of the total for MiniLM at s=64, and not what a GEMM
ceiling measures). The count therefore slightly *under*states the work done, which
keeps "percent of ceiling" honest. Padding is counted as work: the benchmark feeds
full attention masks, so every position is real.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from explorank.errors import InvalidArgumentError

__all__ = ["EncoderArch", "encoder_flops", "layer_flops"]


@dataclass(frozen=True)
class EncoderArch:
    """The sizes that determine the FLOP count (from ``manifest["encoder"]["architecture"]``)."""

    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    vocab_size: int = 0

    @classmethod
    def from_mapping(cls, arch: Mapping[str, Any]) -> EncoderArch:
        """Read the manifest's architecture block; a missing or bad size names the key."""
        values: dict[str, int] = {}
        for key in ("num_layers", "hidden_size", "num_heads", "intermediate_size", "vocab_size"):
            raw = arch.get(key, 0 if key == "vocab_size" else None)
            if raw is None:
                raise InvalidArgumentError(
                    f"encoder.architecture.{key}",
                    "missing from the bundle manifest; re-export the bundle (the FLOP count needs it)",
                )
            try:
                values[key] = int(raw)
            except (TypeError, ValueError) as exc:
                raise InvalidArgumentError(
                    f"encoder.architecture.{key}", f"expected an integer, got {raw!r}"
                ) from exc
            if key != "vocab_size" and values[key] < 1:
                raise InvalidArgumentError(
                    f"encoder.architecture.{key}", f"must be >= 1, got {raw!r}"
                )
        if values["hidden_size"] % values["num_heads"]:
            raise InvalidArgumentError(
                "encoder.architecture.num_heads",
                f"hidden_size {values['hidden_size']} is not divisible by num_heads {values['num_heads']}",
            )
        return cls(**values)


def layer_flops(arch: EncoderArch, batch_size: int, seq_len: int) -> int:
    """FLOPs of one transformer layer (see the module docstring for what is counted)."""
    b, s, h, i = int(batch_size), int(seq_len), arch.hidden_size, arch.intermediate_size
    if b < 1 or s < 1:
        raise InvalidArgumentError("batch_size/seq_len", f"must be >= 1, got {b} x {s}")
    tokens = b * s
    projections = 2 * tokens * h * h * 4  # Q, K, V and the output projection
    attention = 2 * b * s * s * h * 2  # scores and context
    ffn = 2 * tokens * h * i * 2  # up and down
    return projections + attention + ffn


def encoder_flops(arch: EncoderArch | Mapping[str, Any], batch_size: int, seq_len: int) -> int:
    """FLOPs of a full encoder forward pass for ``batch_size`` sequences of ``seq_len`` tokens."""
    if not isinstance(arch, EncoderArch):
        arch = EncoderArch.from_mapping(arch)
    return arch.num_layers * layer_flops(arch, batch_size, seq_len)
