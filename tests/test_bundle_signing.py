"""Optional ed25519 signatures of the manifest: keygen, export --sign-key, sign, trusted keys.

Keys are generated at run time (no key material in the repository); bundles are copies of
the ``tiny_bundle`` fixture."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from explorank.cli import main
from explorank.engine.bundle import load_bundle
from explorank.engine.config import load_config
from explorank.engine.signing import (
    SIGNATURE_FILE,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    sign_bundle,
)
from explorank.errors import BundleError, ConfigError, InvalidArgumentError
from tests.bundle_edit import copy_bundle, edit_manifest, flip_byte

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    return {name: generate_keypair(tmp_path / "keys", name) for name in ("release", "other")}


@pytest.fixture
def signed(tiny_bundle: Path, tmp_path: Path, keys: dict[str, tuple[Path, Path]]) -> Path:
    bundle = copy_bundle(tiny_bundle, tmp_path / "bundle")
    sign_bundle(bundle, load_private_key(keys["release"][0]))
    return bundle


def test_signed_bundle_is_accepted_with_the_right_key(
    signed: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    pub = keys["release"][1]
    loaded = load_bundle(signed, trusted_keys=[pub])
    assert loaded.signed_by == key_id(load_public_key(pub))
    # any one of several trusted keys will do
    assert load_bundle(signed, trusted_keys=[keys["other"][1], pub]).signed_by == loaded.signed_by
    # without trusted keys the signature is not required (nor checked)
    assert load_bundle(signed).signed_by is None


def test_signed_bundle_is_refused_with_another_key(
    signed: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    with pytest.raises(BundleError, match=r"does not verify against any trusted key \(other"):
        load_bundle(signed, trusted_keys=[keys["other"][1]])


def test_unsigned_bundle_is_refused(
    tiny_bundle: Path, tmp_path: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "unsigned")
    for verify in (True, False):
        with pytest.raises(BundleError, match=rf"is not signed \({SIGNATURE_FILE} is missing\)"):
            load_bundle(bundle, verify=verify, trusted_keys=[keys["release"][1]])


def test_manifest_edited_after_signing_is_refused(
    signed: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    pub = keys["release"][1]
    original = (signed / "manifest.json").read_bytes()
    edit_manifest(signed, lambda m: m.__setitem__("model_name", "swapped"))
    with pytest.raises(BundleError, match="was changed after signing"):
        load_bundle(signed, trusted_keys=[pub])
    # the exact bytes are signed: even a whitespace change breaks it
    (signed / "manifest.json").write_bytes(original + b"\n")
    with pytest.raises(BundleError, match="was changed after signing"):
        load_bundle(signed, trusted_keys=[pub])
    (signed / "manifest.json").write_bytes(original)
    (signed / SIGNATURE_FILE).write_bytes(b"short")
    with pytest.raises(BundleError, match="is not an ed25519 signature"):
        load_bundle(signed, trusted_keys=[pub])


def test_signature_covers_the_files_through_their_hashes(
    signed: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    flip_byte(signed / "head_neural.onnx")
    with pytest.raises(BundleError, match=r"head_neural\.onnx fails checksum verification"):
        load_bundle(signed, trusted_keys=[keys["release"][1]])


def test_trusted_key_errors_name_the_setting(
    tmp_path: Path, signed: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    with pytest.raises(ConfigError, match="model.trusted_keys: cannot read"):
        load_bundle(signed, trusted_keys=[tmp_path / "nope.pem"])
    with pytest.raises(ConfigError, match="model.trusted_keys: .* is not a PEM public key"):
        load_bundle(signed, trusted_keys=[keys["release"][0]])  # the private key
    ec_pub = tmp_path / "ec.pub.pem"
    ec_pub.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ConfigError, match="not an ed25519 public key"):
        load_bundle(signed, trusted_keys=[ec_pub])
    with pytest.raises(InvalidArgumentError, match="sign_key: .* not an unencrypted PEM"):
        load_private_key(keys["release"][1])


def test_trusted_keys_setting(tmp_path: Path) -> None:
    assert load_config(environ={}).model.trusted_keys == []  # off by default
    cfg = load_config(
        environ={"EXPLORANK__MODEL__TRUSTED_KEYS": '["/etc/explorank/a.pub.pem"]'},
    )
    assert cfg.model.trusted_keys == [Path("/etc/explorank/a.pub.pem")]


def test_keygen_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--out", str(tmp_path / "k")]) == 0
    summary = json.loads(capsys.readouterr().out)
    private, public = Path(summary["private_key"]), Path(summary["public_key"])
    assert private.name == "bundle-signing.key.pem" and public.name == "bundle-signing.pub.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert summary["key_id"] == key_id(load_public_key(public))
    before = private.read_bytes()
    assert main(["keygen", "--out", str(tmp_path / "k")]) == 2  # never overwrites a key
    assert "already exists" in capsys.readouterr().err
    assert private.read_bytes() == before


def test_sign_command_verifies_before_signing(
    tiny_bundle: Path,
    tmp_path: Path,
    keys: dict[str, tuple[Path, Path]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    private, public = keys["release"]
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    assert main(["sign", "--bundle", str(bundle), "--key", str(private)]) == 0
    assert json.loads(capsys.readouterr().out)["key_id"] == key_id(load_public_key(public))
    assert load_bundle(bundle, trusted_keys=[public]).signed_by
    tampered = copy_bundle(tiny_bundle, tmp_path / "t")
    flip_byte(tampered / "items.jsonl")
    assert main(["sign", "--bundle", str(tampered), "--key", str(private)]) == 2
    assert "items.jsonl fails checksum" in capsys.readouterr().err
    assert not (tampered / SIGNATURE_FILE).exists()


def test_export_sign_key_and_serve_trusted_key(
    tiny_model_dir: Path,
    tiny_catalog: Path,
    tmp_path: Path,
    keys: dict[str, tuple[Path, Path]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    private, public = keys["release"]
    out = tmp_path / "bundle"
    export = ["export", "--model", str(tiny_model_dir), "--catalog", str(tiny_catalog)]
    export += ["--precision", "fp32", "--tensorrt", "off", "--no-progress", "--out", str(out)]
    assert main([*export, "--sign-key", str(private)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["signature"] == SIGNATURE_FILE
    assert summary["key_id"] == key_id(load_public_key(public))
    manifest = json.loads((out / "manifest.json").read_text())
    assert SIGNATURE_FILE not in manifest["files"]
    assert load_bundle(out, trusted_keys=[public]).signed_by == summary["key_id"]

    serve = ["serve", "--bundle", str(out), "--port", "0", "--metrics-port", "0"]
    serve += ["--state-dir", str(tmp_path / "s"), "--trusted-key", str(keys["other"][1])]
    assert main(serve) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("explorank: error:")]
    assert len(lines) == 1 and "does not verify against any trusted key" in lines[0]

    # a bad key fails the export before any work, and nothing is written
    assert main([*export[:-1], str(tmp_path / "never"), "--sign-key", str(public)]) == 2
    assert "sign_key" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
