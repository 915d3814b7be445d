"""Integration tests: a real server on a loopback port, a tiny exported model, generated stubs."""

from __future__ import annotations

import concurrent.futures
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from explorank.engine.bundle import load_bundle
from explorank.v1 import ranker_pb2, ranker_pb2_grpc
from tests.server_harness import ThreadServer, free_port, make_config

BUILTIN_POLICIES = ("greedy", "epsilon_greedy", "softmax", "ucb1", "thompson", "linucb", "lin_ts")


@pytest.fixture(scope="module")
def srv(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("srv")
    metrics_port = free_port()
    config = make_config(tiny_bundle, tmp / "state.db", server={"metrics_port": metrics_port})
    with ThreadServer(config) as server:
        server.metrics_port = metrics_port  # type: ignore[attr-defined]
        yield server


@pytest.fixture(scope="module")
def stub(srv: ThreadServer) -> ranker_pb2_grpc.RankerStub:
    return ranker_pb2_grpc.RankerStub(srv.channel())


@pytest.fixture(scope="module")
def catalog_ids(tiny_bundle: Path) -> list[str]:
    return [it.id for it in load_bundle(tiny_bundle).items]


def _code(excinfo: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return excinfo.value.code()  # type: ignore[attr-defined]


def test_health_serving_after_warmup(srv: ThreadServer) -> None:
    health = health_pb2_grpc.HealthStub(srv.channel())
    for service in ("", "explorank.v1.Ranker"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_ranker(srv: ThreadServer) -> None:
    refl = reflection_pb2_grpc.ServerReflectionStub(srv.channel())
    responses = refl.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert "explorank.v1.Ranker" in names
    assert "grpc.health.v1.Health" in names


def test_rank_returns_top_k_with_propensities(
    stub: ranker_pb2_grpc.RankerStub, catalog_ids: list[str]
) -> None:
    resp = stub.Rank(
        ranker_pb2.RankRequest(user_id="u1", context_text="space adventure", top_k=5), timeout=10
    )
    assert len(resp.items) == 5
    assert (
        resp.event_id
        and resp.model_version
        and resp.scorer == "mf"
        and resp.policy == "epsilon_greedy"
    )
    ids = [i.item_id for i in resp.items]
    assert len(set(ids)) == 5 and set(ids) <= set(catalog_ids)
    for item in resp.items:
        assert 0.0 < item.propensity <= 1.0


@pytest.mark.parametrize("policy", BUILTIN_POLICIES)
@pytest.mark.parametrize("scorer", ["mf", "neural"])
def test_every_builtin_policy_and_scorer(
    stub: ranker_pb2_grpc.RankerStub, catalog_ids: list[str], policy: str, scorer: str
) -> None:
    cands = [ranker_pb2.Candidate(item_id=i) for i in catalog_ids[:20]]
    resp = stub.Rank(
        ranker_pb2.RankRequest(
            user_id="u",
            context_text="hello",
            candidates=cands,
            top_k=7,
            policy=policy,
            scorer=scorer,
        ),
        timeout=10,
    )
    assert resp.policy == policy and resp.scorer == scorer
    assert len(resp.items) == 7
    assert {i.item_id for i in resp.items} <= {c.item_id for c in cands}
    assert all(0.0 < i.propensity <= 1.0 for i in resp.items)
    if policy == "greedy":
        scores = [i.score for i in resp.items]
        assert scores == sorted(scores, reverse=True)
        assert all(i.propensity == 1.0 and not i.explored for i in resp.items)


def test_same_event_id_is_idempotent(stub: ranker_pb2_grpc.RankerStub) -> None:
    req = ranker_pb2.RankRequest(
        event_id="evt-idem-1", user_id="u", context_text="cooking", top_k=4
    )
    first = stub.Rank(req, timeout=10)
    second = stub.Rank(req, timeout=10)
    assert first.event_id == "evt-idem-1"
    assert [i.item_id for i in first.items] == [i.item_id for i in second.items]
    assert [i.propensity for i in first.items] == [i.propensity for i in second.items]


def test_reward_accepted_then_duplicate(stub: ranker_pb2_grpc.RankerStub) -> None:
    resp = stub.Rank(ranker_pb2.RankRequest(user_id="u2", context_text="jazz", top_k=3), timeout=10)
    item = resp.items[1].item_id
    first = stub.Reward(
        ranker_pb2.RewardRequest(event_id=resp.event_id, item_id=item, value=1.0), timeout=10
    )
    assert first.accepted and not first.duplicate
    again = stub.Reward(
        ranker_pb2.RewardRequest(event_id=resp.event_id, item_id=item, value=1.0), timeout=10
    )
    assert again.duplicate and not again.accepted


def test_reward_errors(stub: ranker_pb2_grpc.RankerStub, catalog_ids: list[str]) -> None:
    resp = stub.Rank(
        ranker_pb2.RankRequest(
            user_id="u3",
            candidates=[ranker_pb2.Candidate(item_id=i) for i in catalog_ids[:5]],
            top_k=2,
        ),
        timeout=10,
    )
    with pytest.raises(grpc.RpcError) as exc:
        stub.Reward(
            ranker_pb2.RewardRequest(event_id="no-such-event", item_id="x", value=1.0), timeout=10
        )
    assert _code(exc) == grpc.StatusCode.NOT_FOUND
    not_returned = next(i for i in catalog_ids[:5] if i not in {x.item_id for x in resp.items})
    with pytest.raises(grpc.RpcError) as exc:
        stub.Reward(
            ranker_pb2.RewardRequest(event_id=resp.event_id, item_id=not_returned, value=1.0),
            timeout=10,
        )
    assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT
    assert "item_id" in exc.value.details()  # type: ignore[attr-defined]
    for bad in (1.5, float("nan"), float("inf"), -2.0):
        with pytest.raises(grpc.RpcError) as exc:
            stub.Reward(
                ranker_pb2.RewardRequest(
                    event_id=resp.event_id, item_id=resp.items[0].item_id, value=bad
                ),
                timeout=10,
            )
        assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT
        assert "value" in exc.value.details()  # type: ignore[attr-defined]


def test_unknown_plugins_are_not_found(stub: ranker_pb2_grpc.RankerStub) -> None:
    for req in (
        ranker_pb2.RankRequest(policy="no-such-policy"),
        ranker_pb2.RankRequest(scorer="nope"),
    ):
        with pytest.raises(grpc.RpcError) as exc:
            stub.Rank(req, timeout=10)
        assert _code(exc) == grpc.StatusCode.NOT_FOUND
        assert "no-such-policy" in exc.value.details() or "nope" in exc.value.details()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("request_kwargs", "field"),
    [
        ({"top_k": 100000}, "top_k"),
        ({"candidates": [ranker_pb2.Candidate(item_id="")]}, "candidates[0].item_id"),
        ({"candidates": [ranker_pb2.Candidate(item_id="not-in-catalog")]}, "candidates[0].text"),
        ({"context_text": "x" * 100_000}, "context_text"),
    ],
)
def test_invalid_input_is_invalid_argument(
    stub: ranker_pb2_grpc.RankerStub, request_kwargs: dict, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        stub.Rank(ranker_pb2.RankRequest(**request_kwargs), timeout=10)
    assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT
    assert exc.value.details().startswith(field)  # type: ignore[attr-defined]


def test_unknown_history_item_is_not_found(stub: ranker_pb2_grpc.RankerStub) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        stub.Rank(ranker_pb2.RankRequest(history_item_ids=["missing-item"]), timeout=10)
    assert _code(exc) == grpc.StatusCode.NOT_FOUND


def test_text_candidates_are_encoded_and_scored(
    stub: ranker_pb2_grpc.RankerStub, catalog_ids: list[str]
) -> None:
    cands = [
        ranker_pb2.Candidate(item_id=f"new-{i}", text=f"brand new item number {i} about rivers")
        for i in range(6)
    ]
    cands.append(ranker_pb2.Candidate(item_id=catalog_ids[0]))
    resp = stub.Rank(
        ranker_pb2.RankRequest(context_text="rivers", candidates=cands, top_k=7, policy="greedy"),
        timeout=10,
    )
    assert {i.item_id for i in resp.items} == {c.item_id for c in cands}
    # a second call hits the item cache and returns identical scores
    again = stub.Rank(
        ranker_pb2.RankRequest(context_text="rivers", candidates=cands, top_k=7, policy="greedy"),
        timeout=10,
    )
    assert [(i.item_id, i.score) for i in resp.items] == [(i.item_id, i.score) for i in again.items]


def test_concurrent_requests_get_their_own_results(
    tiny_bundle: Path, tmp_path: Path, catalog_ids: list[str]
) -> None:
    # fp32: INT8 dynamic quantization scales activations per batch, so under INT8 an
    # embedding moves slightly (~1e-3) with its batch companions; fp32 makes any mix-up visible.
    config = make_config(tiny_bundle, tmp_path / "s.db", backend={"precision": "fp32"})
    with ThreadServer(config) as srv:
        stub = ranker_pb2_grpc.RankerStub(srv.channel())
        cands = [ranker_pb2.Candidate(item_id=i) for i in catalog_ids[:30]]
        contexts = [
            f"user {i} likes " + " ".join(["topic"] * (i % 13)) + f" number {i}" for i in range(48)
        ]

        def call(ctx: str) -> dict[str, float]:
            r = stub.Rank(
                ranker_pb2.RankRequest(
                    context_text=ctx, candidates=cands, top_k=30, policy="greedy"
                ),
                timeout=30,
            )
            return {i.item_id: i.score for i in r.items}

        serial = {c: call(c) for c in contexts}
        srv.engine.embedder.user_cache.clear()
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            concurrent_results = dict(zip(contexts, pool.map(call, contexts), strict=True))
        stats = srv.engine.embedder.batcher.stats
    for ctx in contexts:
        for item_id, score in serial[ctx].items():
            assert concurrent_results[ctx][item_id] == pytest.approx(score, abs=1e-4), ctx
    assert stats.requests / stats.batches > 1.0


def test_get_info_reports_backend(stub: ranker_pb2_grpc.RankerStub) -> None:
    info = stub.GetInfo(ranker_pb2.GetInfoRequest(), timeout=10)
    assert info.backend == "onnxruntime"
    assert info.execution_provider == "CPUExecutionProvider"
    assert info.precision == "fp32"  # the tiny bundle has no INT8 encoder
    assert "no INT8 encoder" in info.precision_reason
    assert not info.HasField("int8_gate")
    assert set(BUILTIN_POLICIES) <= set(info.policies)
    assert {"mf", "neural"} <= set(info.scorers)
    assert info.batching.max_batch_size == 16
    assert info.catalog_size > 0 and info.embedding_dim > 0
    assert (info.worker_index, info.worker_count) == (0, 1)  # not a `serve --workers` process


def test_metrics_endpoint(srv: ThreadServer, stub: ranker_pb2_grpc.RankerStub) -> None:
    stub.Rank(ranker_pb2.RankRequest(context_text="metrics please"), timeout=10)
    body = (
        urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=5)
        .read()
        .decode()
    )  # type: ignore[attr-defined]
    assert 'explorank_requests_total{code="OK",rpc="Rank"}' in body
    assert "explorank_batch_size_count" in body
    assert 'explorank_stage_seconds_count{stage="encode"}' in body
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in body.splitlines()
        if line and not line.startswith("#")
    }
    # the caches against their budgets: the Rank above logged an event and cached its user
    assert values['explorank_cache_entries{cache="event"}'] >= 1
    assert values['explorank_cache_entries{cache="user"}'] >= 1
    assert (
        0
        < values['explorank_cache_bytes{cache="user"}']
        <= values['explorank_cache_budget_bytes{cache="user"}']
    )
    assert values['explorank_cache_budget_bytes{cache="event"}'] == 64 * 2**20
    assert values["process_resident_memory_bytes"] > 10 * 2**20
    # the fitted encoder cost model, as the server's admission holds it (warm-up fitted it)
    service = srv.engine.gen.embedder.batcher.admission.service
    assert service.per_token is not None and service.per_token > 0
    assert values['explorank_encoder_cost_seconds{term="per_token"}'] == pytest.approx(
        service.per_token, rel=1e-6
    )
    assert values['explorank_encoder_cost_seconds{term="overhead"}'] >= 0


def test_overload_is_resource_exhausted_never_internal(tiny_bundle: Path, tmp_path: Path) -> None:
    config = make_config(
        tiny_bundle,
        tmp_path / "s.db",
        batching={
            "max_batch_size": 1,
            "max_queue_size": 1,
            "max_queue_delay_ms": 0.0,
            "max_request_share": 1.0,
        },
        limits={"max_new_texts": 0},  # a one-sequence queue fits only the user context
    )
    with ThreadServer(config) as srv:
        stub = ranker_pb2_grpc.RankerStub(srv.channel())

        def call(i: int) -> grpc.StatusCode:
            try:
                stub.Rank(
                    ranker_pb2.RankRequest(context_text=f"flood {i} " * (1 + i % 7)), timeout=30
                )
            except grpc.RpcError as err:
                return err.code()  # type: ignore[no-any-return,attr-defined]
            return grpc.StatusCode.OK

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            codes = list(pool.map(call, range(96)))
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        assert grpc.StatusCode.OK in codes
        # and the server still serves normally afterwards
        assert (
            len(stub.Rank(ranker_pb2.RankRequest(context_text="after", top_k=2), timeout=10).items)
            == 2
        )


def test_expired_deadline_is_deadline_exceeded(
    srv: ThreadServer, stub: ranker_pb2_grpc.RankerStub
) -> None:
    """A request whose deadline has passed is refused before the encoder runs, and the
    refusal maps to DEADLINE_EXCEEDED (deterministic: the deadline is already over)."""
    import time as _time

    from explorank.engine.grpc_errors import status_for
    from explorank.engine.requests import RankInput
    from explorank.errors import DeadlineExceededError

    before = srv.engine.embedder.batcher.stats.requests
    with pytest.raises(DeadlineExceededError) as exc:
        srv.run(
            srv.engine.rank(
                RankInput(context_text="expired before it started"), deadline=_time.monotonic() - 1
            )
        )
    assert status_for(exc.value) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert srv.engine.embedder.batcher.stats.requests == before  # nothing was computed
    assert len(stub.Rank(ranker_pb2.RankRequest(context_text="in time"), timeout=10).items) > 0


def test_scoring_heads_get_real_onnxruntime_providers(srv: ThreadServer) -> None:
    """The native TensorRT backend reports provider "TensorRT", which ONNX Runtime does not
    know: heads must get ORT provider names (CPU here, CUDA EP on a GPU)."""
    import onnxruntime as ort

    from explorank.engine.generation import head_providers

    assert head_providers(srv.engine.backend) == ("CPUExecutionProvider",)

    class FakeTensorRT:
        provider = "TensorRT"

    providers = head_providers(FakeTensorRT())
    assert set(providers) <= set(ort.get_available_providers())
    assert providers[-1] == "CPUExecutionProvider" and "TensorRT" not in providers
