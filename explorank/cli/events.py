"""``explorank events``: event log tools.

``explorank events export --out FILE`` writes the joined event log (every logged Rank
decision with its rewards; row format in docs/state.md) for offline evaluation. The
SQLite database (``--db``, else ``state.db`` in ``--state-dir`` or the default state
directory, as ``explorank serve`` finds it) is opened read-only, so exporting next to a
running server is safe.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from explorank.errors import InvalidArgumentError
from explorank.paths import default_state_db
from explorank.plugins.api import StateStore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="events_command", metavar="SUBCOMMAND")
    exp = sub.add_parser(
        "export", help="write the event log with rewards joined (JSONL or Parquet)"
    )
    exp.add_argument("--out", required=True, type=Path, help="output file")
    exp.add_argument(
        "--format", choices=("jsonl", "parquet"), default="jsonl", help="default: jsonl"
    )
    exp.add_argument(
        "--store", choices=("sqlite", "redis"), default="sqlite", help="default: sqlite"
    )
    exp.add_argument(
        "--db",
        type=Path,
        help="sqlite database file (default: state.db in the state directory)",
    )
    exp.add_argument(
        "--state-dir",
        type=Path,
        help="state directory holding state.db, as given to `explorank serve --state-dir` "
        "(default: $EXPLORANK_STATE_DIR, else $XDG_STATE_HOME/explorank, else "
        "~/.local/state/explorank)",
    )
    exp.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="default: %(default)s")
    exp.add_argument(
        "--key-prefix", default="explorank:", help="redis key prefix (default: %(default)s)"
    )
    exp.set_defaults(_events_run=_export)


def run(args: argparse.Namespace) -> int:
    fn = getattr(args, "_events_run", None)
    if fn is None:
        print("explorank events: choose a subcommand: export", file=sys.stderr)
        return 2
    return int(fn(args))


def _open_store(args: argparse.Namespace) -> StateStore:
    if args.store == "sqlite":
        db = args.db or default_state_db(args.state_dir)
        if not db.is_file():
            flag = "--db" if args.db else "--state-dir" if args.state_dir else "--db/--state-dir"
            raise InvalidArgumentError(
                flag, f"no sqlite state database at {db}; pass the server's --state-dir or --db"
            )
        from explorank.plugins.builtin.sqlite_store import SqliteStore

        return SqliteStore(path=str(db), read_only=True)
    from explorank.plugins.builtin.redis_store import RedisStore

    return RedisStore(url=args.redis_url, key_prefix=args.key_prefix)


def _export(args: argparse.Namespace) -> int:
    if args.out.exists() and args.out.is_dir():
        raise InvalidArgumentError("--out", f"{args.out} is a directory; give a file name")
    store = _open_store(args)

    async def go() -> int:
        await store.open()
        try:
            return await store.export_events(args.out, args.format)
        finally:
            await store.close()

    t0 = time.perf_counter()
    count = asyncio.run(go())
    print(f"wrote {count} events to {args.out} ({args.format}) in {time.perf_counter() - t0:.1f} s")
    return 0
