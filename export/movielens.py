"""MovieLens loaders: the three on-disk layouts people already have (see :mod:`explorank.export.data`
for the formats, the item text rule and the rating -> value mapping). The item text is the
title (with its year, as MovieLens writes it), the genres and, where the layout has a
``tags.csv`` (ml-latest-small, ml-25m), the movie's most frequent user tags.

Each loader checks every row and raises :class:`~explorank.export.data.DataFormatError` naming
the file and line; ids are kept as the strings in the files.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from explorank.export.data import (
    DataFormatError,
    Dataset,
    Interaction,
    Item,
    _check_items,
    _check_refs,
    _float,
    _int,
    _require,
    _str,
    rating_to_value,
)

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


#: Most frequent tags (ml-latest layouts' tags.csv) added to an item's text.
MAX_TAGS = 8


def _movie_text(title: str, genres: Iterable[str], tags: Sequence[str] = ()) -> str:
    title = title.strip()
    gs = [
        g.strip()
        for g in genres
        if g.strip() and g.strip() not in ("(no genres listed)", "unknown")
    ]
    text = title if title.endswith((".", "!", "?")) else title + "."
    if gs:
        text += " Genres: " + ", ".join(gs) + "."
    if tags:
        text += " Tags: " + ", ".join(tags) + "."
    return text


def _read_tags(path: Path) -> dict[str, list[str]]:
    """movieId -> its ``MAX_TAGS`` most frequent tags (case-insensitive; ties: first use),
    from an ml-latest ``tags.csv`` (``userId,movieId,tag,timestamp``)."""
    counts: dict[str, dict[str, list[Any]]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["userId", "movieId", "tag"]:
            raise DataFormatError(path, "expected the header 'userId,movieId,tag,timestamp'", 1)
        for n, row in enumerate(reader):
            if len(row) < 3 or not row[2].strip():
                continue
            tag = " ".join(row[2].split())
            entry = counts.setdefault(row[1].strip(), {}).setdefault(tag.lower(), [0, n, tag])
            entry[0] += 1
    return {
        movie: [e[2] for e in sorted(tags.values(), key=lambda e: (-e[0], e[1]))[:MAX_TAGS]]
        for movie, tags in counts.items()
    }


def _rating_row(path: Path, ln: int, parts: Sequence[str]) -> Interaction:
    if len(parts) < 4:
        raise DataFormatError(
            path, f"expected 4 fields (user, item, rating, timestamp), got {len(parts)}", ln
        )
    rating = _float(path, ln, "rating", parts[2])
    if not 0.0 <= rating <= 5.0:
        raise DataFormatError(path, f"rating {rating} is outside 0..5 stars", ln)
    return Interaction(
        user_id=_str(path, ln, "user id", parts[0]),
        item_id=_str(path, ln, "item id", parts[1]),
        value=rating_to_value(rating),
        timestamp=_int(path, ln, "timestamp", parts[3]),
    )


def _ml_latest(root: Path) -> Dataset:
    movies, ratings = _require(root / "movies.csv"), _require(root / "ratings.csv")
    tags = _read_tags(root / "tags.csv") if (root / "tags.csv").is_file() else {}
    items, item_lines = [], []
    with movies.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["movieId", "title", "genres"]:
            raise DataFormatError(movies, "expected the header 'movieId,title,genres'", 1)
        for row in reader:
            ln = reader.line_num
            if not row:
                continue
            if len(row) != 3:
                raise DataFormatError(
                    movies,
                    f"expected 3 fields (movieId,title,genres), got {len(row)}; quote titles containing commas",
                    ln,
                )
            movie_id = _str(movies, ln, "movieId", row[0])
            items.append(
                Item(
                    movie_id,
                    _movie_text(
                        _str(movies, ln, "title", row[1]), row[2].split("|"), tags.get(movie_id, ())
                    ),
                )
            )
            item_lines.append(ln)
    inter, inter_lines = [], []
    with ratings.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:4]] != [
            "userId",
            "movieId",
            "rating",
            "timestamp",
        ]:
            raise DataFormatError(
                ratings, "expected the header 'userId,movieId,rating,timestamp'", 1
            )
        for row in reader:
            if row:
                inter.append(_rating_row(ratings, reader.line_num, row))
                inter_lines.append(reader.line_num)
    _check_items(movies, items, item_lines)
    _check_refs(ratings, inter, inter_lines, {it.id for it in items})
    return Dataset(items, inter, name=root.name or "movielens")


def _ml_100k(root: Path) -> Dataset:
    uitem, udata = _require(root / "u.item"), _require(root / "u.data")
    items, item_lines = [], []
    with uitem.open(encoding="latin-1") as f:
        for ln, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            parts = raw.rstrip("\r\n").split("|")
            if len(parts) != 5 + len(ML100K_GENRES):
                raise DataFormatError(
                    uitem,
                    f"expected {5 + len(ML100K_GENRES)} '|'-separated fields, got {len(parts)}",
                    ln,
                )
            flags = parts[5:]
            if any(fl not in ("0", "1") for fl in flags):
                raise DataFormatError(uitem, "genre flags (fields 6..24) must be 0 or 1", ln)
            genres = [g for g, fl in zip(ML100K_GENRES, flags, strict=True) if fl == "1"]
            items.append(
                Item(
                    _str(uitem, ln, "movie id", parts[0]),
                    _movie_text(_str(uitem, ln, "title", parts[1]), genres),
                )
            )
            item_lines.append(ln)
    inter, inter_lines = [], []
    with udata.open(encoding="latin-1") as f:
        for ln, raw in enumerate(f, start=1):
            if raw.strip():
                inter.append(_rating_row(udata, ln, raw.split()))
                inter_lines.append(ln)
    _check_items(uitem, items, item_lines)
    _check_refs(udata, inter, inter_lines, {it.id for it in items})
    return Dataset(items, inter, name=root.name or "ml-100k")


def _ml_1m(root: Path) -> Dataset:
    movies, ratings = _require(root / "movies.dat"), _require(root / "ratings.dat")
    items, item_lines = [], []
    with movies.open(encoding="latin-1") as f:
        for ln, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            parts = raw.rstrip("\r\n").split("::")
            if len(parts) != 3:
                raise DataFormatError(
                    movies, f"expected 3 '::'-separated fields, got {len(parts)}", ln
                )
            items.append(
                Item(
                    _str(movies, ln, "movie id", parts[0]),
                    _movie_text(_str(movies, ln, "title", parts[1]), parts[2].split("|")),
                )
            )
            item_lines.append(ln)
    inter, inter_lines = [], []
    with ratings.open(encoding="latin-1") as f:
        for ln, raw in enumerate(f, start=1):
            if raw.strip():
                inter.append(_rating_row(ratings, ln, raw.strip().split("::")))
                inter_lines.append(ln)
    _check_items(movies, items, item_lines)
    _check_refs(ratings, inter, inter_lines, {it.id for it in items})
    return Dataset(items, inter, name=root.name or "ml-1m")


def detect_movielens_layout(root: Path) -> str | None:
    """``"latest"``, ``"100k"``, ``"1m"`` or None, from which files ``root`` holds."""
    if (root / "movies.csv").is_file() or (root / "ratings.csv").is_file():
        return "latest"
    if (root / "u.item").is_file() or (root / "u.data").is_file():
        return "100k"
    if (root / "movies.dat").is_file() or (root / "ratings.dat").is_file():
        return "1m"
    return None


def load_movielens(directory: str | Path) -> Dataset:
    """Load a MovieLens directory, auto-detecting the layout (see the module docstring)."""
    root = Path(directory)
    if not root.is_dir():
        raise DataFormatError(
            root,
            "not a directory; pass the folder that holds movies.csv/ratings.csv or u.item/u.data",
        )
    layout = detect_movielens_layout(root)
    if layout == "latest":
        return _ml_latest(root)
    if layout == "100k":
        return _ml_100k(root)
    if layout == "1m":
        return _ml_1m(root)
    raise DataFormatError(
        root,
        "no MovieLens files found: expected movies.csv + ratings.csv (ml-latest-small), u.item + u.data (ml-100k) or movies.dat + ratings.dat (ml-1m)",
    )
