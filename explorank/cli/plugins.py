"""``explorank plugins``: what is registered, and which package provided it.

Lists every scorer, policy and state store with its distribution and version, the
entry points that failed to load (with their errors) and those blocked by
``EXPLORANK_PLUGINS`` / ``--no-external``. ``--json`` prints the same as one object.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from explorank.plugins.manager import ENV_VAR, KINDS, PluginManager

_KIND_TITLES = {"scorer": "scorer", "policy": "policy", "store": "store"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--no-external",
        action="store_true",
        help=f"load built-in plugins only (same as {ENV_VAR}=none)",
    )
    parser.add_argument(
        "--allow",
        default=None,
        metavar="NAMES",
        help="comma-separated entry-point or distribution names to load (default: all)",
    )


def collect(manager: PluginManager) -> dict[str, Any]:
    """The listing as plain data (what ``--json`` prints)."""
    rows = []
    for kind in KINDS:
        for name, info in sorted(manager.infos(kind).items()):
            rows.append(
                {
                    "kind": _KIND_TITLES[kind],
                    "name": name,
                    "package": info.distribution,
                    "version": info.version,
                    "plugin": info.plugin,
                    "class": f"{info.cls.__module__}.{info.cls.__qualname__}",
                    "description": info.description,
                }
            )
    return {
        "plugins": rows,
        "load_errors": [
            {"plugin": e.plugin, "package": e.distribution, "error": e.error}
            for e in manager.load_errors
        ],
        "blocked": list(manager.skipped),
    }


def _table(rows: list[dict[str, Any]]) -> str:
    cols = ("kind", "name", "package", "version", "description")
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) if rows else len(c) for c in cols}
    widths["description"] = len("description")
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip()]
    for r in rows:
        lines.append("  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip())
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    allow = None
    if args.allow:
        allow = [a.strip() for a in args.allow.split(",") if a.strip()]
    manager = PluginManager(block_external=args.no_external, allow=allow)
    data = collect(manager)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(_table(data["plugins"]))
        if data["blocked"]:
            print(
                f"\nnot loaded ({ENV_VAR} / --allow / --no-external): {', '.join(data['blocked'])}"
            )
        if data["load_errors"]:
            print("\nplugins that failed to load:", file=sys.stderr)
            for e in manager.load_errors:
                print(f"  {e}", file=sys.stderr)
    return 0
