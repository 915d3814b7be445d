"""Transport-independent request/response types of the Rank and Reward paths, and their
validation. The gRPC servicer converts protobuf messages to these and back; the
evaluation simulator and tests use them directly."""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from dataclasses import dataclass, field

from explorank.engine.config import LimitsConfig
from explorank.errors import InvalidArgumentError

#: Ids: any text without control characters (C0, DEL, C1 incl. U+0085), line or paragraph
#: separators (U+2028/9) or lone surrogates. Checked with fullmatch: "id\n" is refused.
_ID_RE = re.compile("[^\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]+")


def _utf8_len(value: str, name: str) -> int:
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgumentError(name, "is not valid Unicode (lone surrogate)") from None


@dataclass(slots=True)
class CandidateInput:
    item_id: str
    text: str = ""


@dataclass
class RankInput:
    user_id: str = ""
    context_text: str = ""
    history_item_ids: list[str] = field(default_factory=list)
    candidates: list[CandidateInput] = field(default_factory=list)
    top_k: int = 0
    scorer: str = ""
    policy: str = ""
    event_id: str = ""
    #: Return each ranked item's text (catalog text, or the caller's candidate text).
    include_text: bool = False


@dataclass(frozen=True)
class RankedItemOutput:
    item_id: str
    score: float
    propensity: float
    explored: bool
    text: str = ""


@dataclass
class RankOutput:
    event_id: str
    items: list[RankedItemOutput]
    model_version: str
    scorer: str
    policy: str


@dataclass(frozen=True)
class RewardOutput:
    accepted: bool
    duplicate: bool


def _check_id(value: str, name: str, limits: LimitsConfig, *, required: bool) -> None:
    if not value:
        if required:
            raise InvalidArgumentError(name, "must not be empty")
        return
    if len(value) > limits.max_id_chars:
        raise InvalidArgumentError(
            name, f"is {len(value)} characters long; the limit is {limits.max_id_chars}"
        )
    if not _ID_RE.fullmatch(value):
        raise InvalidArgumentError(
            name, "must not contain control characters, line separators or lone surrogates"
        )
    size = _utf8_len(value, name)
    if size > limits.max_id_bytes:
        raise InvalidArgumentError(
            name, f"is {size} bytes in UTF-8; the limit is {limits.max_id_bytes}"
        )


def _check_text(value: str, name: str, limits: LimitsConfig) -> None:
    if len(value) > limits.max_text_chars:
        raise InvalidArgumentError(
            name, f"is {len(value)} characters long; the limit is {limits.max_text_chars}"
        )
    size = _utf8_len(value, name)
    if size > limits.max_text_bytes:
        raise InvalidArgumentError(
            name, f"is {size} bytes in UTF-8; the limit is {limits.max_text_bytes}"
        )


def _ids_valid(ids: list[str], limits: LimitsConfig) -> bool:
    """True when every id in ``ids`` passes :func:`_check_id` (required): the checks of a
    long list at once (with :func:`_texts_valid`, validating a 100-candidate Rank takes 22
    instead of 252 µs). False when any might not; the caller then checks them one by one
    for the error message."""
    if not ids:
        return True
    if not all(ids) or max(map(len, ids)) > limits.max_id_chars:
        return False
    # the pattern is a class of characters: the ids all match if and only if their
    # concatenation does
    joined = "".join(ids)
    if _ID_RE.fullmatch(joined) is None:
        return False
    if joined.isascii() and limits.max_id_chars <= limits.max_id_bytes:
        return True  # one byte per character: within the character limit is within this one
    return all(len(i.encode("utf-8")) <= limits.max_id_bytes for i in ids)


def _texts_valid(texts: list[str], limits: LimitsConfig) -> bool:
    """True when every text passes :func:`_check_text` (see :func:`_ids_valid`)."""
    if not any(texts):
        return True
    if max(map(len, texts)) > limits.max_text_chars:
        return False
    if "".join(texts).isascii() and limits.max_text_chars <= limits.max_text_bytes:
        return True
    try:
        return all(len(t.encode("utf-8")) <= limits.max_text_bytes for t in texts)
    except UnicodeEncodeError:  # a lone surrogate
        return False


