"""Hostile and broken input against a real server: what the client sees is a clear client-error
code with a bounded, clean message; server faults are INTERNAL with an error id only; a
misbehaving plugin is named; secrets never leak; an event id is bound to its request."""

from __future__ import annotations

import concurrent.futures
import logging
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from explorank import hookimpl
from explorank.errors import redact
from explorank.plugins.api import ScoreContext, Scorer, ScorerContext
from explorank.plugins.manager import PluginManager
from explorank.v1 import ranker_pb2, ranker_pb2_grpc
from tests.server_harness import ThreadServer, make_config


class NaNScorer(Scorer):
    name = "nan_scorer"

    def score(self, ctx: ScoreContext) -> np.ndarray:
        out = np.zeros(len(ctx.item_ids), np.float32)
        out[0] = np.nan
        return out


class VandalScorer(Scorer):
    """Writes into the candidate matrix it is given (the shared catalog matrix)."""

    name = "vandal"

    def score(self, ctx: ScoreContext) -> np.ndarray:
        ctx.item_embeddings[:] = 0.0
        return np.zeros(len(ctx.item_ids), np.float32)


class UnbuildableScorer(Scorer):
    name = "unbuildable"

    def __init__(self, context: ScorerContext, **params: Any) -> None:
        raise RuntimeError("needs a head this bundle does not have")

    def score(self, ctx: ScoreContext) -> np.ndarray:  # pragma: no cover - never built
        raise AssertionError


class _Plugin:
    @hookimpl
    def register_scorers(self, register):  # type: ignore[no-untyped-def]
        register(NaNScorer)
        register(VandalScorer)
        register(UnbuildableScorer)


