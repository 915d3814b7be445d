"""``explorank catalog add|remove``: change the catalog of a running server (``admin`` scope).

``add`` takes items as ``--item ID --text TEXT`` (repeatable) or a file (``--file``: JSONL
``{"id", "text"}`` or CSV ``id,text``, as for ``explorank export --catalog``); the server
encodes them with its serving encoder, and they are rankable when the command returns, on
every replica sharing the state store, and after a restart. ``remove`` retires items: they are
never returned again (rewards for events that showed them are still accepted).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from explorank.cli.connect import connect
from explorank.cli.rank import add_common
from explorank.errors import InvalidArgumentError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="catalog_command", metavar="SUBCOMMAND")
    add = sub.add_parser("add", help="add items (id + text) to the catalog")
    add_common(add)
    add.add_argument("--item", action="append", default=[], metavar="ID", help="item id")
    add.add_argument(
        "--text", action="append", default=[], metavar="TEXT", help="its text (one per --item)"
    )
    add.add_argument("--file", type=Path, help="JSONL or CSV catalog file of items to add")
    add.set_defaults(_catalog_run=_add, timeout=300.0)
    rm = sub.add_parser("remove", help="retire items: never returned again")
    add_common(rm)
    rm.add_argument("item_ids", nargs="+", metavar="ID", help="item ids to retire")
    rm.set_defaults(_catalog_run=_remove)


def run(args: argparse.Namespace) -> int:
    fn = getattr(args, "_catalog_run", None)
    if fn is None:
        print("explorank catalog: choose a subcommand: add, remove", file=sys.stderr)
        return 2
    return int(fn(args))


def _items(args: argparse.Namespace) -> list[tuple[str, str]]:
    if len(args.item) != len(args.text):
        raise InvalidArgumentError("--text", "give one --text for every --item")
    items = list(zip(args.item, args.text, strict=True))
    if args.file is not None:
        from explorank.export.data import load_catalog

        items += [(it.id, it.text) for it in load_catalog(args.file)]
    if not items:
        raise InvalidArgumentError("--item", "no items: give --item ID --text TEXT or --file")
    return items


def _add(args: argparse.Namespace) -> int:
    items = _items(args)
    with connect(args) as client:
        out = client.add_items(items, timeout=args.timeout)
    _print(args, out)
    return 0


def _remove(args: argparse.Namespace) -> int:
    with connect(args) as client:
        out = client.remove_items(args.item_ids, timeout=args.timeout)
    _print(args, out)
    return 0


def _print(args: argparse.Namespace, out: dict[str, int]) -> None:
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"added {out['added']}, retired {out['removed']}; "
            f"{out['catalog_size']} items can be ranked"
        )
