"""The typed model of a bundle's ``manifest.json`` (see docs/bundle.md).

A bundle is untrusted input: it may have been downloaded, copied between machines or edited.
Everything the engine reads from the manifest is validated here before any file is opened:

- every section the engine reads is typed (unknown extra keys are kept, for forward
  compatibility, but never interpreted);
- every path the manifest references is a *relative POSIX path inside the bundle*: no
  absolute path, no ``..`` component, no backslash, no empty or ``.`` component;
- every referenced path is listed with its sha256 in ``files``, so that no file is loaded
  unverified (files on disk that ``files`` does not list are never opened).

Where the paths point on disk (symlinks included) is checked by :mod:`explorank.engine.bundle`
when the bundle is loaded. A malformed manifest is a :class:`~explorank.errors.BundleError`
naming the field, never a ``KeyError`` or ``TypeError``.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from explorank.errors import BundleError

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "Manifest",
    "check_relpath",
    "parse_manifest",
]

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
#: A manifest is a few kB; anything far larger is not one (and is not read into memory).
MAX_MANIFEST_BYTES = 16 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_relpath(value: str) -> str:
    """``value`` if it is a canonical relative POSIX path that stays inside the bundle."""
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty relative path")
    problem = None
    if "\x00" in value:
        problem = "contains a NUL byte"
    elif "\\" in value:
        problem = "contains a backslash (use '/')"
    elif value.startswith("/") or _DRIVE.match(value):
        problem = "is absolute"
    else:
        parts = value.split("/")
        if ".." in parts:
            problem = "contains '..'"
        elif "" in parts or "." in parts:
            problem = "has an empty or '.' component"
    if problem:
        raise ValueError(
            f"path {value!r} {problem}; bundle paths must be relative, inside the bundle"
        )
    return value


def _sha256(value: Any) -> str:
    if not isinstance(value, str) or not _SHA256.match(value.lower()):
        raise ValueError("must be a sha256 hex digest (64 hex digits)")
    return value.lower()


RelPath = Annotated[str, AfterValidator(check_relpath)]
Sha256 = Annotated[str, BeforeValidator(_sha256)]
PositiveInt = Annotated[int, Field(strict=True, gt=0)]
Count = Annotated[int, Field(strict=True, ge=0)]


def _path_of(value: Any) -> Any:
    """``{"path": p}`` -> ``p`` (both spellings of a file entry are accepted)."""
    if isinstance(value, dict) and set(value) == {"path"}:
        return value["path"]
    return value


class _Section(BaseModel):
    # Extra keys are kept (a newer exporter may add some) but never interpreted.
    model_config = ConfigDict(extra="allow")


class TokenizerSection(_Section):
    #: tokenizer.json, the file the engine loads.
    path: RelPath = "tokenizer/tokenizer.json"
    #: Every tokenizer file shipped (the HF files next to tokenizer.json).
    files: list[RelPath] = Field(default_factory=list)


class TensorRTEntry(_Section):
    path: RelPath
    precision: Literal["fp16", "fp32", "int8"] = "fp16"


class Int8Config(_Section):
    name: str = "unknown"
    portable: bool | None = None
    #: "static" (calibrated QDQ: batch-independent) or "dynamic"; bundles written before
    #: static INT8 existed have no kind and are dynamic.
    kind: Literal["static", "dynamic"] = "dynamic"


_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Int8Variant(Int8Config):
    """One INT8 encoder of a bundle (``encoder.int8_variants``)."""

    path: RelPath

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not _VARIANT_NAME.match(value):
            raise ValueError("must be 1-64 letters, digits, '_', '.' or '-'")
        return value


EncoderInput = Literal["input_ids", "attention_mask", "token_type_ids"]
Precision = Literal["fp32", "int8", "fp16"]


def _default_inputs() -> list[EncoderInput]:
    return ["input_ids", "attention_mask"]


def _default_precisions() -> list[Precision]:
    return ["fp32"]


class EncoderSection(_Section):
    inputs: list[EncoderInput] = Field(default_factory=_default_inputs, min_length=1)
    output: str = Field("embedding", min_length=1)
    #: The engine pads on the right only (BERT positions, fused Attention mask format).
    padding: Literal["right"] = "right"
    #: The fp32 ONNX encoder; required to serve (a catalog-only bundle may omit it).
    fp32: Annotated[RelPath | None, BeforeValidator(_path_of)] = None
    int8: Annotated[RelPath | None, BeforeValidator(_path_of)] = None
    #: The fp16 ONNX encoder for ONNX Runtime's CUDA execution provider (optional; bundles
    #: exported before it existed have none and still load).
    fp16: Annotated[RelPath | None, BeforeValidator(_path_of)] = None
    tensorrt: TensorRTEntry | None = None
    int8_config: Int8Config | None = None
    #: Every INT8 encoder of the bundle, in the exporter's order of preference; the first is
    #: ``int8`` itself. Absent in bundles with one INT8 encoder (then ``int8`` is the only one).
    int8_variants: list[Int8Variant] = Field(default_factory=list)
    fused_operators: dict[str, int] = Field(default_factory=dict)
    architecture: dict[str, Any] = Field(default_factory=dict)

    @field_validator("tensorrt", mode="before")
    @classmethod
    def _plan_entry(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


class HeadEntry(_Section):
    path: RelPath | None = None
    format: str | None = None


class CatalogSection(_Section):
    items: RelPath
    embeddings: RelPath
    count: Count


class ParityEntry(_Section):
    tolerances: dict[str, float] = Field(default_factory=dict)
    passed: bool | None = None


class ValidationSection(_Section):
    texts: Count = 0
    batch_size: PositiveInt = 64


class Manifest(_Section):
    """``manifest.json``: the fields the engine reads, validated (see docs/bundle.md)."""

    format_version: Literal[1]
    model_name: str = "unknown"
    model_version: str | None = None
    explorank_version: str | None = None
    created_at: str | None = None
    embedding_dim: PositiveInt
    max_seq_length: Annotated[int, Field(strict=True, ge=2, le=8192)] = 128
    tokenizer: TokenizerSection | None = None
    encoder: EncoderSection
    heads: dict[str, HeadEntry]
    catalog: CatalogSection
    precisions: list[Precision] = Field(default_factory=_default_precisions)
    parity: dict[str, ParityEntry]
    validation: ValidationSection | None = None
    #: Relative path -> sha256 of every file the bundle ships (the manifest itself excluded).
    files: dict[RelPath, Sha256] = Field(min_length=1)

    @field_validator("tokenizer", mode="before")
    @classmethod
    def _tokenizer_path(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @field_validator("files")
    @classmethod
    def _no_manifest_in_files(cls, value: dict[str, str]) -> dict[str, str]:
        if MANIFEST_FILE in value:
            raise ValueError(f"lists {MANIFEST_FILE} itself (it cannot hold its own hash)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        enc = self.encoder
        if "int8" in self.precisions and not enc.int8:
            raise ValueError("precisions lists int8 but encoder.int8 is not set")
        if enc.int8_variants:
            names = [v.name for v in enc.int8_variants]
            if len(set(names)) != len(names):
                raise ValueError(f"encoder.int8_variants has duplicate names {names}")
            if enc.int8 not in [v.path for v in enc.int8_variants]:
                raise ValueError("encoder.int8 is not one of encoder.int8_variants' paths")
        if "fp16" in self.precisions and enc.tensorrt is None and not enc.fp16:
            raise ValueError(
                "precisions lists fp16 but neither encoder.fp16 nor encoder.tensorrt is set"
            )
        for field, rel in self.referenced_paths():
            if rel not in self.files:
                raise ValueError(
                    f"{field} references {rel!r}, which is not listed in files with its sha256 "
                    "(no file is loaded unverified)"
                )
        return self

    def referenced_paths(self) -> list[tuple[str, str]]:
        """``(field, path)`` of every file the engine may open, tokenizer included."""
        out: list[tuple[str, str]] = []
        enc = self.encoder
        for name in ("fp32", "int8", "fp16"):
            rel = getattr(enc, name)
            if rel:
                out.append((f"encoder.{name}", rel))
        for i, variant in enumerate(enc.int8_variants):
            out.append((f"encoder.int8_variants[{i}].path", variant.path))
        if enc.tensorrt is not None:
            out.append(("encoder.tensorrt.path", enc.tensorrt.path))
        for name, head in self.heads.items():
            if head.path:
                out.append((f"heads.{name}.path", head.path))
        out.append(("catalog.items", self.catalog.items))
        out.append(("catalog.embeddings", self.catalog.embeddings))
        if self.tokenizer is not None:
            out.append(("tokenizer.path", self.tokenizer.path))
            out.extend((f"tokenizer.files[{i}]", f) for i, f in enumerate(self.tokenizer.files))
        return out

    def as_dict(self) -> dict[str, Any]:
        """The validated manifest as plain JSON data (the keys it was read with, extras kept)."""
        return self.model_dump(mode="json", exclude_unset=True)


#: The keys a manifest must have (the fields without a default).
REQUIRED_KEYS = tuple(name for name, f in Manifest.model_fields.items() if f.is_required())


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _loc(loc: tuple[int | str, ...]) -> str:
    """``('files', '../x', '[key]')`` -> ``files['../x']``; ``('a', 0, 'b')`` -> ``a[0].b``."""
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def _format_errors(exc: ValidationError, limit: int = 4) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        msg = str(err["msg"]).removeprefix("Value error, ")
        got = err.get("input")
        quiet = err["type"] in ("missing", "value_error") or isinstance(got, (dict, list))
        where = (
            f"{_loc(err['loc'])}: " if err["loc"] else ""
        )  # a model-level check names its fields
        parts.append(f"{where}{msg}" + ("" if quiet else f" (got {_short(got)})"))
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse_manifest(data: bytes | str | dict[str, Any], source: str = MANIFEST_FILE) -> Manifest:
    """Validate a manifest (its exact bytes, or already-decoded JSON); raise
    :class:`BundleError` naming ``source`` and the offending field."""
    if isinstance(data, (bytes, str)):
        if len(data) > MAX_MANIFEST_BYTES:
            raise BundleError(f"{source}: {len(data)} bytes is too large for a manifest")
        try:
            obj = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{source}: invalid JSON ({exc})") from None
    else:
        obj = data
    if not isinstance(obj, dict):
        raise BundleError(f"{source}: expected a JSON object, got {type(obj).__name__}")
    version = obj.get("format_version")
    if "format_version" not in obj:
        raise BundleError(f"{source}: format_version is missing; this is not a bundle manifest")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise BundleError(
            f"{source}: format_version {version!r} is not supported (this explorank reads "
            f"{FORMAT_VERSION}); re-export the bundle with this version of explorank"
        )
    try:
        return Manifest.model_validate(obj)
    except ValidationError as exc:
        raise BundleError(f"{source} is invalid: {_format_errors(exc)}") from None
