"""``explorank plugins``: what is registered, and which package provided it.

Lists every scorer, policy and state store with its distribution and version; the plugins
that failed to load (``-v``: with the full traceback); those not loaded or blocked (by
``EXPLORANK_PLUGINS``, ``EXPLORANK_PLUGINS_BLOCK``, ``--no-external`` or the config's
``[plugins]``); name clashes and how they were resolved; policies (and, with ``--bundle``,
scorers) that cannot be constructed with the configured parameters. ``-v`` also lists each
plugin's parameters with their defaults. ``--json`` prints the same as one object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from explorank.plugins.manager import BLOCK_ENV_VAR, ENV_VAR, KINDS, PluginManager

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
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML config: its [plugins] section and plugin parameters apply, as in serve",
    )
    parser.add_argument(
        "--bundle", type=Path, help="also construct every scorer for this bundle (reports failures)"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="parameters of each plugin, and the full traceback of plugins that failed to load",
    )


def _params(cls: type) -> list[dict[str, Any]]:
    model = getattr(cls, "Params", None) or getattr(cls, "Options", None)
    if model is None or not hasattr(model, "model_fields"):
        return []
    out = []
    for name, field in model.model_fields.items():
        default = field.get_default(call_default_factory=True)
        out.append(
            {
                "name": name,
                "type": getattr(field.annotation, "__name__", str(field.annotation)),
                "default": default,
                "description": field.description or "",
            }
        )
    return out


def construction_problems(
    manager: PluginManager, ranking: Any = None, bundle_dir: Path | None = None
) -> list[dict[str, str]]:
    """Policies (and, given a bundle, scorers) that cannot be built with their configured
    parameters, with the reason."""
    problems = []
    policy_params = getattr(ranking, "policies", {}) or {}
    for name in manager.policy_classes():
        try:
            manager.create_policy(name, **policy_params.get(name, {}))
        except Exception as exc:
            problems.append(
                {"kind": "policy", "name": name, "error": f"{type(exc).__name__}: {exc}"}
            )
    if bundle_dir is not None:
        from explorank.engine.bundle import load_bundle
        from explorank.plugins.api import ScorerContext

        bundle = load_bundle(bundle_dir)
        ctx = ScorerContext(
            embedding_dim=bundle.embedding_dim, heads=bundle.heads(), bundle_dir=bundle.path
        )
        scorer_params = getattr(ranking, "scorers", {}) or {}
        for name in manager.scorer_classes():
            try:
                manager.create_scorer(name, ctx, **scorer_params.get(name, {}))
            except Exception as exc:
                problems.append(
                    {"kind": "scorer", "name": name, "error": f"{type(exc).__name__}: {exc}"}
                )
    return problems


def collect(
    manager: PluginManager,
    *,
    verbose: bool = False,
    ranking: Any = None,
    bundle_dir: Path | None = None,
) -> dict[str, Any]:
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
                    **({"parameters": _params(info.cls)} if verbose else {}),
                }
            )
    return {
        "plugins": rows,
        "load_errors": [
            {
                "plugin": e.plugin,
                "package": e.distribution,
                "error": e.error,
                **({"traceback": e.traceback} if verbose else {}),
            }
            for e in manager.load_errors
        ],
        "blocked": list(manager.skipped),
        "blocked_names": [{"kind": k, "name": n} for k, n in manager.blocked],
        "clashes": [{"kind": c.kind, "name": c.name, "detail": str(c)} for c in manager.clashes],
        "cannot_construct": construction_problems(manager, ranking, bundle_dir),
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
    from explorank.engine.config import load_config

    config = load_config(args.config)
    pc = config.plugins
    allow = pc.allow
    if args.allow:
        allow = [a.strip() for a in args.allow.split(",") if a.strip()]
    manager = PluginManager(
        block_external=args.no_external or pc.block_external,
        allow=allow,
        block=pc.block,
        override=pc.override,
    )
    data = collect(manager, verbose=args.verbose, ranking=config.ranking, bundle_dir=args.bundle)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    print(_table(data["plugins"]))
    if args.verbose:
        for row in data["plugins"]:
            for prm in row["parameters"]:
                print(
                    f"  {row['kind']} {row['name']}.{prm['name']} ({prm['type']}, "
                    f"default {prm['default']!r}): {prm['description']}"
                )
    if data["blocked"]:
        print(
            f"\nnot loaded ({ENV_VAR} / {BLOCK_ENV_VAR} / --allow / config): {', '.join(data['blocked'])}"
        )
    if data["blocked_names"]:
        names = ", ".join(f"{b['kind']} {b['name']}" for b in data["blocked_names"])
        print(f"blocked by name (plugins.block / {BLOCK_ENV_VAR}): {names}")
    for clash in data["clashes"]:
        print(f"\nname clash: {clash['detail']}")
    for bad in data["cannot_construct"]:
        print(f"\n{bad['kind']} {bad['name']} cannot be constructed: {bad['error']}")
    if data["load_errors"]:
        print("\nplugins that failed to load:", file=sys.stderr)
        for e in manager.load_errors:
            print(f"  {e}", file=sys.stderr)
            if args.verbose and e.traceback:
                print("    " + e.traceback.rstrip().replace("\n", "\n    "), file=sys.stderr)
        if not args.verbose:
            print("  (explorank plugins -v shows each traceback)", file=sys.stderr)
    return 0
