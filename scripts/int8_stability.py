"""Does an embedding depend on its batch or its padding? Per encoder of a bundle.

    python scripts/int8_stability.py [--bundle DIR] [--texts 32]

For fp32 and every INT8 variant: ``--texts`` catalog texts (spread over the length range) are
encoded alone, together in one batch, and each one alone but right-padded to every length
bucket of the batcher (``batching.length_buckets``) at least as long as it. Prints the largest
absolute difference of any embedding component between "alone" and "in the batch", and
between "alone" and "padded". Static INT8 fixes its activation scales at export, so it should
move no more than fp32; dynamic INT8 rescales per batch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from explorank.engine.backends import create_backend
from explorank.engine.bundle import load_bundle
from explorank.engine.config import BatchingConfig
from explorank.engine.default_bundle import ensure_default_bundle
from explorank.engine.tokenizer import Tokenizer, pad_batch


def stability(backend: object, rows: list[np.ndarray], buckets: list[int]) -> tuple[float, float]:
    encode = backend.encode  # type: ignore[attr-defined]
    together = encode(*pad_batch(rows))
    batch = padded = 0.0
    for i, row in enumerate(rows):
        alone = encode(*pad_batch([row]))[0]
        batch = max(batch, float(np.abs(alone - together[i]).max()))
        for length in buckets:
            if length < len(row):
                continue
            ids = np.zeros((1, length), dtype=np.int64)
            mask = np.zeros((1, length), dtype=np.int64)
            ids[0, : len(row)], mask[0, : len(row)] = row, 1
            padded = max(padded, float(np.abs(alone - encode(ids, mask)[0]).max()))
    return batch, padded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--texts", type=int, default=32)
    args = ap.parse_args()
    bundle = load_bundle(args.bundle or ensure_default_bundle())
    rows = Tokenizer.from_bundle(bundle).encode_batch([it.text for it in bundle.items])
    rows = sorted(rows, key=len)
    rows = [rows[int(i)] for i in np.linspace(0, len(rows) - 1, num=min(args.texts, len(rows)))]
    buckets = [b for b in BatchingConfig().length_buckets if b <= bundle.max_seq_length]
    print(f"{len(rows)} texts of {len(rows[0])}..{len(rows[-1])} tokens; buckets {buckets}")
    print(f"{'encoder':<44} {'alone vs batch':>15} {'alone vs padded':>16}")
    encoders: list[tuple[str, dict[str, object]]] = [("fp32", {"precision": "fp32"})]
    encoders += [
        (f"int8 {v['kind']}:{v['name']}", {"precision": "int8", "int8_variant": v["name"]})
        for v in bundle.int8_variants()
    ]
    for label, kwargs in encoders:
        backend = create_backend(bundle, provider="cpu", **kwargs)  # type: ignore[arg-type]
        try:
            batch, padded = stability(backend, rows, buckets)
        finally:
            backend.close()
        print(f"{label:<44} {batch:>15.2e} {padded:>16.2e}")


if __name__ == "__main__":
    main()