def validate_texts(texts: list[str], limits: LimitsConfig, field: str, most: int) -> None:
    """Texts to encode as they are (the OIP ``encoder`` model): at least one, at most
    ``most``, each within the text limits."""
    if not texts:
        raise InvalidArgumentError(field, "no texts to encode; send at least one")
    if len(texts) > most:
        raise InvalidArgumentError(
            field,
            f"has {len(texts)} texts; the limit is {most} per request (one request's share of "
            "the encoder queue: batching.max_queue_size x batching.max_request_share)",
        )
    for i, text in enumerate(texts):
        if not text.strip():
            raise InvalidArgumentError(f"{field}[{i}]", "text is empty; send some text")
        _check_text(text, f"{field}[{i}]", limits)


def validate_rank(req: RankInput, limits: LimitsConfig) -> RankInput:
    """Check a Rank request against the limits; fill defaults. Raises InvalidArgumentError."""
    _check_id(req.event_id, "event_id", limits, required=False)
    _check_id(req.user_id, "user_id", limits, required=False)
    _check_text(req.context_text, "context_text", limits)
    if len(req.history_item_ids) > limits.max_history:
        raise InvalidArgumentError(
            "history_item_ids",
            f"has {len(req.history_item_ids)} entries; the limit is {limits.max_history}",
        )
    if not _ids_valid(req.history_item_ids, limits):
        for i, hid in enumerate(req.history_item_ids):
            _check_id(hid, f"history_item_ids[{i}]", limits, required=True)
    if len(req.candidates) > limits.max_candidates:
        raise InvalidArgumentError(
            "candidates", f"has {len(req.candidates)} entries; the limit is {limits.max_candidates}"
        )
    ids = [c.item_id for c in req.candidates]
    if not (
        _ids_valid(ids, limits)
        and _texts_valid([c.text for c in req.candidates], limits)
        and len(set(ids)) == len(ids)
    ):
        seen: set[str] = set()
        for i, cand in enumerate(req.candidates):
            _check_id(cand.item_id, f"candidates[{i}].item_id", limits, required=True)
            _check_text(cand.text, f"candidates[{i}].text", limits)
            if cand.item_id in seen:
                raise InvalidArgumentError(
                    f"candidates[{i}].item_id", f"duplicate candidate {cand.item_id!r}"
                )
            seen.add(cand.item_id)
    if req.top_k < 0:
        raise InvalidArgumentError("top_k", "must be >= 0 (0 means the default)")
    if req.top_k > limits.max_top_k:
        raise InvalidArgumentError("top_k", f"is {req.top_k}; the limit is {limits.max_top_k}")
    if req.top_k == 0:
        req.top_k = limits.default_top_k
    if not req.event_id:
        req.event_id = uuid.uuid4().hex
    return req


def validate_reward(event_id: str, item_id: str, value: float, limits: LimitsConfig) -> None:
    _check_id(event_id, "event_id", limits, required=True)
    _check_id(item_id, "item_id", limits, required=True)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgumentError("value", f"must be a finite number, got {value!r}")
    if not -1.0 <= value <= 1.0:
        raise InvalidArgumentError("value", f"must be in [-1, 1], got {value!r}")


def request_fingerprint(req: RankInput, scorer: str, policy: str) -> str:
    """A digest of everything that makes a Rank request this request (not the event id):
    a repeated ``event_id`` must come with the same fingerprint."""
    h = hashlib.blake2b(digest_size=16)
    parts = [
        req.user_id,
        req.context_text,
        "\x1e".join(req.history_item_ids),
        "\x1e".join(f"{c.item_id}\x1f{c.text}" for c in req.candidates),
        str(req.top_k),
        scorer,
        policy,
    ]
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def validate_catalog_item(item_id: str, text: str, limits: LimitsConfig, field: str) -> None:
    """An item added to (or removed from) the catalog at run time: a valid id and, when
    given, a text within the limits."""
    _check_id(item_id, f"{field}.item_id" if text else field, limits, required=True)
    if text:
        _check_text(text, f"{field}.text", limits)
