"""Tokenization with the fast (Rust) ``tokenizers`` library.

Sequences are truncated to the bundle's ``max_seq_length`` and deliberately **not**
padded here: the dynamic batcher pads each batch to its length bucket, so a short
query never pays for 128 tokens of padding. Many exported ``tokenizer.json`` files
carry a fixed ``padding: {length: 128}`` setting; it is switched off on load (the pad
token id it names is kept for :meth:`Tokenizer.pad` and the batcher).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from explorank.errors import BundleError, ConfigError, InvalidArgumentError

if TYPE_CHECKING:
    from explorank.engine.bundle import Bundle

__all__ = ["Tokenizer", "pad_batch"]

_PAD_TOKENS = ("[PAD]", "<pad>", "<PAD>")


def pad_batch(
    seqs: Sequence[np.ndarray], length: int | None = None, *, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad 1-D id arrays into ``(input_ids, attention_mask)``, both int64 ``(n, length)``.

    ``length`` defaults to the longest sequence; a sequence longer than ``length`` is an
    error (padding never truncates silently: truncation is the tokenizer's job).
    """
    if len(seqs) == 0:
        raise InvalidArgumentError("input_ids", "no sequences to pad; pass at least one")
    lengths = [int(np.asarray(s).shape[0]) for s in seqs]
    longest = max(lengths)
    width = longest if length is None else int(length)
    if width < longest:
        raise InvalidArgumentError(
            "length", f"pad length {width} is shorter than the longest sequence ({longest})"
        )
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, (seq, n) in enumerate(zip(seqs, lengths, strict=True)):
        ids[row, :n] = seq
        mask[row, :n] = 1
    return ids, mask


class Tokenizer:
    """A ``tokenizers.Tokenizer`` configured for the engine: truncate, never pad.

    ``encode_batch`` runs in Rust over all texts at once (it parallelises internally),
    so callers should hand it every text of a request in one call.
    """

    def __init__(self, path: str | os.PathLike[str], max_seq_length: int) -> None:
        from tokenizers import Tokenizer as _HFTokenizer

        if int(max_seq_length) < 2:
            raise ConfigError(
                f"max_seq_length must be >= 2 (room for the special tokens), got {max_seq_length}"
            )
        path = Path(path)
        if not path.is_file():
            raise BundleError(
                f"tokenizer file {path} is missing (the bundle has no tokenizer.json)"
            )
        try:
            tok = _HFTokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises plain Exception
            raise BundleError(f"tokenizer file {path} cannot be loaded: {exc}") from exc
        padding = tok.padding
        self.pad_id = int(padding["pad_id"]) if padding else self._guess_pad_id(tok)
        tok.no_padding()
        tok.enable_truncation(max_length=int(max_seq_length))
        self._tok = tok
        self.path = path
        self.max_seq_length = int(max_seq_length)

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> Tokenizer:
        return cls(bundle.tokenizer_path(), bundle.max_seq_length)

    @staticmethod
    def _guess_pad_id(tok: object) -> int:
        for token in _PAD_TOKENS:
            tid = tok.token_to_id(token)  # type: ignore[attr-defined]
            if tid is not None:
                return int(tid)
        return 0

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, *, field: str = "text") -> np.ndarray:
        """One text -> int64 ids including special tokens."""
        return self.encode_batch([text], field=field)[0]

    def encode_batch(self, texts: Sequence[str], *, field: str = "texts") -> list[np.ndarray]:
        """Texts -> one int64 id array each (special tokens included, truncated, unpadded).

        Empty input is a caller error: an empty list, a non-string, or a text with no
        visible characters raises :class:`InvalidArgumentError` naming ``field[i]``
        (pass e.g. ``field="candidates"`` so the message points at the request field).
        """
        if isinstance(texts, str):
            raise InvalidArgumentError(field, "expected a list of texts, got a single string")
        if len(texts) == 0:
            raise InvalidArgumentError(field, "no texts to encode; pass at least one")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidArgumentError(
                    f"{field}[{i}]", f"expected a string, got {type(text).__name__}"
                )
            if not text.strip():
                raise InvalidArgumentError(f"{field}[{i}]", "text is empty; send some text")
        encodings = self._tok.encode_batch(list(texts))
        return [np.asarray(enc.ids, dtype=np.int64) for enc in encodings]

    def pad(
        self, seqs: Sequence[np.ndarray], length: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pad with this tokenizer's pad id; see :func:`pad_batch`."""
        return pad_batch(seqs, length, pad_id=self.pad_id)
