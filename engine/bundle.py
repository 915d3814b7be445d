"""Reading a bundle written by ``explorank export`` (see docs/bundle.md).

Every file listed in the manifest is checked against its sha256 before the engine
serves it; a mismatch is a :class:`BundleError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from explorank.errors import BundleError

FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "format_version",
    "embedding_dim",
    "encoder",
    "heads",
    "catalog",
    "files",
    "parity",
)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class CatalogItem:
    id: str
    text: str
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Bundle:
    """A loaded bundle: manifest, catalog and item embeddings in memory."""

    path: Path
    manifest: dict[str, Any]
    items: list[CatalogItem]
    item_embeddings: np.ndarray  # (n, d) float32
    index: dict[str, int]  # item id -> row

    @property
    def embedding_dim(self) -> int:
        return int(self.manifest["embedding_dim"])

    @property
    def max_seq_length(self) -> int:
        return int(self.manifest.get("max_seq_length", 128))

    @property
    def model_name(self) -> str:
        return str(self.manifest.get("model_name", "unknown"))

    @property
    def model_version(self) -> str:
        return str(self.manifest.get("model_version", self.model_name))

    @property
    def encoder_inputs(self) -> list[str]:
        return list(self.manifest["encoder"].get("inputs", ["input_ids", "attention_mask"]))

    @property
    def encoder_output(self) -> str:
        return str(self.manifest["encoder"].get("output", "embedding"))

    @property
    def precisions(self) -> list[str]:
        return list(self.manifest.get("precisions", ["fp32"]))

    def tokenizer_path(self) -> Path:
        tok = self.manifest.get("tokenizer", {})
        rel = tok.get("path", "tokenizer/tokenizer.json") if isinstance(tok, dict) else tok
        return self.path / rel

    def encoder_path(self, precision: str) -> Path:
        enc = self.manifest["encoder"]
        key = {"fp16": "tensorrt"}.get(precision, precision)
        entry = enc.get(key)
        if not entry:
            raise BundleError(
                f"bundle {self.path} has no {precision} encoder; it has {', '.join(self.precisions)}"
            )
        rel = entry["path"] if isinstance(entry, dict) else entry
        return self.path / rel

    def has_tensorrt_plan(self) -> bool:
        return bool(self.manifest["encoder"].get("tensorrt"))

    def heads(self) -> dict[str, dict[str, Any]]:
        """The heads section with paths resolved to absolute paths."""
        out: dict[str, dict[str, Any]] = {}
        for name, head in self.manifest.get("heads", {}).items():
            entry = dict(head)
            if "path" in entry:
                entry["path"] = str(self.path / entry["path"])
            out[name] = entry
        return out


def read_manifest(path: Path) -> dict[str, Any]:
    mpath = Path(path) / "manifest.json"
    if not mpath.is_file():
        raise BundleError(
            f"{path} is not a bundle: {mpath.name} is missing (write one with `explorank export --out {path}`)"
        )
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{mpath}: invalid JSON ({exc})") from exc
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{mpath}: missing required keys {missing}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise BundleError(
            f"{mpath}: format_version {manifest['format_version']!r} is not supported "
            f"(this explorank reads {FORMAT_VERSION}); re-export the bundle"
        )
    return manifest


def verify_bundle(path: Path, manifest: Mapping[str, Any] | None = None) -> None:
    """Check every file's sha256 against the manifest; raise :class:`BundleError`."""
    path = Path(path)
    manifest = manifest if manifest is not None else read_manifest(path)
    files: Mapping[str, str] = manifest["files"]
    if not files:
        raise BundleError(f"{path}/manifest.json lists no files")
    for rel, expected in files.items():
        fpath = path / rel
        if not fpath.is_file():
            raise BundleError(f"bundle file {rel} is missing from {path}")
        actual = sha256_file(fpath)
        if actual != expected:
            raise BundleError(
                f"bundle file {rel} fails checksum verification: sha256 {actual[:16]}… "
                f"!= manifest {expected[:16]}… (the file was modified or corrupted; re-export)"
            )


def load_catalog(path: Path) -> list[CatalogItem]:
    items: list[CatalogItem] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
                item_id = str(obj.pop("id"))
                text = str(obj.pop("text"))
            except (json.JSONDecodeError, KeyError) as exc:
                raise BundleError(
                    f"{path}:{lineno}: expected a JSON object with id and text ({exc})"
                ) from exc
            items.append(CatalogItem(item_id, text, obj))
    return items


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    path = Path(path).expanduser().resolve()
    manifest = read_manifest(path)
    if verify:
        verify_bundle(path, manifest)
    cat = manifest["catalog"]
    items = load_catalog(path / cat["items"])
    emb = np.load(path / cat["embeddings"], allow_pickle=False)
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if (
        emb.ndim != 2
        or emb.shape[0] != len(items)
        or emb.shape[1] != int(manifest["embedding_dim"])
    ):
        raise BundleError(
            f"{path}: item embeddings have shape {emb.shape}, expected ({len(items)}, {manifest['embedding_dim']})"
        )
    index: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.id in index:
            raise BundleError(f"{path}: duplicate catalog item id {item.id!r}")
        index[item.id] = i
    return Bundle(path=path, manifest=manifest, items=items, item_embeddings=emb, index=index)
