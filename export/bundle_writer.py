"""Writing a bundle directory: staging, catalog files, tokenizer, manifest, atomic publish.

A bundle is written into a hidden staging directory next to ``out`` and renamed into place only
after every artefact passed its parity gate and the manifest verified, so a failed or
interrupted export never leaves a half bundle at ``out`` (an existing bundle there stays intact
until the new one replaces it). See docs/bundle.md for the format.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from explorank import __version__
from explorank.engine.bundle import FORMAT_VERSION, sha256_file, verify_bundle
from explorank.engine.signing import SIGNATURE_FILE
from explorank.errors import InvalidArgumentError

TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
ITEMS_FILE = "items.jsonl"
EMBEDDINGS_FILE = "item_embeddings.npy"


def check_out_dir(out: Path) -> Path:
    """``out`` may be absent, an empty directory, or an existing bundle (to be replaced)."""
    out = Path(out).expanduser().absolute()
    if out.exists():
        if not out.is_dir():
            raise InvalidArgumentError(
                "out", f"{out} exists and is not a directory; choose another --out"
            )
        if any(out.iterdir()) and not (out / "manifest.json").is_file():
            raise InvalidArgumentError(
                "out",
                f"{out} exists, is not empty and is not a bundle; refusing to replace it (choose another --out)",
            )
    if not out.parent.is_dir():
        raise InvalidArgumentError("out", f"the parent directory {out.parent} does not exist")
    return out


def staging_dir(out: Path) -> Path:
    """A fresh hidden directory on the same filesystem as ``out`` (so the final rename is atomic)."""
    stage = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    return stage


def publish(stage: Path, out: Path) -> None:
    """Move ``stage`` to ``out``, replacing an existing bundle only after the move succeeded."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    try:
        os.replace(stage, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_items(stage: Path, items: Sequence[Any]) -> None:
    """``items.jsonl``: one ``{"id", "text"}`` per line, in catalog order (row i = embedding i)."""
    with open(stage / ITEMS_FILE, "w", encoding="utf-8", newline="\n") as fh:
        for item in items:
            fh.write(json.dumps({"id": item.id, "text": item.text}, ensure_ascii=False) + "\n")


def write_embeddings(stage: Path, embeddings: np.ndarray) -> None:
    np.save(
        stage / EMBEDDINGS_FILE,
        np.ascontiguousarray(embeddings, dtype=np.float32),
        allow_pickle=False,
    )


def write_tokenizer(stage: Path, model_dir: Path, tokenizer: Any) -> dict[str, Any]:
    """Copy the HF tokenizer files; ``tokenizer.json`` is always present (converted if needed)."""
    tdir = stage / TOKENIZER_DIR
    tdir.mkdir()
    files = []
    for name in TOKENIZER_FILES:
        src = Path(model_dir) / name
        if src.is_file():
            shutil.copyfile(src, tdir / name)
            files.append(f"{TOKENIZER_DIR}/{name}")
    if not (tdir / "tokenizer.json").is_file():
        tokenizer.save(str(tdir / "tokenizer.json"))
        files.insert(0, f"{TOKENIZER_DIR}/tokenizer.json")
    return {"path": f"{TOKENIZER_DIR}/tokenizer.json", "files": files}


def file_hashes(stage: Path) -> dict[str, str]:
    """sha256 of every file under ``stage`` except the manifest and its signature, keyed by
    POSIX relative path."""
    out = {}
    for path in sorted(stage.rglob("*")):
        rel = path.relative_to(stage).as_posix()
        if path.is_file() and rel not in ("manifest.json", SIGNATURE_FILE):
            out[rel] = sha256_file(path)
    return out


def finish_manifest(stage: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add versioning, timestamps and file hashes; write ``manifest.json``; verify the stage."""
    files = file_hashes(stage)
    manifest = {
        "format_version": FORMAT_VERSION,
        "explorank_version": __version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **manifest,
        "files": files,
    }
    if "model_version" not in manifest:
        manifest["model_version"] = (
            f"{manifest.get('model_name', 'model')}-{files['encoder.onnx'][:12]}"
        )
    (stage / "manifest.json").write_text(
        json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8"
    )
    verify_bundle(stage)  # what the engine will read: the manifest model, confinement, hashes
    return manifest
