"""``explorank info``: call GetInfo on a running server."""

from __future__ import annotations

import argparse
import json

from explorank.cli.rank import add_common


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)


def run(args: argparse.Namespace) -> int:
    from explorank.engine.client import RankerClient

    with RankerClient(args.address, timeout=args.timeout) as client:
        info = client.info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>20}: {value}")
    return 0
