import math

import pytest
from hypothesis import given
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
