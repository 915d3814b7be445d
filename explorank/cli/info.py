"""``explorank info``: call GetInfo on a running server."""

from __future__ import annotations

import argparse
import json

from explorank.cli.connect import connect
from explorank.cli.rank import add_common


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)


def run(args: argparse.Namespace) -> int:
    with connect(args) as client:
        info = client.info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>20}: {value}")
    return 0
