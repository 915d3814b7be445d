"""Helpers of scripts/gpu-check.sh (standard library only, except ``probe``).

    python scripts/gpu_check.py wheel PATH DEST_DIR      # a wheel, or its parts: join, check, name
    python scripts/gpu_check.py versions                 # versions as JSON
    python scripts/gpu_check.py probe --bundle B --out probe.json
    python scripts/gpu_check.py report --work WORK --out OUT

``wheel``: PATH is a wheel file, a glob of its parts (``ort_gpu.whl.part-*``), or a wheel
path that does not exist beside parts named ``PATH.part-*``. Parts are joined in name order
(``split`` names them so); the result must be a zip with a ``*.dist-info`` directory, and is
written to DEST_DIR under its canonical file name (``name-version-tags.whl``, read from its
METADATA and WHEEL), since pip installs nothing else. Prints that path.

``probe``: the serving configuration on the GPU, measured in one process: the fp16 encoder's
load-time check on catalog texts, GPU memory before and after the CUDA graphs of the default
plan are captured, batch-1 and full-batch latency per length bucket with and without graphs,
and the graphs' agreement with the plain session.

``report``: gathers what the steps left in WORK (steps.tsv, nvidia-smi.csv, versions.json,
gpu-tests.xml, probe.json, encoder-report.json, serve-report.json) into OUT/gpu-check.json
and OUT/gpu-check.md.
"""

from __future__ import annotations

import argparse
import email.parser
import glob
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any


# ----------------------------------------------------------------------------------- wheel
def wheel_parts(path: str) -> list[Path]:
    """The files that make up the wheel ``path`` (one file, or its parts in name order)."""
    p = Path(path)
    if any(ch in path for ch in "*?["):
        parts = sorted(Path(x) for x in glob.glob(path))
    elif p.is_file():
        return [p]
    else:
        parts = sorted(Path(x) for x in glob.glob(glob.escape(path) + ".part-*"))
    if not parts:
        raise SystemExit(f"gpu-check: no wheel at {path} (and no parts {path}.part-*)")
    return parts


def canonical_name(whl: Path) -> str:
    """``name-version-pytag-abitag-plattag.whl`` from the wheel's own metadata."""
    with zipfile.ZipFile(whl) as zf:
        infos = [n for n in zf.namelist() if n.split("/")[0].endswith(".dist-info")]
        meta = next((n for n in infos if n.endswith("/METADATA")), None)
        wheel = next((n for n in infos if n.endswith("/WHEEL")), None)
        if meta is None or wheel is None:
            raise SystemExit(f"gpu-check: {whl.name} has no *.dist-info/METADATA and WHEEL")
        md = email.parser.Parser().parsestr(zf.read(meta).decode("utf-8"))
        tags = [
            line.split(":", 1)[1].strip()
            for line in zf.read(wheel).decode("utf-8").splitlines()
            if line.startswith("Tag:")
        ]
    if not tags:
        raise SystemExit(f"gpu-check: {whl.name}: WHEEL lists no Tag")
    split = [t.split("-") for t in tags]
    py, abi = split[0][0], split[0][1]
    if all(s[0] == py and s[1] == abi for s in split):
        tag = f"{py}-{abi}-{'.'.join(dict.fromkeys(s[2] for s in split))}"
    else:
        tag = tags[0]
    name = str(md["Name"]).replace("-", "_").replace(".", "_")
    return f"{name}-{md['Version']}-{tag}.whl"


def _check_sha256(joined: Path, name: str, parts: list[Path]) -> None:
    """Compare with a ``SHA256SUMS`` beside the parts (scripts/gpu-wheels.sh writes one)."""
    import hashlib

    sums = parts[0].parent / "SHA256SUMS"
    if not sums.is_file():
        return
    expected = {
        line.split()[1].lstrip("*"): line.split()[0]
        for line in sums.read_text().splitlines()
        if len(line.split()) == 2
    }
    if name not in expected:
        return
    h = hashlib.sha256()
    with open(joined, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != expected[name]:
        raise SystemExit(f"gpu-check: the joined {name} does not match its sha256 in {sums}")
    print(f"# sha256 of {name} matches {sums}", file=sys.stderr)


def cmd_wheel(args: argparse.Namespace) -> int:
    parts = wheel_parts(args.path)
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest, suffix=".whl", delete=False) as tmp:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, tmp, 1 << 20)
    joined = Path(tmp.name)
    try:
        try:
            with zipfile.ZipFile(joined) as zf:
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            bad = f"the archive ({exc})"
        if bad is not None:
            raise SystemExit(
                f"gpu-check: {args.path} ({len(parts)} part(s)) is not a wheel (zip): {bad} "
                "is unreadable; a part is missing, out of order or truncated"
            )
        final = dest / canonical_name(joined)
        _check_sha256(joined, final.name, parts)
        joined.replace(final)
    finally:
        joined.unlink(missing_ok=True)
    size = final.stat().st_size
    print(
        f"# {len(parts)} part(s), {size} bytes: {', '.join(p.name for p in parts)}", file=sys.stderr
    )
    print(final)
    return 0


