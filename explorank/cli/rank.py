"""``explorank rank``: call Rank on a running server and print the ranked items with their
texts (``--json`` for the whole result)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import TYPE_CHECKING

from explorank.cli.connect import add_connection_arguments, connect

if TYPE_CHECKING:
    from explorank.engine.client import RankResult


def add_common(p: argparse.ArgumentParser) -> None:
    """The client commands' flags: address, deadline, TLS, token (:mod:`.connect`), --json."""
    add_connection_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--user", default="", help="user id")
    p.add_argument("--context", default="", help="free-text context (query, profile, session)")
    p.add_argument("--history", help="comma-separated catalog ids the user interacted with")
    p.add_argument("--candidates", help="comma-separated catalog ids (default: the whole catalog)")
    p.add_argument(
        "--top-k", type=int, default=0, help="items to return (default: server default, 10)"
    )
    p.add_argument("--scorer", default="", help="scorer plugin (default: server default)")
    p.add_argument("--policy", default="", help="policy plugin (default: server default)")
    p.add_argument("--event-id", default="", help="idempotency key (default: generated)")
    p.add_argument(
        "--no-text", action="store_true", help="do not ask for the items' texts (ids only)"
    )


TEXT_WIDTH = 60


def shorten(text: str, width: int = TEXT_WIDTH) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis when longer."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1].rstrip() + "…"


def format_result(res: RankResult, text_width: int = TEXT_WIDTH) -> str:
    """The human-readable table ``explorank rank`` prints: one line per item, with its text."""
    id_width = max([24, *(len(i.item_id) for i in res.items)])
    lines = [
        f"event {res.event_id}  model {res.model_version}  scorer {res.scorer}  policy {res.policy}",
        f"{'#':>3}  {'item':<{id_width}} {'score':>8} {'propensity':>10}  {'explored':<8}  text",
    ]
    for pos, item in enumerate(res.items, 1):
        explored = "yes" if item.explored else ""
        lines.append(
            f"{pos:>3}  {item.item_id:<{id_width}} {item.score:>8.4f} {item.propensity:>10.4f}  "
            f"{explored:<8}  {shorten(item.text, text_width)}".rstrip()
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    with connect(args) as client:
        res = client.rank(
            user_id=args.user,
            context_text=args.context,
            history_item_ids=_split(args.history),
            candidates=_split(args.candidates),
            top_k=args.top_k,
            scorer=args.scorer,
            policy=args.policy,
            event_id=args.event_id,
            include_text=not args.no_text,
        )
    if args.json:
        print(json.dumps(asdict(res), indent=2, ensure_ascii=False))
        return 0
    print(format_result(res))
    return 0
