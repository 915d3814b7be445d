"""The Open Inference Protocol (KServe v2) on explorank's port, driven with explorank's own
``explorank.oip`` messages (``tests/test_oip_tritonclient.py`` drives it with the real
tritonclient): the encoder and rank models, errors with the same codes as the Ranker API and
messages naming the tensor, readiness, auth, reflection."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

import explorank.oip as oip
from explorank.engine.bundle import load_bundle
from explorank.v1 import ranker_pb2, ranker_pb2_grpc
from tests.server_harness import ThreadServer, make_config

BATCHING = {"length_buckets": [64, 128], "max_batch_size": 8}


@pytest.fixture(scope="module")
def srv(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    tmp = tmp_path_factory.mktemp("oip")
    with ThreadServer(make_config(tiny_bundle, tmp / "state.db", batching=BATCHING)) as server:
        yield server


@pytest.fixture(scope="module")
def stub(srv: ThreadServer) -> Any:
    return oip.stub(srv.channel())


def _bytes_input(req: Any, name: str, values: list[bytes], raw: bool = False) -> None:
    t = req.inputs.add(name=name, datatype="BYTES", shape=[len(values)])
    if raw:
        req.raw_input_contents.append(b"".join(struct.pack("<I", len(v)) + v for v in values))
    else:
        t.contents.bytes_contents.extend(values)


def _infer(stub: Any, model: str, **inputs: Any) -> Any:
    req = oip.ModelInferRequest(model_name=model, id="req-1")
    for name, value in inputs.items():
        if name == "TOP_K":
            t = req.inputs.add(name="TOP_K", datatype="INT32", shape=[1])
            t.contents.int_contents.append(value)
        else:
            values = value if isinstance(value, list) else [value]
            _bytes_input(req, name, [v.encode() if isinstance(v, str) else v for v in values])
    return stub.ModelInfer(req, timeout=20)


def _outputs(resp: Any) -> dict[str, np.ndarray | list[str]]:
    dtypes = {"FP32": "<f4", "FP64": "<f8", "BOOL": np.bool_}
    out: dict[str, np.ndarray | list[str]] = {}
    for tensor, raw in zip(resp.outputs, resp.raw_output_contents, strict=True):
        shape = list(tensor.shape)
        if tensor.datatype == "BYTES":
            values, pos = [], 0
            while pos < len(raw):
                (n,) = struct.unpack_from("<I", raw, pos)
                values.append(raw[pos + 4 : pos + 4 + n].decode())
                pos += 4 + n
            assert len(values) == int(np.prod(shape))
            out[tensor.name] = values
        else:
            out[tensor.name] = np.frombuffer(raw, dtype=dtypes[tensor.datatype]).reshape(shape)
    return out


def _error(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as exc:
        call()
    return exc.value.code(), exc.value.details()  # type: ignore[attr-defined]


# --- the encoder model ---------------------------------------------------------------------


def test_encoder_embeds_catalog_texts_as_the_bundle_did(
    srv: ThreadServer, stub: Any, tiny_bundle: Path
) -> None:
    bundle = load_bundle(tiny_bundle)
    items = bundle.items[:5]
    matrix = np.load(tiny_bundle / "item_embeddings.npy")
    before = srv.engine.embedder.batcher.stats.requests
    resp = _infer(stub, "encoder", TEXT=[it.text for it in items])
    emb = _outputs(resp)["EMBEDDING"]
    assert isinstance(emb, np.ndarray) and emb.shape == (5, bundle.embedding_dim)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.allclose(emb, matrix[:5], atol=1e-4)  # the export encoded the same texts
    assert (resp.model_name, resp.id) == ("encoder", "req-1")
    assert resp.model_version == bundle.model_version
    # the texts went through the dynamic batcher, one sequence each
    assert srv.engine.embedder.batcher.stats.requests - before == 5


def test_encoder_reads_raw_contents_like_typed_contents(stub: Any) -> None:
    texts = [b"a quiet drama about the sea", "caf\u00e9 recipes".encode(), b"x"]
    raw = oip.ModelInferRequest(model_name="encoder")
    _bytes_input(raw, "TEXT", texts, raw=True)
    typed = oip.ModelInferRequest(model_name="encoder")
    _bytes_input(typed, "TEXT", texts)
    a = _outputs(stub.ModelInfer(raw, timeout=20))["EMBEDDING"]
    b = _outputs(stub.ModelInfer(typed, timeout=20))["EMBEDDING"]
    assert isinstance(a, np.ndarray) and a.shape[0] == 3
    assert np.allclose(a, b, atol=1e-6)
    assert not np.allclose(a[0], a[1], atol=1e-3)  # different texts, different vectors


# --- the rank model ------------------------------------------------------------------------


def test_rank_logs_the_event_and_reward_follows_through_the_ranker_api(
    srv: ThreadServer, stub: Any, tiny_bundle: Path
) -> None:
    ids = [it.id for it in load_bundle(tiny_bundle).items[:12]]
    resp = _infer(
        stub,
        "rank",
        CONTEXT_TEXT="a story about the sea",
        USER_ID="u-oip",
        CANDIDATE_IDS=ids,
        TOP_K=4,
        POLICY="greedy",
    )
    out = _outputs(resp)
    assert set(out) == {"ITEM_IDS", "SCORES", "PROPENSITIES", "EXPLORED", "EVENT_ID"}
    ranked, scores, props = out["ITEM_IDS"], out["SCORES"], out["PROPENSITIES"]
    assert isinstance(ranked, list) and len(ranked) == 4 and set(ranked) <= set(ids)
    assert isinstance(scores, np.ndarray) and list(scores) == sorted(scores, reverse=True)
    assert isinstance(props, np.ndarray) and np.all(props == 1.0)  # greedy: no exploration
    (event_id,) = out["EVENT_ID"]
    event = srv.run(srv.engine.events.get(event_id))
    assert event is not None and event.user_id == "u-oip" and event.policy == "greedy"
    assert list(event.ranked_ids) == ranked
    ranker = ranker_pb2_grpc.RankerStub(srv.channel())
    reward = ranker.Reward(
        ranker_pb2.RewardRequest(event_id=event_id, item_id=ranked[0], value=1.0), timeout=10
    )
    assert reward.accepted and not reward.duplicate


def test_rank_with_an_event_id_is_idempotent_and_new_texts_are_encoded(stub: Any) -> None:
    kwargs: dict[str, Any] = dict(
        CONTEXT_TEXT="space opera",
        CANDIDATE_IDS=["new-1", "new-2", "new-3"],
        CANDIDATE_TEXTS=["a film about stars", "a book of recipes", "a quiet garden"],
        EVENT_ID="oip-event-1",
    )
    first = _outputs(_infer(stub, "rank", **kwargs))
    again = _outputs(_infer(stub, "rank", **kwargs))
    assert first["EVENT_ID"] == again["EVENT_ID"] == ["oip-event-1"]
    assert first["ITEM_IDS"] == again["ITEM_IDS"]
    assert sorted(first["ITEM_IDS"]) == ["new-1", "new-2", "new-3"]  # type: ignore[type-var]


def test_requested_outputs_only(stub: Any) -> None:
    req = oip.ModelInferRequest(model_name="rank")
    _bytes_input(req, "CONTEXT_TEXT", [b"a thriller"])
    req.outputs.add(name="EVENT_ID")
    req.outputs.add(name="ITEM_IDS")
    out = _outputs(stub.ModelInfer(req, timeout=20))
    assert set(out) == {"EVENT_ID", "ITEM_IDS"}


# --- errors: the Ranker API's codes, messages naming the tensor ----------------------------


def _raw_count_mismatch() -> Any:
    req = oip.ModelInferRequest(model_name="encoder")
    req.inputs.add(name="TEXT", datatype="BYTES", shape=[2])
    req.raw_input_contents.append(struct.pack("<I", 1) + b"a")
    req.raw_input_contents.append(b"")
    return req


def _truncated_raw() -> Any:
    req = oip.ModelInferRequest(model_name="encoder")
    req.inputs.add(name="TEXT", datatype="BYTES", shape=[2])
    req.raw_input_contents.append(struct.pack("<I", 1) + b"a")
    return req


def _wrong_type() -> Any:
    req = oip.ModelInferRequest(model_name="encoder")
    t = req.inputs.add(name="TEXT", datatype="FP32", shape=[1])
    t.contents.fp32_contents.append(1.0)
    return req


def _bad_utf8() -> Any:
    req = oip.ModelInferRequest(model_name="encoder")
    _bytes_input(req, "TEXT", [b"fine", b"\xff\xfe"])
    return req


def _shape_mismatch() -> Any:
    req = oip.ModelInferRequest(model_name="encoder")
    t = req.inputs.add(name="TEXT", datatype="BYTES", shape=[3])
    t.contents.bytes_contents.extend([b"a", b"b"])
    return req


def _empty_text() -> Any:
    req = oip.ModelInferRequest(model_name="encoder")
    _bytes_input(req, "TEXT", [b"fine", b"  "])
    return req


def _too_many_texts() -> Any:
    req = oip.ModelInferRequest(model_name="encoder")
    _bytes_input(req, "TEXT", [b"text"] * 2000)
    return req


def _rank(**inputs: Any) -> Any:
    req = oip.ModelInferRequest(model_name="rank")
    for name, value in inputs.items():
        if name == "TOP_K":
            t = req.inputs.add(name="TOP_K", datatype="INT64", shape=[1])
            t.contents.int64_contents.append(value)
        else:
            values = value if isinstance(value, list) else [value]
            _bytes_input(req, name, [v.encode() for v in values])
    return req


def _unknown_output() -> Any:
    req = _rank(CONTEXT_TEXT="x")
    req.outputs.add(name="LOGITS")
    return req


INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
BAD_REQUESTS = [
    (oip.ModelInferRequest(model_name="bert"), NOT_FOUND, "model_name: unknown model 'bert'"),
    (
        oip.ModelInferRequest(model_name="encoder", model_version="7"),
        NOT_FOUND,
        "model_version: '7' is not served",
    ),
    (oip.ModelInferRequest(model_name="encoder"), INVALID, "inputs[TEXT]: required"),
    (_wrong_type(), INVALID, "inputs[TEXT].datatype: is 'FP32'; expected BYTES"),
    (_bad_utf8(), INVALID, "inputs[TEXT][1]: is not valid UTF-8"),
    (_shape_mismatch(), INVALID, "inputs[TEXT]: shape [3] holds 3 elements but 2 were sent"),
    (_raw_count_mismatch(), INVALID, "raw_input_contents: has 2 entries for 1 inputs"),
    (_truncated_raw(), INVALID, "inputs[TEXT]: raw contents end after 1 of 2 elements"),
    (_empty_text(), INVALID, "inputs[TEXT][1]: text is empty"),
    (_too_many_texts(), INVALID, "inputs[TEXT]: has 2000 texts; the limit is"),
    (_rank(CONTEXT_TEXT="x", COLOR="red"), INVALID, "inputs[1].name: model 'rank' has no input"),
    (_rank(USER_ID="u"), INVALID, "inputs[CONTEXT_TEXT]: required by model 'rank'"),
    (_rank(CONTEXT_TEXT="x", TOP_K=10**6), INVALID, "inputs[TOP_K]: is 1000000; the limit is"),
    (_rank(CONTEXT_TEXT="x", TOP_K=0), INVALID, "inputs[TOP_K]: must be >= 1"),
    (_rank(CONTEXT_TEXT="x", POLICY="nope"), NOT_FOUND, "unknown policy 'nope'"),
    (
        _rank(CONTEXT_TEXT="x", HISTORY_ITEM_IDS=["missing-item"]),
        NOT_FOUND,
        "inputs[HISTORY_ITEM_IDS][0]: item 'missing-item' is not in the catalog",
    ),
    (
        _rank(CONTEXT_TEXT="x", CANDIDATE_IDS=["new-9"]),
        INVALID,
        "inputs[CANDIDATE_TEXTS][0]: required: item 'new-9' is not in the catalog",
    ),
    (
        _rank(CONTEXT_TEXT="x", CANDIDATE_IDS=["a", "b"], CANDIDATE_TEXTS=["t"]),
        INVALID,
        "inputs[CANDIDATE_TEXTS]: has 1 elements for 2 CANDIDATE_IDS",
    ),
    (
        _rank(CONTEXT_TEXT="x", CANDIDATE_IDS=["a", "a"], CANDIDATE_TEXTS=["t", "t"]),
        INVALID,
        "inputs[CANDIDATE_IDS][1]: duplicate candidate 'a'",
    ),
    (_rank(CONTEXT_TEXT="x", USER_ID="bad\nid"), INVALID, "inputs[USER_ID]: must not contain"),
    (_unknown_output(), INVALID, "outputs[0].name: model 'rank' has no output 'LOGITS'"),
]


@pytest.mark.parametrize(
    ("request_", "code", "message"), BAD_REQUESTS, ids=[m[:40] for _, _, m in BAD_REQUESTS]
)
def test_bad_requests_get_the_ranker_codes_and_name_the_tensor(
    stub: Any, request_: Any, code: grpc.StatusCode, message: str
) -> None:
    got_code, details = _error(lambda: stub.ModelInfer(request_, timeout=20))
    assert got_code == code, details
    assert message in details


def test_a_body_that_is_not_protobuf_is_invalid_argument(srv: ThreadServer) -> None:
    call = srv.channel().unary_unary(
        f"/{oip.SERVICE_NAME}/ModelInfer",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    code, details = _error(lambda: call(b"\xff\xff\xff\xff", timeout=10))
    assert code == INVALID and "not a valid protobuf message" in details


def test_unserved_methods_are_unimplemented(srv: ThreadServer) -> None:
    call = srv.channel().unary_unary(
        f"/{oip.SERVICE_NAME}/RepositoryIndex",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    code, _ = _error(lambda: call(b"", timeout=10))
    assert code == grpc.StatusCode.UNIMPLEMENTED


# --- health, metadata, config ----------------------------------------------------------------


def test_liveness_readiness_follow_the_health_service(srv: ThreadServer, stub: Any) -> None:
    assert stub.ServerLive(oip.ServerLiveRequest(), timeout=5).live
    assert stub.ServerReady(oip.ServerReadyRequest(), timeout=5).ready
    assert stub.ModelReady(oip.ModelReadyRequest(name="rank"), timeout=5).ready
    code, details = _error(lambda: stub.ModelReady(oip.ModelReadyRequest(name="x"), timeout=5))
    assert code == NOT_FOUND and "unknown model 'x'" in details
    assert srv.server is not None
    srv.server._serving = False  # what the health loop sets when Redis or the encoder fails
    try:
        assert not stub.ServerReady(oip.ServerReadyRequest(), timeout=5).ready
        assert not stub.ModelReady(oip.ModelReadyRequest(name="encoder"), timeout=5).ready
        assert stub.ServerLive(oip.ServerLiveRequest(), timeout=5).live
    finally:
        srv.server._serving = True


def test_metadata_and_config_describe_the_models(srv: ThreadServer, stub: Any) -> None:
    server = stub.ServerMetadata(oip.ServerMetadataRequest(), timeout=5)
    assert server.name == "explorank" and server.version
    dim = srv.engine.bundle.embedding_dim
    meta = stub.ModelMetadata(oip.ModelMetadataRequest(name="encoder"), timeout=5)
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("TEXT", "BYTES", [-1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("EMBEDDING", "FP32", [-1, dim])
    ]
    assert list(meta.versions) == [srv.engine.bundle.model_version]
    rank = stub.ModelMetadata(oip.ModelMetadataRequest(name="rank"), timeout=5)
    assert {t.name for t in rank.outputs} == {
        "ITEM_IDS",
        "SCORES",
        "PROPENSITIES",
        "EXPLORED",
        "EVENT_ID",
    }
    cfg = stub.ModelConfig(oip.ModelConfigRequest(name="rank"), timeout=5).config
    assert cfg.name == "rank" and cfg.max_batch_size == 0
    optional = {i.name: i.optional for i in cfg.input}
    assert optional["CONTEXT_TEXT"] is False and optional["CANDIDATE_IDS"] is True
    assert cfg.parameters["batching.max_batch_size"].string_value == "8"
    assert "greedy" in cfg.parameters["policies"].string_value.split(",")


def test_requests_are_counted_by_rpc_and_code(srv: ThreadServer, stub: Any) -> None:
    counter = srv.engine.metrics.requests
    ok = counter.labels("ModelInfer", "OK")._value.get()
    bad = counter.labels("ModelInfer", "NOT_FOUND")._value.get()
    _infer(stub, "encoder", TEXT=["x"])
    _error(lambda: stub.ModelInfer(oip.ModelInferRequest(model_name="zzz"), timeout=5))
    end = time.monotonic() + 5  # an aborted call is counted just after its status is sent
    while counter.labels("ModelInfer", "NOT_FOUND")._value.get() == bad and time.monotonic() < end:
        time.sleep(0.01)
    assert counter.labels("ModelInfer", "OK")._value.get() == ok + 1
    assert counter.labels("ModelInfer", "NOT_FOUND")._value.get() == bad + 1


def test_reflection_lists_and_describes_the_service(srv: ThreadServer) -> None:
    db = ProtoReflectionDescriptorDatabase(srv.channel())
    services = set(db.get_services())
    assert {"inference.GRPCInferenceService", "explorank.v1.Ranker"} <= services
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.DescriptorPool(db)
    svc = pool.FindServiceByName("inference.GRPCInferenceService")
    assert svc.methods_by_name["ModelInfer"].input_type.full_name == "inference.ModelInferRequest"
    assert pool.FindMessageTypeByName("inference.ModelConfig").fields_by_name["max_batch_size"]


def test_oip_can_be_switched_off(tiny_bundle: Path, tmp_path: Path) -> None:
    config = make_config(tiny_bundle, tmp_path / "s.db", server={"oip": False}, batching=BATCHING)
    with ThreadServer(config) as s:
        code, _ = _error(
            lambda: oip.stub(s.channel()).ServerLive(oip.ServerLiveRequest(), timeout=5)
        )
        assert code == grpc.StatusCode.UNIMPLEMENTED
        assert (
            "inference.GRPCInferenceService"
            not in ProtoReflectionDescriptorDatabase(s.channel()).get_services()
        )


# --- auth: inference needs the rank scope, liveness and readiness stay open -----------------

RANK_TOKEN = "oip-rank-0123456789abcdef0123456789"
REWARD_TOKEN = "oip-reward-0123456789abcdef012345678"


def test_auth_scopes_on_the_inference_service(tiny_bundle: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'"{RANK_TOKEN}" = ["rank"]\n"{REWARD_TOKEN}" = ["reward"]\n')
    tokens.chmod(0o600)
    config = make_config(
        tiny_bundle,
        tmp_path / "s.db",
        server={"auth": {"tokens_file": str(tokens)}},
        batching=BATCHING,
    )
    with ThreadServer(config) as s:
        st = oip.stub(s.channel())

        def md(token: str) -> tuple[tuple[str, str], ...]:
            return (("authorization", f"Bearer {token}"),)

        infer = oip.ModelInferRequest(model_name="encoder")
        _bytes_input(infer, "TEXT", [b"hello"])
        assert st.ServerLive(oip.ServerLiveRequest(), timeout=5).live  # no token
        assert st.ServerReady(oip.ServerReadyRequest(), timeout=5).ready
        assert st.ModelReady(oip.ModelReadyRequest(name="encoder"), timeout=5).ready
        code, _ = _error(lambda: st.ModelInfer(infer, timeout=10))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, details = _error(lambda: st.ModelInfer(infer, timeout=10, metadata=md(REWARD_TOKEN)))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "'rank' scope" in details
        code, _ = _error(lambda: st.ModelMetadata(oip.ModelMetadataRequest(name="rank"), timeout=5))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        out = st.ModelInfer(infer, timeout=10, metadata=md(RANK_TOKEN))
        assert out.outputs[0].name == "EMBEDDING"
        # a method the server does not serve is UNIMPLEMENTED for everyone, not a denial
        stats = s.channel().unary_unary(
            f"/{oip.SERVICE_NAME}/ModelStatistics",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        code, _ = _error(lambda: stats(b"", timeout=5, metadata=md(RANK_TOKEN)))
        assert code == grpc.StatusCode.UNIMPLEMENTED
