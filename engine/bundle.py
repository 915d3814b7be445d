"""Reading a bundle written by ``explorank export`` (see docs/bundle.md).

A bundle is untrusted input. Before the engine opens any of its files:

1. ``manifest.json`` is read once, as bytes; with trusted keys configured, its detached
   ed25519 signature (``manifest.json.sig``) must verify against one of them
   (:mod:`explorank.engine.signing`);
2. the same bytes are validated by :class:`~explorank.engine.manifest.Manifest`: every
   referenced path is relative, stays inside the bundle and is listed in ``files``;
3. every file in ``files`` must resolve (symlinks resolved) to a regular file inside the
   bundle directory, and (unless checksums are switched off) match its sha256.

Only listed files are ever opened; anything else in the directory is ignored. Every
failure is a :class:`BundleError` that names the file or the manifest field.
"""

from __future__ import annotations

import hashlib
import json
import logging
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from explorank.engine.manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    REQUIRED_KEYS,
    Manifest,
    check_relpath,
    parse_manifest,
)
from explorank.errors import BundleError

__all__ = [
    "FORMAT_VERSION",
    "REQUIRED_KEYS",
    "Bundle",
    "CatalogItem",
    "confined_path",
    "load_bundle",
    "read_manifest",
    "read_manifest_bytes",
    "sha256_file",
    "verify_bundle",
]

log = logging.getLogger("explorank.engine")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def confined_path(root: Path, rel: str, *, what: str = "bundle file") -> Path:
    """The resolved path of ``rel`` under the (resolved) bundle directory ``root``.

    Raises :class:`BundleError` naming ``rel`` when it is not a canonical relative path,
    is missing, resolves (through symlinks) outside ``root``, or is not a regular file."""
    try:
        check_relpath(rel)
    except ValueError as exc:
        raise BundleError(f"{what} {rel!r}: {exc}") from None
    try:
        resolved = (root / rel).resolve(strict=True)
    except FileNotFoundError:
        raise BundleError(f"{what} {rel} is missing from {root}") from None
    except (OSError, RuntimeError) as exc:  # symlink loop, permission
        raise BundleError(f"{what} {rel} cannot be resolved in {root}: {exc}") from None
    if not resolved.is_relative_to(root):
        raise BundleError(
            f"{what} {rel} resolves to {resolved}, outside the bundle {root}; refusing to load it"
        )
    try:
        mode = resolved.stat().st_mode
    except OSError as exc:
        raise BundleError(f"{what} {rel} cannot be read: {exc}") from None
    if not stat.S_ISREG(mode):
        raise BundleError(f"{what} {rel} is not a regular file")
    return resolved


