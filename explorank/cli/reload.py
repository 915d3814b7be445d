"""``explorank reload``: hot-reload a bundle on a running server (the ``admin`` scope).

The server loads and verifies the bundle, checks its INT8 encoder, warms it up next to the
serving one, then switches to it atomically and drains the old one; a bundle that fails
verification is refused and the old one keeps serving.
"""

from __future__ import annotations

import argparse
import json

from explorank.cli.connect import connect
from explorank.cli.rank import add_common


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument(
        "--bundle",
        default="",
        help="bundle directory on the server's machine (default: its configured bundle)",
    )
    p.set_defaults(timeout=600.0)


def run(args: argparse.Namespace) -> int:
    with connect(args) as client:
        out = client.reload(args.bundle, timeout=args.timeout)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"now serving {out['model_version']} (was {out['previous_version']}), "
            f"{out['catalog_size']} items, loaded and warmed up in {out['seconds']:.1f} s"
        )
    return 0
