"""Detached ed25519 signatures of a bundle's manifest (optional; see docs/bundle.md).

``manifest.json`` lists the sha256 of every file of the bundle, so a signature over its exact
bytes covers the whole bundle. The signature is the raw 64-byte ed25519 signature in
``manifest.json.sig`` next to it (not listed in ``files``: it signs the manifest that lists
them). Keys are PEM files: the private key PKCS#8 (``explorank keygen``, or
``openssl genpkey -algorithm ed25519``), the public key SubjectPublicKeyInfo.

Needs the ``cryptography`` package (``pip install 'explorank[sign]'``), imported only when a
bundle is signed or a trusted key is configured.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorank.engine.manifest import MANIFEST_FILE
from explorank.errors import BundleError, ConfigError, InvalidArgumentError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "SIGNATURE_FILE",
    "check_signature",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "sign_bundle",
]

SIGNATURE_FILE = f"{MANIFEST_FILE}.sig"
SIGNATURE_BYTES = 64


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"bundle signatures need the 'cryptography' package ({exc}): "
            "pip install 'explorank[sign]'"
        ) from None
    return serialization


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name of a public key: the first 16 hex digits of the sha256 of its
    raw 32 bytes."""
    serialization = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """An unencrypted PEM ed25519 private key; :class:`InvalidArgumentError` (``sign_key``)
    naming the file otherwise."""
    serialization = _crypto()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path).expanduser()
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise InvalidArgumentError("sign_key", f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise InvalidArgumentError(
            "sign_key", f"{path} is not an unencrypted PEM private key ({exc})"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidArgumentError(
            "sign_key", f"{path} is a {type(key).__name__}, not an ed25519 private key"
        )
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """A PEM ed25519 public key; :class:`ConfigError` (``model.trusted_keys``) naming the
    file otherwise."""
    serialization = _crypto()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    path = Path(path).expanduser()
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"model.trusted_keys: cannot read {path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model.trusted_keys: {path} is not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(
            f"model.trusted_keys: {path} is a {type(key).__name__}, not an ed25519 public key"
        )
    return key


def generate_keypair(out_dir: str | Path, name: str = "bundle-signing") -> tuple[Path, Path]:
    """Write ``NAME.key.pem`` (private, mode 0600) and ``NAME.pub.pem`` into ``out_dir``;
    never overwrites an existing file. Returns ``(private, public)``."""
    serialization = _crypto()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / f"{name}.key.pem", out / f"{name}.pub.pem"
    for p in (private, public):
        if p.exists():
            raise InvalidArgumentError("out", f"{p} already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def sign_bundle(bundle_dir: str | Path, key: Ed25519PrivateKey) -> Path:
    """Sign the exact bytes of ``bundle_dir/manifest.json``; write and return the
    signature file."""
    bundle_dir = Path(bundle_dir)
    signature = key.sign((bundle_dir / MANIFEST_FILE).read_bytes())
    out = bundle_dir / SIGNATURE_FILE
    out.write_bytes(signature)
    return out


def check_signature(
    bundle_dir: Path, manifest_bytes: bytes, trusted_keys: Sequence[str | Path]
) -> str:
    """Verify ``manifest_bytes`` against ``bundle_dir/manifest.json.sig`` with each trusted
    key; return the id of the key that verifies, else raise :class:`BundleError` saying why."""
    keys = [(Path(p), load_public_key(p)) for p in trusted_keys]
    from cryptography.exceptions import InvalidSignature

    names = ", ".join(f"{p.name} ({key_id(k)})" for p, k in keys)
    sig_path = bundle_dir / SIGNATURE_FILE
    if not sig_path.is_file():
        raise BundleError(
            f"bundle {bundle_dir} is not signed ({SIGNATURE_FILE} is missing) and "
            f"model.trusted_keys requires a signature by {names}; sign it with "
            "`explorank export --sign-key` or `explorank sign`"
        )
    signature = sig_path.read_bytes()[: SIGNATURE_BYTES + 1]
    if len(signature) != SIGNATURE_BYTES:
        raise BundleError(
            f"bundle {bundle_dir}: {SIGNATURE_FILE} is not an ed25519 signature "
            f"({SIGNATURE_BYTES} bytes expected)"
        )
    for _, key in keys:
        try:
            key.verify(signature, manifest_bytes)
        except InvalidSignature:
            continue
        return key_id(key)
    raise BundleError(
        f"bundle {bundle_dir}: {SIGNATURE_FILE} does not verify against any trusted key "
        f"({names}): {MANIFEST_FILE} was changed after signing, or it was signed by another key"
    )
