"""Per-operator time breakdown of the bundle's ONNX encoders (ONNX Runtime profiler).

    python scripts/profile_encoder.py [--bundle DIR] [--batch 32] [--seq 64] [--runs 20]

Prints, for fp32 and every INT8 variant of the bundle, the share of kernel time per operator type: the profile that
shows what bounds each precision (e.g. how much INT8 time still goes to fp32 MatMuls,
quantize/dequantize and attention).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from explorank.engine.bundle import load_bundle
from explorank.engine.cpu import available_cpus
from explorank.engine.default_bundle import ensure_default_bundle


def profile(
    model: Path, feeds: dict[str, np.ndarray], runs: int, threads: int
) -> tuple[dict[str, float], float]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "prof")
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    for _ in range(3):
        sess.run(None, feeds)
    for _ in range(runs):
        sess.run(None, feeds)
    trace = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    total_run = 0.0
    kernel_events = [
        e for e in trace if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
    ]
    run_events = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    for e in kernel_events[-len(kernel_events) * runs // (runs + 3) :]:
        per_op[e["args"].get("op_name", "?")] += e["dur"] / 1000.0 / runs
    for e in run_events[-runs:]:
        total_run += e["dur"] / 1000.0 / runs
    return dict(per_op), total_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    bundle = load_bundle(args.bundle or ensure_default_bundle())
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, size=(args.batch, args.seq)).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    threads = available_cpus()
    models = [("fp32", bundle.encoder_path("fp32"))]
    models += [(f"int8 {v['name']}", bundle.int8_path(v["name"])) for v in bundle.int8_variants()]
    for label, path in models:
        per_op, run_ms = profile(path, feeds, args.runs, threads)
        total = sum(per_op.values())
        print(
            f"\n{label}: batch {args.batch} x seq {args.seq}, {threads} threads: "
            f"{run_ms:.1f} ms per run ({total:.1f} ms in kernels)"
        )
        for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1]):
            print(f"  {op:<32} {ms:8.2f} ms  {100 * ms / total:5.1f}%")


if __name__ == "__main__":
    main()