# -------------------------------------------------------------------------------- versions
def cmd_versions(args: argparse.Namespace) -> int:
    """Versions of what the figures depend on, as JSON on stdout."""
    import platform
    import subprocess
    from importlib import metadata

    out: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in (
        "explorank",
        "onnxruntime-gpu",
        "onnxruntime",
        "numpy",
        "torch",
        "transformers",
        "onnx",
        "tensorrt",
        "grpcio",
        "protobuf",
        "pydantic",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    import onnxruntime as ort

    out["onnxruntime_imported"] = f"{ort.__version__} from {ort.__file__}"
    out["onnxruntime_providers"] = ort.get_available_providers()
    try:
        import torch

        out["torch_cuda"] = torch.version.cuda
        out["cudnn"] = torch.backends.cudnn.version()
    except Exception as exc:  # a report field, never a failure
        out["torch_cuda"] = f"unavailable: {exc}"
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        out["git_commit"] = rev or None
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    print(json.dumps(out, indent=2))
    return 0


# ----------------------------------------------------------------------------------- probe
def gpu_memory_used_mb() -> float | None:
    """Memory in use on GPU 0 (the whole device: the check runs alone on its machine)."""
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        return float(out.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def _p50_ms(fn: Any, ids: Any, mask: Any, reps: int) -> float:
    import numpy as np

    for _ in range(3):
        fn(ids, mask)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(ids, mask)
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.percentile(times, 50))


def cmd_probe(args: argparse.Namespace) -> int:
    import numpy as np

    from explorank.benchmarks.latency.encoder_bench import catalog_token_stream, make_inputs
    from explorank.engine.backends import create_backend
    from explorank.engine.bundle import load_bundle
    from explorank.engine.config import Config
    from explorank.engine.gpu import check_fp16, graph_plan
    from explorank.engine.tokenizer import Tokenizer

    result: dict[str, Any] = {"bundle": str(args.bundle)}
    bundle = load_bundle(args.bundle)
    tok = Tokenizer.from_bundle(bundle)
    config = Config()
    plan = graph_plan(config, bundle)
    result["plan"] = plan.describe() | {"bound_io_bytes": plan.io_bytes(bundle.embedding_dim)}
    mem: dict[str, float | None] = {"before": gpu_memory_used_mb()}
    plain = create_backend(bundle, precision="fp16", provider="cuda")
    mem["fp16_session"] = gpu_memory_used_mb()
    check = check_fp16(plain, tok, bundle, texts=512)
    result["fp16_check"] = {
        "passed": check.passed,
        "metrics": check.metrics,
        "tolerances": check.tolerances,
        "texts": check.texts,
        "seconds": check.seconds,
    }
    fp32 = create_backend(bundle, precision="fp32", provider="cuda")
    fp32_check = check_fp16(fp32, tok, bundle, texts=512)  # same metrics: fp32 on the GPU
    result["fp32_cuda_vs_stored"] = fp32_check.metrics
    fp32.close()

    graphs = create_backend(bundle, precision="fp16", provider="cuda")
    mem["second_fp16_session"] = gpu_memory_used_mb()
    result["cuda_graphs_status"] = graphs.enable_cuda_graphs(plan, "auto")  # type: ignore[attr-defined]
    mem["graph_session"] = gpu_memory_used_mb()
    t0 = time.perf_counter()
    for b, length in plan.shapes:  # what the batcher's warm-up does: capture every graph
        ids = np.full((b, length), 0, dtype=np.int64)
        graphs.encode(ids, np.ones_like(ids))
    result["capture_s"] = round(time.perf_counter() - t0, 3)
    mem["after_capture"] = gpu_memory_used_mb()
    result["gpu_memory_mb"] = mem
    result["describe"] = graphs.describe()

    stream, cls_id, sep_id = catalog_token_stream(tok, [it.text for it in bundle.items])
    rng = np.random.default_rng(0)
    rows = []
    max_diff = 0.0
    for length, sizes in zip(plan.lengths, plan.sizes, strict=True):
        for b in sorted({1, sizes[-1]}):
            ids, mask = make_inputs(stream, cls_id, sep_id, b, length, rng)
            max_diff = max(
                max_diff, float(np.abs(graphs.encode(ids, mask) - plain.encode(ids, mask)).max())
            )
            rows.append(
                {
                    "batch_size": b,
                    "seq_len": length,
                    "p50_ms_plain": _p50_ms(plain.encode, ids, mask, args.reps),
                    "p50_ms_graphs": _p50_ms(graphs.encode, ids, mask, args.reps),
                }
            )
    for r in rows:
        r["graphs_speedup"] = r["p50_ms_plain"] / r["p50_ms_graphs"] if r["p50_ms_graphs"] else None
    result["latency"] = rows
    result["graphs_vs_plain_max_abs_diff"] = max_diff
    graphs.close()
    plain.close()
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    ok = check.passed and result["cuda_graphs_status"].startswith("on") and max_diff < 1e-2
    print(json.dumps({k: result[k] for k in ("fp16_check", "cuda_graphs_status", "gpu_memory_mb")}))
    return 0 if ok else 1


# ---------------------------------------------------------------------------------- report
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _junit(path: Path) -> dict[str, Any] | None:
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return None
    out = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    cases = []
    for case in suite.iter("testcase"):
        status = "passed"
        detail = ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                status, detail = tag, (el.get("message") or "")[:300]
        cases.append(
            {
                "test": f"{case.get('classname')}::{case.get('name')}",
                "status": status,
                "detail": detail,
            }
        )
    out["cases"] = cases  # type: ignore[assignment]
    return out


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def cmd_report(args: argparse.Namespace) -> int:
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = []
    tsv = work / "steps.tsv"
    if tsv.is_file():
        for line in tsv.read_text().splitlines():
            name, status, rc, seconds, note = (line.split("\t") + [""] * 5)[:5]
            steps.append(
                {
                    "step": name,
                    "status": status,
                    "rc": int(rc or 0),
                    "seconds": float(seconds or 0),
                    "note": note,
                }
            )
    gpus = []
    smi = work / "nvidia-smi.csv"
    if smi.is_file():
        keys = ["name", "memory_total", "driver", "compute_cap", "sm_clock_max", "pcie"]
        for line in smi.read_text().splitlines():
            if line.strip():
                gpus.append(dict(zip(keys, [x.strip() for x in line.split(",")], strict=False)))
    encoder = _read_json(work / "encoder-report.json")
    serve = _read_json(work / "serve-report.json")
    probe = _read_json(work / "probe.json")
    report = {
        "kind": "gpu-check",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "passed": bool(steps) and all(s["status"] in ("ok", "skipped-by-design") for s in steps),
        "gpus": gpus,
        "versions": _read_json(work / "versions.json"),
        "steps": steps,
        "tests": _junit(work / "gpu-tests.xml"),
        "probe": probe,
        "encoder": {
            "headline": (encoder or {}).get("headline"),
            "rows": [r for r in (encoder or {}).get("rows", []) if r.get("device") == "gpu"],
            "backends": (encoder or {}).get("backends"),
            "skipped": (encoder or {}).get("skipped"),
        }
        if encoder
        else None,
        "serve": {
            "headline": serve.get("headline"),
            "rows": serve.get("rows"),
            "failed": serve.get("failed"),
            "skipped": serve.get("skipped"),
        }
        if serve
        else None,
    }
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")

    md = [
        "# explorank gpu-check",
        "",
        f"- date: {report['date']}",
        f"- result: **{'PASSED' if report['passed'] else 'FAILED'}**",
    ]
    for g in gpus:
        md.append(
            f"- GPU: {g.get('name')}, {g.get('memory_total')}, driver {g.get('driver')}, compute capability {g.get('compute_cap')}"
        )
    for k, v in (report["versions"] or {}).items():
        md.append(f"- {k}: {v}")
    md += [
        "",
        "## Steps",
        "",
        "| step | status | exit | seconds | note |",
        "| --- | --- | --- | --- | --- |",
    ]
    md += [
        f"| {s['step']} | {s['status']} | {s['rc']} | {s['seconds']:.0f} | {s['note']} |"
        for s in steps
    ]
    tests = report["tests"]
    if tests:
        md += [
            "",
            f"## GPU tests: {tests['tests']} run, {tests['failures']} failed, {tests['errors']} errors, {tests['skipped']} skipped",
            "",
        ]
        md += [
            f"- {c['status']}: `{c['test']}` {c['detail']}"
            for c in tests["cases"]
            if c["status"] != "passed"
            or any(w in c["test"].split("::")[-1] for w in ("gpu", "cuda"))
        ]
        md.append(f"- and {sum(c['status'] == 'passed' for c in tests['cases'])} passed in all")
    if probe:
        fc = probe.get("fp16_check") or {}
        mem = probe.get("gpu_memory_mb") or {}
        md += [
            "",
            "## Serving configuration (default settings, the exported MiniLM bundle)",
            "",
            f"- fp16 load-time check: passed {fc.get('passed')}, min cosine {_fmt((fc.get('metrics') or {}).get('min_cosine'), 5)} on {fc.get('texts')} catalog texts",
            f"- fp32 on the CUDA EP vs stored fp32 embeddings: min cosine {_fmt((probe.get('fp32_cuda_vs_stored') or {}).get('min_cosine'), 6)}",
            f"- CUDA graphs: {probe.get('cuda_graphs_status')}; capture of all shapes {probe.get('capture_s')} s; graphs vs plain max |diff| {_fmt(probe.get('graphs_vs_plain_max_abs_diff'), 5)}",
            f"- GPU memory used (MiB, whole device): {', '.join(f'{k} {_fmt(v, 0)}' for k, v in mem.items())}; planned bound I/O {probe.get('plan', {}).get('bound_io_bytes')} bytes",
            "",
            "| batch | seq | p50 ms plain | p50 ms graphs | graphs speed-up |",
            "| --- | --- | --- | --- | --- |",
        ]
        md += [
            f"| {r['batch_size']} | {r['seq_len']} | {_fmt(r['p50_ms_plain'], 3)} | {_fmt(r['p50_ms_graphs'], 3)} | {_fmt(r['graphs_speedup'])} |"
            for r in probe.get("latency", [])
        ]
    enc = report["encoder"]
    if enc:
        h = enc["headline"] or {}
        md += [
            "",
            "## bench encoder (GPU rows)",
            "",
            f"- CUDA EP fp16 vs PyTorch eager fp32 on the GPU at 32 × 64: {_fmt(h.get('cuda_fp16_vs_pytorch_cuda'))}×; vs PyTorch fp16: {_fmt(h.get('cuda_fp16_vs_pytorch_cuda_fp16'))}×; vs CUDA EP fp32: {_fmt(h.get('cuda_fp16_vs_cuda_fp32'))}×",
            f"- CUDA graphs vs none: {_fmt(h.get('cuda_graphs_vs_none'))}× at 32 × 64, {_fmt(h.get('cuda_graphs_vs_none_smallest_shape'))}× at the smallest shape",
            "",
            "| backend | batch | seq | p50 ms | p99 ms | seq/s | × base | base |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        md += [
            f"| {r['backend']} | {r['batch_size']} | {r['seq_len']} | {_fmt(r['p50_ms'], 3)} | {_fmt(r['p99_ms'], 3)} | {_fmt(r['throughput_seq_s'], 0)} | {_fmt(r.get('speedup_vs_pytorch'))} | {r.get('speedup_base')} |"
            for r in enc["rows"]
        ]
        md += [f"- skipped `{s['backend']}`: {s['reason']}" for s in enc.get("skipped") or []]
    srv = report["serve"]
    if srv:
        h = srv["headline"] or {}
        md += [
            "",
            "## bench serve --quick",
            "",
            f"- at concurrency {h.get('concurrency')}: explorank vs torch peer {_fmt(h.get('explorank_vs_peer_throughput'))}×, p99 {_fmt(h.get('explorank_p99_ms'))} ms (peer {_fmt(h.get('peer_p99_ms'))} ms), batching on vs off {_fmt(h.get('batching_on_vs_off'))}×",
            "",
            "| target | mode | concurrency | req/s | p50 ms | p99 ms |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        md += [
            f"| {r.get('target')} | {r.get('mode')} | {r.get('concurrency')} | {_fmt(r.get('throughput_rps'), 1)} | {_fmt(r.get('p50_ms'))} | {_fmt(r.get('p99_ms'))} |"
            for r in srv.get("rows") or []
        ]
        md += [f"- failed `{f.get('target')}`: {f.get('reason')}" for f in srv.get("failed") or []]
    (out / "gpu-check.md").write_text("\n".join(md) + "\n")
    print(out / "gpu-check.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wheel")
    w.add_argument("path")
    w.add_argument("dest")
    pr = sub.add_parser("probe")
    pr.add_argument("--bundle", type=Path, required=True)
    pr.add_argument("--out", type=Path, required=True)
    pr.add_argument("--reps", type=int, default=30)
    sub.add_parser("versions")
    r = sub.add_parser("report")
    r.add_argument("--work", required=True)
    r.add_argument("--out", required=True)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    commands = {
        "wheel": cmd_wheel,
        "versions": cmd_versions,
        "probe": cmd_probe,
        "report": cmd_report,
    }
    return commands[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
