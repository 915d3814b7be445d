"""``explorank reward``: call Reward on a running server."""

from __future__ import annotations

import argparse
import json

from explorank.cli.connect import connect
from explorank.cli.rank import add_common


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--event-id", required=True, help="event id returned by Rank")
    p.add_argument("--item", required=True, help="item id the reward is for")
    p.add_argument("--value", type=float, required=True, help="reward in [-1, 1]")


def run(args: argparse.Namespace) -> int:
    with connect(args) as client:
        res = client.reward(args.event_id, args.item, args.value)
    if args.json:
        print(json.dumps({"accepted": res.accepted, "duplicate": res.duplicate}))
    else:
        print("duplicate (already recorded, not applied again)" if res.duplicate else "accepted")
    return 0
