import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from explorank.engine.config import LimitsConfig
from explorank.engine.requests import CandidateInput, RankInput, validate_rank, validate_reward
from explorank.errors import InvalidArgumentError

LIMITS = LimitsConfig(
    max_candidates=5, max_top_k=20, max_text_chars=50, max_history=2, max_id_chars=10
)


def test_defaults_filled() -> None:
    req = validate_rank(RankInput(user_id="u"), LIMITS)
    assert req.top_k == LIMITS.default_top_k
    assert len(req.event_id) == 32


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (RankInput(candidates=[CandidateInput("a")] * 6), "candidates"),
        (RankInput(candidates=[CandidateInput("a"), CandidateInput("a")]), "candidates[1].item_id"),
        (RankInput(candidates=[CandidateInput("")]), "candidates[0].item_id"),
        (RankInput(candidates=[CandidateInput("a", "x" * 51)]), "candidates[0].text"),
        (RankInput(context_text="x" * 51), "context_text"),
        (RankInput(history_item_ids=["a", "b", "c"]), "history_item_ids"),
        (RankInput(top_k=21), "top_k"),
        (RankInput(user_id="u" * 11), "user_id"),
        (RankInput(user_id="bad\nid"), "user_id"),
    ],
)
def test_invalid_rank_names_field(req: RankInput, field: str) -> None:
    with pytest.raises(InvalidArgumentError) as exc:
        validate_rank(req, LIMITS)
    assert exc.value.field == field
    assert str(exc.value).startswith(field)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_reward_value_validation(value: float) -> None:
    ok = math.isfinite(value) and -1.0 <= value <= 1.0
    if ok:
        validate_reward("e", "i", value, LIMITS)
    else:
        with pytest.raises(InvalidArgumentError) as exc:
            validate_reward("e", "i", value, LIMITS)
        assert exc.value.field == "value"


# ids and texts that hit every check: control characters, line separators, lone
# surrogates, multi-byte characters (over the byte limit before the character limit)
_CHARS = st.sampled_from(
    ["a", "b", " ", "é", "\U0001f600"] * 3 + ["\n", "\x85", "\u2028", "\ud800"]
)
# a few fixed values too, so that lists repeat ids and cross the byte limits (12 and 14)
# within the character limits (8 and 10)
_VALUE = st.one_of(
    st.text(_CHARS, max_size=12), st.sampled_from(["a", "é" * 7, "\U0001f600" * 4, "ab"])
)
_IDS = st.lists(_VALUE, max_size=4)
_TEXTS = st.lists(_VALUE, max_size=4)
_TIGHT = LimitsConfig(
    max_candidates=50,
    max_history=5,
    max_id_chars=8,
    max_id_bytes=12,
    max_text_chars=10,
    max_text_bytes=14,
)


def _one_by_one(req: RankInput, limits: LimitsConfig) -> str | None:
    """The field the item-by-item checks name for ``req``'s history and candidates (None:
    valid) — what validate_rank must answer, however it gets there."""
    from explorank.engine.requests import _check_id, _check_text

    try:
        for i, hid in enumerate(req.history_item_ids):
            _check_id(hid, f"history_item_ids[{i}]", limits, required=True)
        seen: set[str] = set()
        for i, cand in enumerate(req.candidates):
            _check_id(cand.item_id, f"candidates[{i}].item_id", limits, required=True)
            _check_text(cand.text, f"candidates[{i}].text", limits)
            if cand.item_id in seen:
                raise InvalidArgumentError(f"candidates[{i}].item_id", "duplicate")
            seen.add(cand.item_id)
    except InvalidArgumentError as exc:
        return exc.field
    return None


@settings(max_examples=300)
@given(history=_IDS, ids=_IDS, texts=_TEXTS)
@example(history=[], ids=["a", "ab", "a"], texts=[])  # a repeated id
@example(history=["\U0001f600" * 4], ids=[], texts=[])  # an id over the byte limit
@example(history=[], ids=["a"], texts=["\U0001f600" * 4])  # a text over the byte limit
@example(history=[], ids=["a", "b"], texts=["", "x" * 11])  # a text over the char limit
def test_list_checks_agree_with_item_by_item(
    history: list[str], ids: list[str], texts: list[str]
) -> None:
    """validate_rank checks long lists at once and falls back to one by one only when
    something may be wrong: it refuses exactly what the item-by-item checks refuse, naming
    the same field."""
    cands = [CandidateInput(i, t) for i, t in zip(ids, texts + [""] * len(ids), strict=False)]
    req = RankInput(history_item_ids=history, candidates=cands)
    expected = _one_by_one(req, _TIGHT)
    try:
        validate_rank(req, _TIGHT)
        got = None
    except InvalidArgumentError as exc:
        got = exc.field
    assert got == expected
