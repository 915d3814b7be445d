"""``explorank export``: write a verified bundle from a checkpoint and a catalog.

Exit codes follow the CLI convention: 0 ok, 1 export failure (including a missed parity gate:
the message names the precision and by how much), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        metavar="DIR",
        help="Hugging Face BERT-family checkpoint dir, e.g. from `explorank finetune` "
        "(default: the packaged all-MiniLM-L6-v2)",
    )
    parser.add_argument(
        "--catalog",
        type=Path,
        default=None,
        metavar="FILE",
        help='item catalog: JSONL ({"id", "text"} per line) or CSV with columns id,text '
        "(default: the embedded default catalog)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="BUNDLE", help="bundle directory to write"
    )
    parser.add_argument(
        "--precision",
        default="fp32,int8",
        metavar="LIST",
        help="comma-separated precisions: fp32 (required), int8, fp16 (= the fp16 ONNX encoder for the CUDA execution provider, and the TensorRT plan when --tensorrt builds one) (default: fp32,int8)",
    )
    parser.add_argument(
        "--tensorrt",
        choices=("auto", "on", "off"),
        default="auto",
        help="build encoder.plan: auto = when TensorRT and a GPU are present, on = required, off = never",
    )
    parser.add_argument(
        "--max-seq-length", type=int, default=128, metavar="N", help="tokens per text (default 128)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, metavar="N", help="encoding batch size (default 64)"
    )
    parser.add_argument(
        "--int8-search",
        choices=("auto", "all", "portable"),
        default="auto",
        help="INT8 configurations to try: auto = by this CPU (portable only on AVX2-only CPUs), "
        "all = full-range first, portable = only those that compute the same on every x86 CPU "
        "(export on a new CPU for a fleet of older ones) (default auto)",
    )
    parser.add_argument(
        "--int8",
        default="static,dynamic",
        metavar="KINDS",
        help="INT8 variants to build, in order of preference: static (calibrated QDQ: an "
        "embedding does not depend on its batch or padding) and/or dynamic (activation scales "
        "per batch); each kind keeps its first configuration that passes the gate, and the "
        "server times the variants on its own CPU (default: static,dynamic)",
    )
    parser.add_argument(
        "--int8-configs",
        default=None,
        metavar="NAMES",
        help="build these named INT8 configurations instead of searching (each one that passes "
        "the gate becomes a variant; for measurements, see docs/benchmarks.md): "
        + ", ".join(_config_names()),
    )
    parser.add_argument(
        "--parity-tolerance",
        action="append",
        default=[],
        metavar="PRECISION.METRIC=VALUE",
        help="override a gate tolerance, e.g. int8.min_cosine=0.95 (repeatable; for measurement "
        "bundles: a bundle exported with a looser gate says so in its manifest)",
    )
    parser.add_argument(
        "--int8-optional",
        action="store_true",
        help="when no INT8 configuration passes the accuracy gate, write the bundle without "
        "INT8 (fp32 only) instead of failing",
    )
    parser.add_argument(
        "--sign-key",
        type=Path,
        default=None,
        metavar="KEY.pem",
        help="sign the manifest with this ed25519 private key (PEM, from `explorank keygen`): "
        "writes manifest.json.sig, checked by `explorank serve --trusted-key`",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _config_names() -> list[str]:
    from explorank.export.quantize import all_configs

    return list(all_configs())


def _tolerances(values: list[str]) -> dict[str, dict[str, float]]:
    from explorank.errors import InvalidArgumentError

    out: dict[str, dict[str, float]] = {}
    for value in values:
        key, sep, number = value.partition("=")
        precision, dot, metric = key.strip().partition(".")
        try:
            parsed = float(number)
        except ValueError:
            parsed = float("nan")
        if not sep or not dot or parsed != parsed:
            raise InvalidArgumentError(
                "--parity-tolerance", f"{value!r}: expected PRECISION.METRIC=NUMBER"
            )
        out.setdefault(precision, {})[metric.strip()] = parsed
    return out


def run(args: argparse.Namespace) -> int:
    from explorank.export.pipeline import export_bundle

    manifest = export_bundle(
        args.out,
        model_dir=args.model,
        catalog=args.catalog,
        precisions=[p for p in str(args.precision).split(",") if p.strip()],
        tensorrt=args.tensorrt,
        max_seq_length=args.max_seq_length,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        int8_search=args.int8_search,
        int8_required=not args.int8_optional,
        int8_kinds=[k.strip() for k in str(args.int8).split(",") if k.strip()],
        int8_configs=[c.strip() for c in str(args.int8_configs).split(",") if c.strip()]
        if args.int8_configs
        else None,
        parity_overrides=_tolerances(args.parity_tolerance),
        sign_key=args.sign_key,
    )
    summary = {
        "bundle": str(Path(args.out).expanduser().absolute()),
        "model_version": manifest["model_version"],
        "precisions": manifest["precisions"],
        "items": manifest["catalog"]["count"],
        "fused_operators": {k: v for k, v in manifest["encoder"]["fused_operators"].items() if v},
        "int8_config": (manifest["encoder"].get("int8_config") or {}).get("name"),
        "int8_portable": (manifest["encoder"].get("int8_config") or {}).get("portable"),
        "int8_variants": [
            f"{v['kind']}:{v['name']}" for v in manifest["encoder"].get("int8_variants") or []
        ],
        "parity": {
            name: {
                k: float(f"{v:.6g}")
                for k, v in entry.items()
                if k in ("max_abs_diff", "min_cosine", "top10_overlap", "max_rel_diff")
            }
            for name, entry in manifest["parity"].items()
        },
        "seconds": manifest["timings_s"]["total"],
    }
    if args.sign_key is not None:
        from explorank.engine.signing import SIGNATURE_FILE, key_id, load_private_key

        summary["signature"] = SIGNATURE_FILE
        summary["key_id"] = key_id(load_private_key(args.sign_key).public_key())
    print(json.dumps(summary, indent=2))
    return 0
