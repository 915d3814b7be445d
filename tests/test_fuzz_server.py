"""A fuzz test against a real server on loopback: at least 10,000 generated requests —
arbitrary and hostile strings (NUL, control characters, 1 MB), invalid UTF-8 and encoded
surrogates in raw bodies, NaN / ±inf / huge numbers, duplicated ids, unknown ids with and
without text, huge top_k, empty everything. Every answer must be OK or a client-error code
(never INTERNAL, UNKNOWN or UNAVAILABLE), and the server must be healthy and give the same
answers afterwards."""

from __future__ import annotations

import json
import os
import resource
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explorank.engine.bundle import load_bundle
from explorank.v1 import ranker_pb2, ranker_pb2_grpc
from tests.server_harness import ThreadServer, make_config

#: Requests per generated example (Rank, Reward, a raw body, and a Rank on catalog ids).
PER_EXAMPLE = 4
EXAMPLES = 2_600  # x 4 = 10,400 requests
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

HOSTILE = st.sampled_from(
    [
        "",
        "\x00",
        "a\x00b",
        "id\n",
        "\x7f",
        "\u0085",
        "\u2028",
        "\ufeff",
        "\U0001f600" * 3,
        "é" * 300,
        " ",
        "\t\r\n",
        "x" * 257,
        "‮rtl",
        "%s%n%x",
        "'; DROP TABLE events; --",
        "../../etc/passwd",
        "redis://:pw@h/0",
    ]
)
TEXT = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80),
    HOSTILE,
    st.just("long text " * 1000),  # 10,000 characters: over the limit
)
NUMBER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -1.0, 1.0, 1e308, -1e308, 5e-324, float("nan"), float("inf")]),
)
UINT32 = st.one_of(st.integers(0, 20), st.sampled_from([0, 1, 1000, 1001, 2**31, 2**32 - 1]))


def _field(number: int, wire: int, payload: bytes) -> bytes:
    key = bytes([(number << 3) | wire])
    if wire == 2:
        return key + _varint(len(payload)) + payload
    return key + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


RAW = st.one_of(
    st.binary(max_size=64),
    # string fields holding invalid UTF-8 / an encoded lone surrogate (U+D800)
    st.sampled_from([b"\xed\xa0\x80", b"\xff\xfe", b"\xc0\xaf", b"a\x80"]).map(
        lambda bad: _field(3, 2, bad) + _field(2, 2, b"u")
    ),
    # a truncated length prefix, a wrong wire type, a varint that never ends
    st.just(_field(3, 2, b"abc")[:-1]),
    st.just(bytes([(6 << 3) | 2]) + b"\x05xx"),
    st.just(b"\x30" + b"\xff" * 12),
    # a 1 MB context text (under the message cap, over the text limit)
    st.just(_field(3, 2, b"y" * (1 << 20))),
    st.just(_field(6, 0, _varint(2**32 - 1)) + _field(3, 5, struct.pack("<f", float("nan")))),
)


@pytest.fixture(scope="module")
def srv(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    config = make_config(tiny_bundle, tmp_path_factory.mktemp("fuzz") / "s.db")
    with ThreadServer(config) as server:
        yield server


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def test_fuzz_ten_thousand_requests(srv: ThreadServer, tiny_bundle: Path, tmp_path: Path) -> None:
    channel = srv.channel()
    stub = ranker_pb2_grpc.RankerStub(channel)
    raw_rank = channel.unary_unary(
        "/explorank.v1.Ranker/Rank", request_serializer=lambda b: b, response_deserializer=None
    )
    catalog = [it.id for it in load_bundle(tiny_bundle).items]
    probe = ranker_pb2.RankRequest(
        context_text="a quiet mystery novel", top_k=5, policy="greedy", scorer="mf"
    )
    before = [(i.item_id, i.score) for i in stub.Rank(probe, timeout=10).items]
    real = stub.Rank(ranker_pb2.RankRequest(context_text="seed event", top_k=3), timeout=10)
    codes: Counter[str] = Counter()
    bad: list[str] = []
    rss_before = _rss_mb()

    def call(fn: Any, request: Any) -> None:
        try:
            fn(request, timeout=20)
            code = grpc.StatusCode.OK
        except grpc.RpcError as err:
            code = err.code()  # type: ignore[attr-defined]
            if code not in ALLOWED:
                bad.append(f"{code.name}: {err.details()!r} for {str(request)[:200]!r}")  # type: ignore[attr-defined]
        codes[code.name] += 1

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(
        user=TEXT,
        context=TEXT,
        history=st.lists(st.one_of(st.sampled_from(catalog), TEXT), max_size=4),
        cands=st.lists(
            st.tuples(st.one_of(st.sampled_from(catalog), TEXT), st.one_of(st.just(""), TEXT)),
            max_size=6,
        ),
        top_k=UINT32,
        names=st.tuples(
            st.sampled_from(["", "mf", "neural", "mf_online", "bogus", "p" * 5000]),
            st.sampled_from(["", "greedy", "softmax", "lin_ts", "ucb1", "nope"]),
        ),
        event_id=st.one_of(st.just(""), TEXT, st.just(real.event_id)),
        reward=st.tuples(
            st.one_of(st.just(real.event_id), TEXT),
            st.one_of(st.sampled_from([i.item_id for i in real.items]), TEXT),
            NUMBER,
        ),
        raw=RAW,
        catalog_only=st.lists(st.sampled_from(catalog), max_size=8),
    )
    def one(
        user: str,
        context: str,
        history: list[str],
        cands: list[tuple[str, str]],
        top_k: int,
        names: tuple[str, str],
        event_id: str,
        reward: tuple[str, str, float],
        raw: bytes,
        catalog_only: list[str],
    ) -> None:
        call(
            stub.Rank,
            ranker_pb2.RankRequest(
                event_id=event_id,
                user_id=user,
                context_text=context,
                history_item_ids=history,
                candidates=[ranker_pb2.Candidate(item_id=i, text=t) for i, t in cands],
                top_k=top_k,
                scorer=names[0],
                policy=names[1],
            ),
        )
        call(
            stub.Reward,
            ranker_pb2.RewardRequest(event_id=reward[0], item_id=reward[1], value=reward[2]),
        )
        call(raw_rank, raw)
        call(
            stub.Rank,
            ranker_pb2.RankRequest(
                candidates=[ranker_pb2.Candidate(item_id=i) for i in catalog_only],
                top_k=top_k % 20,
            ),
        )

    one()
    total = sum(codes.values())
    summary = {
        "requests": total,
        "codes": dict(sorted(codes.items())),
        "not_allowed": len(bad),
        "rss_max_mb_before": round(rss_before, 1),
        "rss_max_mb_after": round(_rss_mb(), 1),
    }
    out = os.environ.get("EXPLORANK_FUZZ_REPORT")
    if out:
        Path(out).write_text(json.dumps(summary, indent=2))
    print("fuzz summary:", json.dumps(summary))
    assert total >= 10_000
    assert not bad, bad[:10]
    assert codes["OK"] > 1000 and codes["INVALID_ARGUMENT"] > 1000  # both paths exercised
    # healthy and correct afterwards
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    after = [(i.item_id, i.score) for i in stub.Rank(probe, timeout=10).items]
    assert after == before
