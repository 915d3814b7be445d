"""``explorank sign``: sign an existing bundle's manifest (verified first).

For bundles exported without ``--sign-key`` (e.g. exported on a build machine and signed on
a separate signing host): every file is checked against the manifest before the manifest is
signed, so a signature never vouches for a bundle that does not verify. Writes
``manifest.json.sig``, replacing an older signature.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bundle", type=Path, required=True, metavar="DIR", help="bundle directory to sign"
    )
    parser.add_argument(
        "--key",
        type=Path,
        required=True,
        metavar="KEY.pem",
        help="ed25519 private key (PEM), e.g. from `explorank keygen`",
    )


def run(args: argparse.Namespace) -> int:
    from explorank.engine.bundle import verify_bundle
    from explorank.engine.signing import key_id, load_private_key, sign_bundle

    key = load_private_key(args.key)
    bundle = Path(args.bundle).expanduser().resolve()
    verify_bundle(bundle)
    sig = sign_bundle(bundle, key)
    print(json.dumps({"signature": str(sig), "key_id": key_id(key.public_key())}, indent=2))
    return 0