@dataclass(frozen=True)
class CatalogItem:
    id: str
    text: str
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Bundle:
    """A loaded bundle: manifest, catalog and item embeddings in memory.

    ``manifest`` is the validated manifest as a plain dict (``spec`` is the typed model).
    ``listed`` holds the paths ``load_bundle`` verified: the path accessors refuse any
    other file. A ``Bundle`` built by hand (tests) has ``listed=None``; its paths are still
    confined to ``path``."""

    path: Path
    manifest: dict[str, Any]
    items: list[CatalogItem]
    item_embeddings: np.ndarray  # (n, d) float32
    index: dict[str, int]  # item id -> row
    spec: Manifest | None = None
    listed: frozenset[str] | None = None
    #: The key id of the trusted key the manifest's signature verified against, if any.
    signed_by: str | None = None

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
        return str(self.manifest.get("model_version") or self.model_name)

    @property
    def encoder_inputs(self) -> list[str]:
        return list(self.manifest["encoder"].get("inputs", ["input_ids", "attention_mask"]))

    @property
    def encoder_output(self) -> str:
        return str(self.manifest["encoder"].get("output", "embedding"))

    @property
    def precisions(self) -> list[str]:
        return list(self.manifest.get("precisions", ["fp32"]))

    def file(self, rel: Any, field: str) -> Path:
        """The path of the bundle file ``rel`` (manifest field ``field``), confined to the
        bundle and, for a loaded bundle, listed (verified) in ``files``."""
        if not isinstance(rel, str):
            raise BundleError(f"{self.path}/{MANIFEST_FILE}: {field} must be a path string")
        try:
            check_relpath(rel)
        except ValueError as exc:
            raise BundleError(f"{self.path}/{MANIFEST_FILE}: {field}: {exc}") from None
        if self.listed is not None and rel not in self.listed:
            raise BundleError(
                f"{self.path}/{MANIFEST_FILE}: {field} references {rel!r}, which is not listed "
                "in files; refusing to load an unverified file"
            )
        root = self.path.resolve()
        return confined_path(root, rel, what=f"{field} file")

    def tokenizer_path(self) -> Path:
        tok = self.manifest.get("tokenizer") or {}
        rel = tok.get("path", "tokenizer/tokenizer.json") if isinstance(tok, dict) else tok
        return self.file(rel, "tokenizer.path")

    def encoder_path(self, precision: str) -> Path:
        """The ONNX encoder of ``precision`` (``fp32``, ``int8``, or ``fp16``: the fp16 ONNX
        for the CUDA execution provider; the TensorRT plan is :meth:`plan_path`)."""
        enc = self.manifest["encoder"]
        entry = enc.get(precision)
        if not entry:
            what = "ONNX encoder" if precision == "fp16" else "encoder"
            raise BundleError(
                f"bundle {self.path} has no {precision} {what}; it has {', '.join(self.precisions)}"
                + (
                    " (its fp16 is the TensorRT plan only)"
                    if precision == "fp16" and self.has_tensorrt_plan()
                    else ""
                )
            )
        rel = entry["path"] if isinstance(entry, dict) else entry
        return self.file(rel, f"encoder.{precision}")

    def plan_path(self) -> Path:
        """The TensorRT plan (``encoder.tensorrt.path``)."""
        entry = self.manifest["encoder"].get("tensorrt")
        if not entry:
            raise BundleError(f"bundle {self.path} has no TensorRT plan")
        rel = entry["path"] if isinstance(entry, dict) else entry
        return self.file(rel, "encoder.tensorrt")

    def int8_variants(self) -> list[dict[str, Any]]:
        """The bundle's INT8 encoders in the exporter's order of preference, each a dict with
        at least ``name``, ``kind`` (``"static"``/``"dynamic"``) and ``path`` (relative).

        A bundle written before several variants existed has one: ``encoder.int8`` with
        ``encoder.int8_config`` (dynamic)."""
        enc = self.manifest["encoder"]
        if "int8" not in self.precisions or not enc.get("int8"):
            return []
        listed = enc.get("int8_variants") or []
        if listed:
            return [{"kind": "dynamic", **dict(v)} for v in listed]
        config = dict(enc.get("int8_config") or {})
        rel = enc["int8"]["path"] if isinstance(enc["int8"], dict) else enc["int8"]
        return [
            {
                **config,
                "name": str(config.get("name") or "int8"),
                "kind": str(config.get("kind") or "dynamic"),
                "path": rel,
            }
        ]

    def int8_variant(self, name: str | None = None) -> dict[str, Any]:
        """The INT8 variant ``name`` (default: the first); a :class:`BundleError` naming the
        variants there are when it is missing."""
        variants = self.int8_variants()
        if not variants:
            raise BundleError(
                f"bundle {self.path} has no int8 encoder; it has {', '.join(self.precisions)}"
            )
        if name is None:
            return variants[0]
        for v in variants:
            if v["name"] == name:
                return v
        raise BundleError(
            f"bundle {self.path} has no INT8 variant {name!r}; it has "
            + ", ".join(v["name"] for v in variants)
        )

    def int8_path(self, name: str | None = None) -> Path:
        """The (confined, verified) file of the INT8 variant ``name`` (default: the first)."""
        variants = self.int8_variants()
        variant = self.int8_variant(name)
        index = variants.index(variant)
        field = f"encoder.int8_variants[{index}].path" if len(variants) > 1 else "encoder.int8"
        return self.file(variant["path"], field)

    def has_tensorrt_plan(self) -> bool:
        return bool(self.manifest["encoder"].get("tensorrt"))

    def has_fp16_onnx(self) -> bool:
        """Whether the bundle ships the fp16 ONNX encoder for the CUDA execution provider."""
        return bool(self.manifest["encoder"].get("fp16"))

    def heads(self) -> dict[str, dict[str, Any]]:
        """The heads section with paths resolved to absolute (confined, verified) paths."""
        out: dict[str, dict[str, Any]] = {}
        for name, head in self.manifest.get("heads", {}).items():
            entry = dict(head)
            if entry.get("path") is not None:
                entry["path"] = str(self.file(entry["path"], f"heads.{name}.path"))
            out[name] = entry
        return out


def read_manifest_bytes(path: Path) -> bytes:
    """The exact bytes of ``path/manifest.json`` (what a signature covers)."""
    mpath = Path(path) / MANIFEST_FILE
    if not mpath.is_file():
        raise BundleError(
            f"{path} is not a bundle: {mpath.name} is missing (write one with `explorank export --out {path}`)"
        )
    with open(mpath, "rb") as fh:
        data = fh.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{mpath}: larger than {MAX_MANIFEST_BYTES} bytes; not a manifest")
    return data


