"""``explorank keygen``: create an ed25519 key pair for signing bundles.

``NAME.key.pem`` (private, mode 0600: keep it on the machine that exports or signs) and
``NAME.pub.pem`` (public: give it to the servers as ``--trusted-key`` /
``model.trusted_keys``). Existing files are never overwritten. See docs/operations.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="directory to write the keys into"
    )
    parser.add_argument(
        "--name",
        default="bundle-signing",
        help="file name stem: NAME.key.pem and NAME.pub.pem (default bundle-signing)",
    )


def run(args: argparse.Namespace) -> int:
    from explorank.engine.signing import generate_keypair, key_id, load_public_key
    from explorank.errors import InvalidArgumentError

    if not args.name or "/" in args.name or args.name.startswith("."):
        raise InvalidArgumentError("name", f"{args.name!r} is not a plain file name stem")
    private, public = generate_keypair(args.out, args.name)
    summary = {
        "private_key": str(private.absolute()),
        "public_key": str(public.absolute()),
        "key_id": key_id(load_public_key(public)),
    }
    print(json.dumps(summary, indent=2))
    return 0
