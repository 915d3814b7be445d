"""A bundle is untrusted input: manifest validation, path confinement, listing, refusals.

Every test works on a copy of the ``tiny_bundle`` fixture (fp32 only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from explorank.cli import main
from explorank.engine.bundle import load_bundle, sha256_file, verify_bundle
from explorank.engine.manifest import parse_manifest
from explorank.errors import BundleError
from tests.bundle_edit import copy_bundle, edit_manifest, flip_byte, truncate

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    return copy_bundle(tiny_bundle, tmp_path / "bundle")


def _outside_copy(bundle: Path, name: str, tmp_path: Path) -> Path:
    """A byte-identical copy of ``bundle/name`` outside the bundle (same sha256)."""
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    target = outside / Path(name).name
    target.write_bytes((bundle / name).read_bytes())
    return target


# ------------------------------------------------------------------ confinement


@pytest.mark.parametrize("verify", [True, False])
def test_etc_passwd_with_its_real_hash_is_refused(bundle: Path, verify: bool) -> None:
    passwd = Path("/etc/passwd")
    if not passwd.is_file():
        pytest.skip("no /etc/passwd here")
    digest = sha256_file(passwd)
    edit_manifest(bundle, lambda m: m["files"].__setitem__("../../../../etc/passwd", digest))
    with pytest.raises(
        BundleError, match=r"files\['\.\./\.\./\.\./\.\./etc/passwd'\]: path .* contains '\.\.'"
    ):
        load_bundle(bundle, verify=verify)
    edit_manifest(bundle, lambda m: m["files"].pop("../../../../etc/passwd"))
    edit_manifest(bundle, lambda m: m["files"].__setitem__("/etc/passwd", digest))
    with pytest.raises(BundleError, match=r"'/etc/passwd' is absolute"):
        load_bundle(bundle, verify=verify)


@pytest.mark.parametrize("how", ["absolute", "dotdot"])
def test_encoder_path_outside_the_bundle_is_refused(bundle: Path, tmp_path: Path, how: str) -> None:
    target = _outside_copy(bundle, "encoder.onnx", tmp_path)
    rel = str(target) if how == "absolute" else "../outside/encoder.onnx"

    def edit(m: dict[str, Any]) -> None:
        m["encoder"]["fp32"] = rel
        m["files"][rel] = sha256_file(target)  # even with its real hash listed

    edit_manifest(bundle, edit)
    problem = "is absolute" if how == "absolute" else "contains '..'"
    for verify in (True, False):
        with pytest.raises(BundleError) as info:
            load_bundle(bundle, verify=verify)
        assert f"'{rel}' {problem}" in str(info.value)


def test_symlink_out_of_the_bundle_is_refused_even_with_the_right_hash(
    bundle: Path, tmp_path: Path
) -> None:
    target = _outside_copy(bundle, "encoder.onnx", tmp_path)
    (bundle / "encoder.onnx").unlink()
    os.symlink(target, bundle / "encoder.onnx")
    assert sha256_file(bundle / "encoder.onnx") == _listed_hash(bundle, "encoder.onnx")
    for verify in (True, False):
        with pytest.raises(BundleError, match=r"encoder\.onnx resolves to .*outside the bundle"):
            load_bundle(bundle, verify=verify)
    # a symlinked directory counts too
    (bundle / "encoder.onnx").unlink()
    (bundle / "encoder.onnx").write_bytes(target.read_bytes())
    tok_outside = tmp_path / "tok"
    (bundle / "tokenizer").rename(tok_outside)
    os.symlink(tok_outside, bundle / "tokenizer", target_is_directory=True)
    with pytest.raises(BundleError, match=r"tokenizer/.* resolves to .*outside the bundle"):
        load_bundle(bundle)


def test_symlink_within_the_bundle_is_fine(bundle: Path) -> None:
    (bundle / "data").mkdir()
    (bundle / "items.jsonl").rename(bundle / "data" / "items.jsonl")
    os.symlink(Path("data") / "items.jsonl", bundle / "items.jsonl")
    assert len(load_bundle(bundle).items) == 60


def _listed_hash(bundle: Path, rel: str) -> str:
    return str(json.loads((bundle / "manifest.json").read_text())["files"][rel])


def test_catalog_path_with_dotdot_is_a_bundle_error(bundle: Path, tmp_path: Path) -> None:
    target = _outside_copy(bundle, "items.jsonl", tmp_path)

    def edit(m: dict[str, Any]) -> None:
        m["catalog"]["items"] = "../outside/items.jsonl"
        m["files"]["../outside/items.jsonl"] = sha256_file(target)

    edit_manifest(bundle, edit)
    with pytest.raises(BundleError, match=r"\.\./outside/items\.jsonl.*contains '\.\.'"):
        load_bundle(bundle, verify=False)


@pytest.mark.parametrize(
    ("rel", "field"),
    [
        ("encoder.onnx", "encoder.fp32"),
        ("head_neural.onnx", "heads.neural.path"),
        ("head_mf.npz", "heads.mf.path"),
        ("items.jsonl", "catalog.items"),
        ("item_embeddings.npy", "catalog.embeddings"),
        ("tokenizer/tokenizer.json", "tokenizer.path"),
    ],
)
def test_referenced_file_missing_from_files_is_refused_even_without_verify(
    bundle: Path, rel: str, field: str
) -> None:
    edit_manifest(bundle, lambda m: m["files"].pop(rel))
    with pytest.raises(BundleError, match=rf"{field}.*references '{rel}'.*not listed in files"):
        load_bundle(bundle, verify=False)


def test_unlisted_files_in_the_directory_are_ignored(bundle: Path) -> None:
    (bundle / "evil.onnx").write_bytes(b"not a model")
    (bundle / "tokenizer" / "extra.json").write_text("{")
    loaded = load_bundle(bundle)
    assert "evil.onnx" not in loaded.listed  # type: ignore[operator]


def test_paths_are_checked_again_when_the_engine_asks_for_them(bundle: Path) -> None:
    loaded = load_bundle(bundle)
    assert loaded.encoder_path("fp32") == (bundle / "encoder.onnx").resolve()
    loaded.manifest["encoder"]["fp32"] = "../outside/encoder.onnx"
    with pytest.raises(BundleError, match="contains '..'"):
        loaded.encoder_path("fp32")
    (bundle / "other.onnx").write_bytes((bundle / "encoder.onnx").read_bytes())
    loaded.manifest["encoder"]["fp32"] = "other.onnx"
    with pytest.raises(BundleError, match="not listed in files"):
        loaded.encoder_path("fp32")


# ------------------------------------------------------------------ manifest model


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.__setitem__("embedding_dim", "32"), "embedding_dim"),
        (lambda m: m.pop("encoder"), "encoder: Field required"),
        (lambda m: m["catalog"].pop("count"), "catalog.count"),
        (lambda m: m.__setitem__("heads", ["mf"]), "heads"),
        (lambda m: m["encoder"].__setitem__("fp32", 7), "encoder.fp32"),
        (lambda m: m["encoder"].__setitem__("padding", "left"), "encoder.padding"),
        (lambda m: m.__setitem__("precisions", ["fp32", "int8"]), "encoder.int8 is not set"),
        (
            lambda m: m["files"].__setitem__("items.jsonl", "abc"),
            r"files\['items\.jsonl'\]: .*sha256",
        ),
        (lambda m: m["files"].__setitem__("a//b", "0" * 64), "empty or '.' component"),
        (lambda m: m["tokenizer"]["files"].append("..\\x"), "backslash"),
        (lambda m: m["validation"].__setitem__("batch_size", 0), "validation.batch_size"),
        (lambda m: m["parity"]["fp32"].__setitem__("tolerances", {"x": "y"}), "parity.fp32"),
    ],
)
def test_malformed_manifest_is_a_bundle_error_naming_the_field(
    bundle: Path, edit: Any, match: str
) -> None:
    edit_manifest(bundle, edit)
    with pytest.raises(BundleError, match=match) as info:
        load_bundle(bundle, verify=False)
    assert "manifest.json" in str(info.value) and "\n" not in str(info.value)


def test_manifest_model_keeps_unknown_keys_and_reads_older_spellings(tiny_bundle: Path) -> None:
    raw = (tiny_bundle / "manifest.json").read_bytes()
    m = json.loads(raw)
    m["future_section"] = {"x": 1}
    m["encoder"]["fp32"] = {"path": "encoder.onnx"}
    m["tokenizer"] = "tokenizer/tokenizer.json"
    spec = parse_manifest(m)
    assert spec.encoder.fp32 == "encoder.onnx" and spec.tokenizer is not None
    assert spec.as_dict()["future_section"] == {"x": 1}
    with pytest.raises(BundleError, match="invalid JSON"):
        parse_manifest(raw[: len(raw) // 2])
    with pytest.raises(BundleError, match="expected a JSON object"):
        parse_manifest(b"[1, 2]")


# ------------------------------------------------------------------ refusals naming the file


def test_tampered_file_is_refused_naming_it(bundle: Path) -> None:
    flip_byte(bundle / "item_embeddings.npy")
    with pytest.raises(BundleError, match="item_embeddings.npy fails checksum verification"):
        load_bundle(bundle)


@pytest.mark.parametrize(
    ("rel", "unverified"),
    [
        ("item_embeddings.npy", r"embeddings file item_embeddings\.npy cannot be read.*truncated"),
        ("items.jsonl", r"catalog file items\.jsonl, line \d+: .*truncated"),
        ("encoder.onnx", None),
    ],
)
def test_truncated_file_is_refused_naming_it(
    bundle: Path, rel: str, unverified: str | None
) -> None:
    truncate(bundle / rel, 0.5)
    with pytest.raises(BundleError, match=rf"{rel} fails checksum verification"):
        load_bundle(bundle)
    if unverified is not None:  # --no-verify: the loader itself notices
        with pytest.raises(BundleError, match=unverified):
            load_bundle(bundle, verify=False)


def test_truncated_onnx_without_verify_is_a_bundle_error(bundle: Path) -> None:
    from explorank.engine.backends import create_backend

    truncate(bundle / "encoder.onnx", 0.3)
    loaded = load_bundle(bundle, verify=False)
    with pytest.raises(BundleError, match=r"encoder\.onnx is not a valid ONNX model"):
        create_backend(loaded, precision="fp32", provider="cpu")


def test_catalog_cut_at_a_line_boundary_is_refused_without_verify(bundle: Path) -> None:
    lines = (bundle / "items.jsonl").read_text().splitlines(keepends=True)
    (bundle / "items.jsonl").write_text("".join(lines[:40]))
    with pytest.raises(BundleError, match=r"items\.jsonl has 40 items but catalog\.count is 60"):
        load_bundle(bundle, verify=False)


def test_wrong_format_version_is_refused(bundle: Path) -> None:
    edit_manifest(bundle, lambda m: m.__setitem__("format_version", 2))
    with pytest.raises(BundleError, match=r"manifest\.json: format_version 2 is not supported"):
        load_bundle(bundle)


def test_missing_file_is_refused_naming_it(bundle: Path) -> None:
    (bundle / "head_mf.npz").unlink()
    for verify in (True, False):
        with pytest.raises(BundleError, match=r"bundle file head_mf\.npz is missing"):
            load_bundle(bundle, verify=verify)


def test_a_fifo_listed_in_files_is_not_read(bundle: Path) -> None:
    (bundle / "head_mf.npz").unlink()
    os.mkfifo(bundle / "head_mf.npz")  # reading it would block forever
    with pytest.raises(BundleError, match=r"head_mf\.npz is not a regular file"):
        verify_bundle(bundle)


# ------------------------------------------------------------------ the serve command


def test_serve_refuses_a_bad_bundle_with_one_line(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit_manifest(bundle, lambda m: m["catalog"].__setitem__("items", "../items.jsonl"))
    args = ["serve", "--bundle", str(bundle), "--port", "0", "--metrics-port", "0"]
    assert main([*args, "--state-dir", str(tmp_path / "s"), "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("explorank: error:")]
    assert len(errors) == 1 and "catalog.items" in errors[0] and "../items.jsonl" in errors[0]


def test_serve_process_exits_2_naming_the_tampered_file(bundle: Path, tmp_path: Path) -> None:
    flip_byte(bundle / "encoder.onnx")
    env = {**os.environ, "EXPLORANK_STATE_DIR": str(tmp_path / "state")}
    cmd = [sys.executable, "-m", "explorank", "serve", "--bundle", str(bundle)]
    proc = subprocess.run(
        [*cmd, "--port", "0", "--metrics-port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("explorank: error: bundle file encoder.onnx fails checksum")