def read_spec(path: Path) -> Manifest:
    """``path/manifest.json`` validated (see :class:`Manifest`)."""
    return parse_manifest(read_manifest_bytes(path), str(Path(path) / MANIFEST_FILE))


def read_manifest(path: Path) -> dict[str, Any]:
    """``path/manifest.json`` validated, as a plain dict."""
    return read_spec(path).as_dict()


def verify_bundle(
    path: Path,
    manifest: Manifest | Mapping[str, Any] | None = None,
    *,
    checksums: bool = True,
) -> Manifest:
    """Check that every file in ``files`` is a regular file inside the bundle and (with
    ``checksums``) matches its sha256; return the validated manifest. Raises
    :class:`BundleError` naming the file."""
    root = Path(path).expanduser().resolve()
    if manifest is None:
        spec = read_spec(root)
    elif isinstance(manifest, Manifest):
        spec = manifest
    else:
        spec = parse_manifest(dict(manifest), str(root / MANIFEST_FILE))
    for rel, expected in spec.files.items():
        fpath = confined_path(root, rel)
        if not checksums:
            continue
        actual = sha256_file(fpath)
        if actual != expected:
            raise BundleError(
                f"bundle file {rel} fails checksum verification: sha256 {actual[:16]}… "
                f"!= manifest {expected[:16]}… (the file was modified or corrupted; re-export)"
            )
    return spec


def load_catalog(path: Path, name: str | None = None) -> list[CatalogItem]:
    name = name or str(path)
    items: list[CatalogItem] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise TypeError(f"a JSON {type(obj).__name__}")
                    item_id = str(obj.pop("id"))
                    text = str(obj.pop("text"))
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise BundleError(
                        f"catalog file {name}, line {lineno}: expected a JSON object with id and "
                        f"text ({exc}); the file is truncated or corrupted"
                    ) from None
                items.append(CatalogItem(item_id, text, obj))
    except UnicodeDecodeError as exc:
        raise BundleError(f"catalog file {name} is not UTF-8 ({exc})") from None
    return items


def load_embeddings(path: Path, name: str, shape: tuple[int, int]) -> np.ndarray:
    """``(n, d)`` float32 from an ``.npy`` file (no pickles), checked against ``shape``."""
    try:
        emb = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise BundleError(
            f"embeddings file {name} cannot be read ({exc}); the file is truncated or corrupted"
        ) from None
    if emb.ndim != 2 or tuple(emb.shape) != shape or emb.dtype.kind != "f":
        raise BundleError(
            f"embeddings file {name} holds {emb.dtype} {tuple(emb.shape)}, expected float {shape} "
            "(catalog.count x embedding_dim)"
        )
    return np.ascontiguousarray(np.array(emb, dtype=np.float32))


def load_bundle(
    path: str | Path,
    *,
    verify: bool = True,
    trusted_keys: Sequence[str | Path] = (),
) -> Bundle:
    """Load the bundle at ``path`` (see the module docstring for every check).

    ``verify=False`` skips the sha256 of each file but still enforces confinement and
    listing; ``trusted_keys`` (ed25519 public keys, PEM) requires a valid signature."""
    path = Path(path).expanduser().resolve()
    raw = read_manifest_bytes(path)
    signed_by = None
    if trusted_keys:
        from explorank.engine.signing import check_signature

        signed_by = check_signature(path, raw, trusted_keys)
        log.info("bundle %s: manifest signed by trusted key %s", path, signed_by)
    spec = parse_manifest(raw, str(path / MANIFEST_FILE))
    verify_bundle(path, spec, checksums=verify)
    if not verify:
        log.warning(
            "bundle %s: checksum verification is off (--no-verify)%s",
            path,
            "; the signature covers the files only through their checksums" if signed_by else "",
        )
    cat = spec.catalog
    items = load_catalog(confined_path(path, cat.items), cat.items)
    if len(items) != cat.count:
        raise BundleError(
            f"catalog file {cat.items} has {len(items)} items but catalog.count is {cat.count} "
            "(the file is truncated or corrupted)"
        )
    emb = load_embeddings(
        confined_path(path, cat.embeddings), cat.embeddings, (cat.count, spec.embedding_dim)
    )
    index: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.id in index:
            raise BundleError(f"catalog file {cat.items}: duplicate item id {item.id!r}")
        index[item.id] = i
    return Bundle(
        path=path,
        manifest=spec.as_dict(),
        items=items,
        item_embeddings=emb,
        index=index,
        spec=spec,
        listed=frozenset(spec.files),
        signed_by=signed_by,
    )
