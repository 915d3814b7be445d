"""Datasets for fine-tuning: an item catalog plus user-item interactions.

Fine-tuning needs two things: what each item *is* (its text, which the BERT encoder reads) and
what users *did* (which items they liked, and when, so that a user's context can be built from
the items they liked before a target interaction). This module turns the files people already
have on disk into one in-memory :class:`Dataset`.

Supported inputs
----------------
``movielens:DIR`` (or a directory holding one of these layouts):

* ``ml-latest-small`` / ``ml-25m`` style: ``movies.csv`` (``movieId,title,genres``, genres
  separated by ``|``) and ``ratings.csv`` (``userId,movieId,rating,timestamp``).
* ``ml-100k`` style: ``u.item`` (``|``-separated, latin-1: id, title, release date, video release
  date, IMDb URL, then 19 genre flags) and ``u.data`` (tab-separated ``user item rating
  timestamp``).
* ``ml-1m`` style: ``movies.dat`` and ``ratings.dat`` (``::``-separated, latin-1).

The item text is the title plus the genres, e.g.
``"Toy Story (1995). Genres: Adventure, Animation, Children."``, plus, when the directory
has the ml-latest ``tags.csv``, the movie's 8 most frequent tags (``" Tags: pixar, fun."``).
Star ratings become values in [-1, 1] with ``value = clip((rating - 3) / 2, -1, 1)``: 5 stars
-> 1.0, 4 -> 0.5, 3 -> 0.0, 2 -> -0.5, 1 -> -1.0; half stars map in between (4.5 -> 0.75) and
0.5 stars clips to -1.0. Fine-tuning treats ``value > 0`` (by default) as a positive.

Plain format (CSV or JSONL, chosen by the file extension ``.csv`` / ``.jsonl``):

* catalog: one item per row with ``id`` (string, unique) and ``text`` (non-empty string).
  CSV needs a header row ``id,text`` (quote texts that contain commas); JSONL has one object
  per line: ``{"id": "film-00042", "text": "A quiet drama about ..."}``.
* interactions: one row per interaction with ``user_id``, ``item_id`` (an ``id`` from the
  catalog), optional ``value`` (a number in [-1, 1]; positive = the user liked it; default 1.0
  for implicit feedback such as clicks) and optional ``timestamp`` (integer, e.g. unix seconds;
  default: the row number, i.e. file order is time order). CSV header:
  ``user_id,item_id,value,timestamp``; JSONL: ``{"user_id": "u1", "item_id": "film-00042",
  "value": 1.0, "timestamp": 1700000000}``.

A directory given to :func:`load_dataset` that is not MovieLens is read as the plain format
when it holds ``catalog.{jsonl,csv}`` and ``interactions.{jsonl,csv}``.

Malformed rows raise :class:`DataFormatError` naming the file, the line and what to fix.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from explorank.engine.text import user_context_text  # noqa: F401  (re-exported: one rule for training and serving)
from explorank.errors import InvalidArgumentError


class DataFormatError(InvalidArgumentError):
    """A data file is missing or one of its rows is malformed; names the file and line."""

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(where, message)


@dataclass(frozen=True)
class Item:
    id: str
    text: str


@dataclass(frozen=True)
class Interaction:
    user_id: str
    item_id: str
    value: float  # in [-1, 1]; > 0 means the user liked the item
    timestamp: int


@dataclass
class Dataset:
    items: list[Item]
    interactions: list[Interaction]
    name: str = "dataset"
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def item_index(self) -> dict[str, int]:
        """Item id -> row in :attr:`items` (built once, lazily)."""
        if len(self._index) != len(self.items):
            self._index = {it.id: i for i, it in enumerate(self.items)}
        return self._index


def rating_to_value(rating: float) -> float:
    """Map a 0.5..5 star rating to [-1, 1]: ``clip((rating - 3) / 2, -1, 1)``."""
    return max(-1.0, min(1.0, (rating - 3.0) / 2.0))


# --------------------------------------------------------------------------- helpers


def _require(path: Path) -> Path:
    if not path.is_file():
        raise DataFormatError(path, "file not found; check the path (and the dataset layout)")
    return path


def _float(path: Path, line: int, name: str, raw: object) -> float:
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataFormatError(path, f"{name} {raw!r} is not a number", line) from None
    if not math.isfinite(value):
        raise DataFormatError(path, f"{name} {raw!r} is not finite", line)
    return value


def _int(path: Path, line: int, name: str, raw: object) -> int:
    try:
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        return int(str(raw).strip())
    except (TypeError, ValueError):
        raise DataFormatError(path, f"{name} {raw!r} is not an integer", line) from None


def _str(path: Path, line: int, name: str, raw: object) -> str:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise DataFormatError(path, f"{name} is missing or empty", line)
    if not isinstance(raw, (str, int)):
        raise DataFormatError(path, f"{name} must be a string, got {type(raw).__name__}", line)
    return str(raw).strip()


def _check_items(path: Path, items: list[Item], lines: list[int]) -> None:
    seen: dict[str, int] = {}
    for it, ln in zip(items, lines, strict=True):
        if it.id in seen:
            raise DataFormatError(
                path, f"duplicate item id {it.id!r} (first on line {seen[it.id]})", ln
            )
        seen[it.id] = ln


def _check_refs(
    path: Path, interactions: list[Interaction], lines: list[int], ids: set[str]
) -> None:
    for x, ln in zip(interactions, lines, strict=True):
        if x.item_id not in ids:
            raise DataFormatError(path, f"item id {x.item_id!r} is not in the catalog", ln)


def load_movielens(directory: str | Path) -> Dataset:
    """Load a MovieLens directory (ml-latest-small, ml-100k or ml-1m layout, auto-detected);
    see :mod:`explorank.export.movielens`."""
    from explorank.export.movielens import load_movielens as _load

    return _load(directory)


def detect_movielens_layout(root: Path) -> str | None:
    """``"latest"``, ``"100k"``, ``"1m"`` or None, from which files ``root`` holds."""
    from explorank.export.movielens import detect_movielens_layout as _detect

    return _detect(root)


# --------------------------------------------------------------------------- plain format


def _rows(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, object]]]:
    """(line number, row dict) from a CSV (with header) or JSONL file."""
    _require(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        with path.open(encoding="utf-8") as f:
            for ln, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise DataFormatError(
                        path, f"invalid JSON ({exc.msg}); each line must be one JSON object", ln
                    ) from None
                if not isinstance(obj, dict):
                    raise DataFormatError(path, "each line must be a JSON object", ln)
                yield ln, obj
    elif suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            missing = [c for c in required if c not in header]
            if missing:
                raise DataFormatError(
                    path,
                    f"the header row lacks column(s) {', '.join(missing)}; expected {','.join(required)}",
                    1,
                )
            reader.fieldnames = header
            for row in reader:
                if None in row:
                    raise DataFormatError(
                        path,
                        "more fields than header columns; quote values that contain commas",
                        reader.line_num,
                    )
                yield reader.line_num, dict(row)
    else:
        raise DataFormatError(path, f"unknown file type {suffix!r}; use .csv or .jsonl")


def load_catalog(path: str | Path) -> list[Item]:
    """Read a plain catalog (``id``, ``text``) from CSV or JSONL."""
    p = Path(path)
    items, lines = [], []
    for ln, row in _rows(p, ("id", "text")):
        items.append(Item(_str(p, ln, "id", row.get("id")), _str(p, ln, "text", row.get("text"))))
        lines.append(ln)
    if not items:
        raise DataFormatError(p, "the catalog is empty")
    _check_items(p, items, lines)
    return items


def load_interactions(path: str | Path) -> tuple[list[Interaction], list[int]]:
    """Read plain interactions; returns them with their line numbers (for later checks)."""
    p = Path(path)
    out, lines = [], []
    for n, (ln, row) in enumerate(_rows(p, ("user_id", "item_id"))):
        raw_value = row.get("value")
        value = 1.0 if raw_value in (None, "") else _float(p, ln, "value", raw_value)
        if not -1.0 <= value <= 1.0:
            raise DataFormatError(
                p, f"value {value} is outside [-1, 1]; rescale it (e.g. (stars - 3) / 2)", ln
            )
        raw_ts = row.get("timestamp")
        ts = n if raw_ts in (None, "") else _int(p, ln, "timestamp", raw_ts)
        out.append(
            Interaction(
                _str(p, ln, "user_id", row.get("user_id")),
                _str(p, ln, "item_id", row.get("item_id")),
                value,
                ts,
            )
        )
        lines.append(ln)
    return out, lines


def load_plain(catalog_path: str | Path, interactions_path: str | Path) -> Dataset:
    """Load the plain CSV/JSONL format described in the module docstring."""
    items = load_catalog(catalog_path)
    inter, lines = load_interactions(interactions_path)
    _check_refs(Path(interactions_path), inter, lines, {it.id for it in items})
    return Dataset(items, inter, name=Path(catalog_path).stem)


def _find(root: Path, stem: str) -> Path | None:
    for ext in (".jsonl", ".csv"):
        if (root / f"{stem}{ext}").is_file():
            return root / f"{stem}{ext}"
    return None


def load_dataset(spec: str | Path) -> Dataset:
    """Load ``"movielens:DIR"`` or a directory (MovieLens layout, else plain
    ``catalog.{jsonl,csv}`` + ``interactions.{jsonl,csv}``)."""
    s = str(spec)
    if s.startswith("movielens:"):
        return load_movielens(Path(s[len("movielens:") :]).expanduser())
    root = Path(s).expanduser()
    if not root.is_dir():
        raise DataFormatError(
            root,
            "not a directory; use movielens:DIR, or a directory with catalog.jsonl + interactions.jsonl",
        )
    if detect_movielens_layout(root):
        return load_movielens(root)
    cat, inter = _find(root, "catalog"), _find(root, "interactions")
    if cat and inter:
        return load_plain(cat, inter)
    raise DataFormatError(
        root,
        "no dataset found: expected MovieLens files or catalog.{jsonl,csv} + interactions.{jsonl,csv}",
    )


def write_catalog_jsonl(items: Iterable[Item], path: str | Path) -> Path:
    """Write ``items`` as JSONL (``{"id", "text"}`` per line, UTF-8, ``\\n`` line endings)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8", newline="\n") as f:
        for it in items:
            f.write(json.dumps({"id": it.id, "text": it.text}, ensure_ascii=False) + "\n")
    return p
