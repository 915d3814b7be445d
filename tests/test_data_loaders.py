"""Data loaders (MovieLens layouts, plain CSV/JSONL) and the embedded default catalog."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from explorank.errors import InvalidArgumentError
from explorank.export import catalog_gen
from explorank.export.data import (
    DataFormatError,
    Item,
    load_catalog,
    load_dataset,
    load_movielens,
    load_plain,
    rating_to_value,
    user_context_text,
    write_catalog_jsonl,
)

pytestmark = pytest.mark.timeout(60)


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def _ml_latest(root: Path, ratings: str | None = None) -> Path:
    _write(root / "movies.csv", 'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation|Children\n'
           '2,"American President, The (1995)",Comedy|Drama|Romance\n3,Lost Film (2001),(no genres listed)\n')  # fmt: skip
    _write(root / "ratings.csv", ratings or "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n"
           "1,2,0.5,964981247\n2,3,3.5,964982224\n2,1,5.0,964983815\n")  # fmt: skip
    return root


def _ml_100k(root: Path) -> Path:
    flags = ["0"] * 19
    f1 = list(flags)
    f1[3] = f1[4] = f1[5] = "1"  # Animation, Children's, Comedy
    f2 = list(flags)
    f2[8] = "1"  # Drama
    _write(root / "u.item", f"1|Toy Story (1995)|01-Jan-1995||http://x|{'|'.join(f1)}\n"
           f"2|Café Society (1995)|01-Jan-1995||http://y|{'|'.join(f2)}\n", encoding="latin-1")  # fmt: skip
    _write(root / "u.data", "196\t1\t3\t881250949\n186\t2\t1\t891717742\n196\t2\t5\t881250950\n")
    return root


def test_movielens_latest_layout(tmp_path: Path) -> None:
    ds = load_movielens(_ml_latest(tmp_path / "ml-latest-small"))
    assert ds.name == "ml-latest-small"
    assert [it.id for it in ds.items] == ["1", "2", "3"]
    assert ds.items[0].text == "Toy Story (1995). Genres: Adventure, Animation, Children."
    assert ds.items[1].text == "American President, The (1995). Genres: Comedy, Drama, Romance."
    assert ds.items[2].text == "Lost Film (2001)."  # "(no genres listed)" adds nothing
    assert [(x.user_id, x.item_id, x.value, x.timestamp) for x in ds.interactions] == [
        ("1", "1", 0.5, 964982703), ("1", "2", -1.0, 964981247),
        ("2", "3", 0.25, 964982224), ("2", "1", 1.0, 964983815),
    ]  # fmt: skip


def test_movielens_100k_layout_latin1(tmp_path: Path) -> None:
    ds = load_dataset(f"movielens:{_ml_100k(tmp_path / 'ml-100k')}")
    assert ds.items[0].text == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    assert ds.items[1].text == "Café Society (1995). Genres: Drama."
    assert [(x.user_id, x.item_id, x.value) for x in ds.interactions] == [
        ("196", "1", 0.0),
        ("186", "2", -1.0),
        ("196", "2", 1.0),
    ]


def test_movielens_1m_layout_and_directory_autodetect(tmp_path: Path) -> None:
    root = tmp_path / "ml-1m"
    _write(
        root / "movies.dat",
        "1::Toy Story (1995)::Animation|Children's|Comedy\n",
        encoding="latin-1",
    )
    _write(root / "ratings.dat", "1::1::5::978300760\n")
    ds = load_dataset(root)  # a bare directory is auto-detected too
    assert ds.items == [Item("1", "Toy Story (1995). Genres: Animation, Children's, Comedy.")]
    assert ds.interactions[0].value == 1.0 and ds.interactions[0].timestamp == 978300760


@pytest.mark.parametrize(
    ("ratings", "line", "what"),
    [
        (
            "userId,movieId,rating,timestamp\n1,1,4.0,1\n1,2,abc,2\n",
            3,
            "rating 'abc' is not a number",
        ),
        (
            "userId,movieId,rating,timestamp\n1,1,4.0,1\n1,99,4.0,2\n",
            3,
            "item id '99' is not in the catalog",
        ),
        ("userId,movieId,rating,timestamp\n1,1,7,1\n", 2, "outside 0..5"),
        ("userId,movieId,rating,timestamp\n1,1,4,x\n", 2, "timestamp 'x' is not an integer"),
        ("userId,movieId,rating,timestamp\n1,1\n", 2, "expected 4 fields"),
        ("user,movie,rating,ts\n1,1,4,1\n", 1, "expected the header"),
    ],
)
def test_movielens_malformed_rows_name_file_and_line(
    tmp_path: Path, ratings: str, line: int, what: str
) -> None:
    root = _ml_latest(tmp_path / "ml", ratings)
    with pytest.raises(DataFormatError) as err:
        load_movielens(root)
    msg = str(err.value)
    assert "ratings.csv" in msg and f"line {line}" in msg and what in msg
    assert err.value.line == line and isinstance(err.value, InvalidArgumentError)


def test_movielens_100k_bad_genre_flags_and_missing_files(tmp_path: Path) -> None:
    root = _ml_100k(tmp_path / "a")
    _write(
        root / "u.item",
        "1|Toy Story|x||u|" + "|".join(["0"] * 18 + ["2"]) + "\n",
        encoding="latin-1",
    )
    with pytest.raises(DataFormatError, match=r"u.item, line 1: genre flags"):
        load_movielens(root)
    (tmp_path / "b").mkdir()
    _write(tmp_path / "b" / "u.item", "")
    with pytest.raises(DataFormatError, match=r"u.data: file not found"):
        load_movielens(tmp_path / "b")
    with pytest.raises(DataFormatError, match="no MovieLens files"):
        load_movielens(tmp_path)
    with pytest.raises(DataFormatError, match="not a directory"):
        load_dataset(f"movielens:{tmp_path / 'nope'}")


def test_plain_csv_and_jsonl_give_the_same_dataset(tmp_path: Path) -> None:
    _write(tmp_path / "c.csv", 'id,text\na,"A film, with a comma."\nb,Second item\n')
    _write(
        tmp_path / "i.csv", "user_id,item_id,value,timestamp\nu1,a,1.0,10\nu1,b,-0.5,20\nu2,b,,\n"
    )
    _write(
        tmp_path / "c.jsonl",
        '{"id": "a", "text": "A film, with a comma."}\n\n{"id": "b", "text": "Second item"}\n',
    )
    _write(tmp_path / "i.jsonl", '{"user_id": "u1", "item_id": "a", "value": 1, "timestamp": 10}\n'
           '{"user_id": "u1", "item_id": "b", "value": -0.5, "timestamp": 20}\n{"user_id": "u2", "item_id": "b"}\n')  # fmt: skip
    csv_ds = load_plain(tmp_path / "c.csv", tmp_path / "i.csv")
    jsonl_ds = load_plain(tmp_path / "c.jsonl", tmp_path / "i.jsonl")
    assert (
        csv_ds.items
        == jsonl_ds.items
        == [Item("a", "A film, with a comma."), Item("b", "Second item")]
    )
    assert csv_ds.interactions == jsonl_ds.interactions
    # missing value = implicit positive (1.0); missing timestamp = row order (the third row -> 2)
    assert (csv_ds.interactions[2].value, csv_ds.interactions[2].timestamp) == (1.0, 2)


def test_plain_directory_spec(tmp_path: Path) -> None:
    _write(tmp_path / "d" / "catalog.jsonl", '{"id": "x", "text": "t"}\n')
    _write(tmp_path / "d" / "interactions.csv", "user_id,item_id\nu,x\n")
    ds = load_dataset(tmp_path / "d")
    assert ds.items == [Item("x", "t")] and ds.interactions[0].user_id == "u"
    with pytest.raises(DataFormatError, match="no dataset found"):
        load_dataset(tmp_path)


@pytest.mark.parametrize(
    ("name", "content", "pattern"),
    [
        (
            "c.jsonl",
            '{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n',
            r"c.jsonl, line 2: duplicate item id 'a' \(first on line 1\)",
        ),
        (
            "c.jsonl",
            '{"id": "a", "text": "x"}\n{"id": "b", "text": "y"\n',
            r"c.jsonl, line 2: invalid JSON",
        ),
        ("c.jsonl", '{"id": "a", "text": "  "}\n', r"line 1: text is missing or empty"),
        ("c.jsonl", '["a", "x"]\n', r"line 1: each line must be a JSON object"),
        ("c.csv", "identifier,text\na,x\n", r"c.csv, line 1: the header row lacks column\(s\) id"),
        ("c.csv", "id,text\na,x,extra\n", r"c.csv, line 2: more fields than header columns"),
        ("c.txt", "id,text\n", r"unknown file type '.txt'"),
        ("c.jsonl", "", r"the catalog is empty"),
    ],
)
def test_plain_catalog_errors(tmp_path: Path, name: str, content: str, pattern: str) -> None:
    with pytest.raises(DataFormatError, match=pattern):
        load_catalog(_write(tmp_path / name, content))


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (
            '{"user_id": "u", "item_id": "a", "value": 3}\n',
            r"i.jsonl, line 1: value 3.0 is outside \[-1, 1\]",
        ),
        (
            '{"user_id": "u", "item_id": "zz"}\n',
            r"i.jsonl, line 1: item id 'zz' is not in the catalog",
        ),
        ('{"item_id": "a"}\n', r"line 1: user_id is missing"),
        ('{"user_id": "u", "item_id": "a", "value": "NaN"}\n', r"value 'NaN' is not finite"),
        (
            '{"user_id": "u", "item_id": "a", "timestamp": 1.5}\n',
            r"timestamp 1.5 is not an integer",
        ),
    ],
)
def test_plain_interaction_errors(tmp_path: Path, content: str, pattern: str) -> None:
    cat = _write(tmp_path / "c.jsonl", '{"id": "a", "text": "x"}\n')
    with pytest.raises(DataFormatError, match=pattern):
        load_plain(cat, _write(tmp_path / "i.jsonl", content))


@given(st.floats(min_value=0.0, max_value=5.0), st.floats(min_value=0.0, max_value=5.0))
def test_rating_to_value_is_monotone_and_bounded(a: float, b: float) -> None:
    va, vb = rating_to_value(a), rating_to_value(b)
    assert -1.0 <= va <= 1.0
    if a <= b:
        assert va <= vb
    assert (
        rating_to_value(3.0) == 0.0 and rating_to_value(5.0) == 1.0 and rating_to_value(1.0) == -1.0
    )


_ids = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=12
)
_texts = (
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60)
    .map(str.strip)
    .filter(bool)
)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(_ids, _texts, min_size=1, max_size=8))
def test_write_catalog_jsonl_round_trips(
    tmp_path_factory: pytest.TempPathFactory, mapping: dict[str, str]
) -> None:
    items = [Item(k, v) for k, v in mapping.items()]
    path = write_catalog_jsonl(items, tmp_path_factory.mktemp("cat") / "items.jsonl")
    assert load_catalog(path) == items


def test_user_context_text_order() -> None:
    assert (
        user_context_text(["Newest.", " ", "Older."], context_text=" query ")
        == "query Newest. Older."
    )
    assert user_context_text([]) == ""


# --------------------------------------------------------------------------- default catalog


def test_committed_default_catalog_matches_generator(tmp_path: Path) -> None:
    out = tmp_path / "cat.jsonl"
    assert catalog_gen.main(["--out", str(out)]) == 0
    committed = catalog_gen.DEFAULT_CATALOG_PATH.read_bytes()
    assert out.read_bytes() == committed, "regenerate: python -m explorank.export.catalog_gen"
    assert len(committed) < 1_500_000


def test_default_catalog_shape_and_structure() -> None:
    items = load_catalog(catalog_gen.DEFAULT_CATALOG_PATH)
    assert len(items) == 3000 and len({it.id for it in items}) == 3000
    assert all(re.fullmatch(r"(film|book|podcast|game|recipe|gadget)-\d{5}", it.id) for it in items)
    assert Counter(it.id.split("-")[0] for it in items) == {
        d.prefix: 500 for d in catalog_gen.DOMAINS
    }
    words = [len(it.text.split()) for it in items]
    assert min(words) >= 5 and max(words) <= 70 and max(words) - min(words) >= 40  # varied lengths
    assert len({it.text for it in items}) >= 2990
    # Items of one genre share vocabulary far more than items of different genres (the
    # structure a sentence encoder picks up); bag-of-words Jaccard is a cheap proxy.
    vocab = {
        it.id: set(re.findall(r"[a-z]+", it.text.lower()))
        - {"a", "an", "the", "and", "of", "in", "it", "is"}
        for it in items
    }
    by_genre: dict[str, list[str]] = {}
    for it in items:
        by_genre.setdefault(_genre_of(it.id), []).append(it.id)
    assert len(by_genre) == sum(len(d.genres) for d in catalog_gen.DOMAINS)

    def jac(a: str, b: str) -> float:
        return len(vocab[a] & vocab[b]) / len(vocab[a] | vocab[b])

    genres = sorted(by_genre)
    intra = [jac(g[i], g[i + 1]) for g in by_genre.values() for i in range(0, 20, 2)]
    inter = [
        jac(by_genre[genres[k]][i], by_genre[genres[(k + 7) % len(genres)]][i])
        for k in range(len(genres))
        for i in range(10)
    ]
    assert sum(intra) / len(intra) > 5 * sum(inter) / len(inter)


def test_generator_is_seeded() -> None:
    a = catalog_gen.generate(seed=1, per_domain=20)
    assert a == catalog_gen.generate(seed=1, per_domain=20)
    assert a != catalog_gen.generate(seed=2, per_domain=20)
    assert all(
        json.loads(json.dumps({"id": it.id, "text": it.text}))["text"] == it.text for it in a
    )


def _genre_of(item_id: str, per_domain: int = catalog_gen.DEFAULT_PER_DOMAIN) -> str:
    """The genre an id was generated from (for evaluation: items of one genre should cluster)."""
    prefix, _, num = item_id.rpartition("-")
    d = next(d for d in catalog_gen.DOMAINS if d.prefix == prefix)
    return d.genres[int(num) % len(d.genres)].name