@pytest.fixture(scope="module")
def srv(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    pm = PluginManager(block_external=True)
    pm.register(_Plugin(), name="acme_scorers")
    config = make_config(tiny_bundle, tmp_path_factory.mktemp("hostile") / "s.db")
    with ThreadServer(config, plugins=pm) as server:
        yield server


@pytest.fixture(scope="module")
def stub(srv: ThreadServer) -> ranker_pb2_grpc.RankerStub:
    return ranker_pb2_grpc.RankerStub(srv.channel())


def _fail(fn: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, timeout=10, **kwargs)
    return info.value


# -------------------------------------------------------------- malformed bodies
def test_malformed_body_is_invalid_argument_logged_once(
    srv: ThreadServer, caplog: pytest.LogCaptureFixture
) -> None:
    raw = srv.channel().unary_unary(
        "/explorank.v1.Ranker/Rank",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with caplog.at_level(logging.ERROR):
        for _ in range(5):
            err = _fail(raw, b"\xff\xff\xff\x0f garbage \x00")
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid protobuf message" in err.details()
            assert "Traceback" not in err.details() and "DecodeError" not in err.details()
    logged = [r for r in caplog.records if "could not be decoded" in r.getMessage()]
    assert len(logged) == 1  # once per minute at most, not once per request
    assert not any(r.exc_info for r in logged)


# ------------------------------------------------------------------- INTERNAL
def test_internal_error_carries_an_id_and_no_detail(
    srv: ThreadServer, stub: ranker_pb2_grpc.RankerStub, caplog: pytest.LogCaptureFixture
) -> None:
    engine = srv.engine
    real = engine.embedder.context_text

    def broken(req: Any) -> str:
        raise RuntimeError("secret detail: redis://:hunter2@db:6379/0")

    engine.embedder.context_text = broken  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.ERROR):
            err = _fail(stub.Rank, ranker_pb2.RankRequest(context_text="x"))
    finally:
        engine.embedder.context_text = real  # type: ignore[method-assign]
    assert err.code() == grpc.StatusCode.INTERNAL
    details = err.details()
    assert "secret" not in details and "RuntimeError" not in details
    error_id = details.split("error id ")[1].split(")")[0]
    assert len(error_id) == 12
    (record,) = [r for r in caplog.records if error_id in r.getMessage()]
    assert record.exc_info is not None  # the traceback is in the server log
    assert "hunter2" not in record.getMessage()  # ... without the credential


def test_misbehaving_scorer_is_internal_naming_plugin_and_package_logged_once(
    stub: ranker_pb2_grpc.RankerStub, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        errs = [
            _fail(stub.Rank, ranker_pb2.RankRequest(context_text="y", scorer="nan_scorer"))
            for _ in range(3)
        ]
    for err in errs:
        assert err.code() == grpc.StatusCode.INTERNAL  # not UNAVAILABLE: a retry cannot help
        assert "scorer 'nan_scorer' returned 1 non-finite scores" in err.details()
        assert "(plugin acme_scorers, package " in err.details()
    with_tb = [r for r in caplog.records if "nan_scorer" in r.getMessage() and r.exc_info]
    assert len(with_tb) == 1


def test_catalog_matrix_is_read_only_for_plugins(
    srv: ThreadServer, stub: ranker_pb2_grpc.RankerStub
) -> None:
    before = stub.Rank(ranker_pb2.RankRequest(context_text="rivers", top_k=5, policy="greedy"))
    err = _fail(stub.Rank, ranker_pb2.RankRequest(context_text="rivers", scorer="vandal"))
    assert err.code() == grpc.StatusCode.INTERNAL and "read-only" in err.details()
    after = stub.Rank(ranker_pb2.RankRequest(context_text="rivers", top_k=5, policy="greedy"))
    assert [(i.item_id, i.score) for i in after.items] == [
        (i.item_id, i.score) for i in before.items
    ]
    assert np.linalg.norm(srv.engine.bundle.item_embeddings, axis=1).min() > 0.99


def test_unbuildable_scorer_is_reported_by_get_info(stub: ranker_pb2_grpc.RankerStub) -> None:
    info = stub.GetInfo(ranker_pb2.GetInfoRequest(), timeout=10)
    problems = {(p.kind, p.name): p.error for p in info.unavailable_plugins}
    assert "needs a head" in problems[("scorer", "unbuildable")]
    assert "unbuildable" not in info.scorers


# ---------------------------------------------------------------- echo and ids
def test_huge_unknown_name_is_not_echoed_in_full(stub: ranker_pb2_grpc.RankerStub) -> None:
    err = _fail(stub.Rank, ranker_pb2.RankRequest(context_text="z", policy="p" * 100_000))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert len(err.details()) < 1000 and "greedy" in err.details()


@pytest.mark.parametrize("bad", ["id\n", "id\x7f", "id\x85", "id\u2028", "\x00", "a\tb", "x" * 257])
def test_ids_are_checked_whole(stub: ranker_pb2_grpc.RankerStub, bad: str) -> None:
    err = _fail(stub.Rank, ranker_pb2.RankRequest(user_id=bad, context_text="q"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("user_id: ")


def test_id_byte_limit(tiny_bundle: Path, tmp_path: Path) -> None:
    from explorank.engine.requests import RankInput, validate_rank
    from explorank.errors import InvalidArgumentError

    limits = make_config(tiny_bundle, tmp_path / "s.db", limits={"max_id_bytes": 8}).limits
    validate_rank(RankInput(user_id="abcdefgh"), limits)
    with pytest.raises(InvalidArgumentError, match="9 bytes in UTF-8; the limit is 8"):
        validate_rank(RankInput(user_id="abcdefgé"), limits)  # 8 characters, 9 bytes


def test_too_many_new_texts_is_invalid_argument_naming_the_limit(
    stub: ranker_pb2_grpc.RankerStub,
) -> None:
    cands = [ranker_pb2.Candidate(item_id=f"new-{i}", text=f"text {i}") for i in range(256)]
    err = _fail(stub.Rank, ranker_pb2.RankRequest(context_text="q", candidates=cands))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # never a retryable code
    assert "limits.max_new_texts" in err.details()
    ok = stub.Rank(ranker_pb2.RankRequest(context_text="q", candidates=cands[:255]), timeout=30)
    assert len(ok.items) == 10


def test_inconsistent_limits_refused_at_start(tiny_bundle: Path, tmp_path: Path) -> None:
    from explorank.errors import ConfigError

    with pytest.raises(ConfigError, match="limits.max_new_texts .* must fit"):
        make_config(tiny_bundle, tmp_path / "s.db", limits={"max_new_texts": 600})


# ------------------------------------------------------------ event id binding
def test_event_id_is_bound_to_its_request(stub: ranker_pb2_grpc.RankerStub) -> None:
    mine = ranker_pb2.RankRequest(
        event_id="evt-owned", user_id="alice", context_text="space opera", top_k=3
    )
    first = stub.Rank(mine, timeout=10)
    again = stub.Rank(mine, timeout=10)
    assert [i.item_id for i in again.items] == [i.item_id for i in first.items]
    for other in (
        ranker_pb2.RankRequest(
            event_id="evt-owned", user_id="mallory", context_text="space opera", top_k=3
        ),
        ranker_pb2.RankRequest(
            event_id="evt-owned", user_id="alice", context_text="cooking", top_k=3
        ),
        ranker_pb2.RankRequest(
            event_id="evt-owned",
            user_id="alice",
            context_text="space opera",
            top_k=3,
            policy="greedy",
        ),
    ):
        err = _fail(stub.Rank, other)
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "evt-owned" in err.details() and "alice" not in err.details()


def test_concurrent_repeats_of_one_event_id_share_the_first_result(
    stub: ranker_pb2_grpc.RankerStub,
) -> None:
    req = ranker_pb2.RankRequest(
        event_id="evt-concurrent", context_text="a very particular request", top_k=5
    )
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: stub.Rank(req, timeout=20), range(8)))
    first = [(i.item_id, i.propensity) for i in results[0].items]
    assert all([(i.item_id, i.propensity) for i in r.items] == first for r in results)


# -------------------------------------------------------------------- secrets
def test_redaction() -> None:
    assert redact("redis://:hunter2@db:6379/0 down") == "redis://:***@db:6379/0 down"
    assert redact("rediss://u:p@ss@h/0") == "rediss://u:***@h/0"
    assert redact("password=hunter2; token: abc") == "password=***; token: ***"
    assert redact("authorization: Bearer abc.def") == "authorization: Bearer ***"
    assert redact("redis://db:6379/0") == "redis://db:6379/0"


def test_unreachable_redis_never_shows_its_password() -> None:
    import asyncio

    from explorank.plugins.api import StateUnavailableError
    from explorank.plugins.builtin.redis_store import RedisStore

    store = RedisStore(url="redis://:hunter2@127.0.0.1:1/0", socket_timeout_s=0.5)
    with pytest.raises(StateUnavailableError) as info:
        asyncio.run(store.open())
    assert "hunter2" not in str(info.value) and "***" in str(info.value)
