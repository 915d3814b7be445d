"""A client written for Triton, unchanged, against explorank: the real ``tritonclient[grpc]``
package (it pins protobuf < 7, so CI runs this file in its protobuf-6 step, scripts/ci-protobuf6.sh;
without tritonclient it skips). The server runs in this same process, so this also shows that
explorank's Open Inference Protocol messages and tritonclient's share a process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tc = pytest.importorskip(
    "tritonclient.grpc",
    reason="tritonclient[grpc] is not installed (it needs protobuf < 7; CI's protobuf-6 step, "
    "scripts/ci-protobuf6.sh, installs it and runs this file)",
)
from tritonclient.utils import InferenceServerException  # noqa: E402

from explorank.engine.bundle import load_bundle  # noqa: E402
from explorank.engine.client import RankerClient  # noqa: E402
from tests.server_harness import ThreadServer, make_config  # noqa: E402


@pytest.fixture(scope="module")
def srv(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    tmp = tmp_path_factory.mktemp("triton")
    batching = {"length_buckets": [64, 128], "max_batch_size": 8}
    with ThreadServer(make_config(tiny_bundle, tmp / "state.db", batching=batching)) as server:
        yield server


@pytest.fixture(scope="module")
def client(srv: ThreadServer) -> Iterator[Any]:
    c = tc.InferenceServerClient(url=srv.address)
    yield c
    c.close()


def _bytes(name: str, values: list[str]) -> Any:
    inp = tc.InferInput(name, [len(values)], "BYTES")
    inp.set_data_from_numpy(np.array([v.encode() for v in values], dtype=np.object_))
    return inp


def test_the_descriptors_are_tritonclients() -> None:
    """explorank's vendored proto is the one tritonclient was generated from (json_name
    aside, which only the descriptor-set output carries)."""
    from google.protobuf import descriptor_pb2
    from tritonclient.grpc import model_config_pb2, service_pb2

    import explorank.oip as oip

    def strip(proto: Any) -> Any:
        def walk(m: Any) -> None:
            for f in m.field:
                f.ClearField("json_name")
            for n in m.nested_type:
                walk(n)

        for m in proto.message_type:
            walk(m)
        return proto

    ours = [strip(descriptor_pb2.FileDescriptorProto.FromString(d)) for d in oip.FILES]
    theirs = [
        strip(descriptor_pb2.FileDescriptorProto.FromString(m.DESCRIPTOR.serialized_pb))
        for m in (model_config_pb2, service_pb2)
    ]
    assert [f.name for f in ours] == [f.name for f in theirs]
    assert ours == theirs


def test_health_and_metadata(client: Any, srv: ThreadServer) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("encoder") and client.is_model_ready("rank")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "explorank"
    model = client.get_model_metadata("encoder", as_json=True)
    assert model["inputs"] == [{"name": "TEXT", "datatype": "BYTES", "shape": ["-1"]}]
    dim = srv.engine.bundle.embedding_dim
    assert model["outputs"] == [
        {"name": "EMBEDDING", "datatype": "FP32", "shape": ["-1", str(dim)]}
    ]
    config = client.get_model_config("rank", as_json=True)["config"]
    assert config["name"] == "rank"
    assert {i["name"] for i in config["input"]} >= {"CONTEXT_TEXT", "CANDIDATE_IDS", "TOP_K"}


def test_encoder_embeddings(client: Any, tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    texts = [it.text for it in bundle.items[:3]]
    result = client.infer("encoder", [_bytes("TEXT", texts)])
    emb = result.as_numpy("EMBEDDING")
    assert emb.dtype == np.float32 and emb.shape == (3, bundle.embedding_dim)
    assert np.allclose(emb, np.load(tiny_bundle / "item_embeddings.npy")[:3], atol=1e-4)
    assert result.get_response().model_version == bundle.model_version


def test_rank_then_reward_through_the_ranker_api(
    client: Any, srv: ThreadServer, tiny_bundle: Path
) -> None:
    ids = [it.id for it in load_bundle(tiny_bundle).items[:10]]
    top_k = tc.InferInput("TOP_K", [1], "INT32")
    top_k.set_data_from_numpy(np.array([3], dtype=np.int32))
    result = client.infer(
        "rank",
        [_bytes("CONTEXT_TEXT", ["a quiet story"]), _bytes("CANDIDATE_IDS", ids), top_k],
        outputs=[tc.InferRequestedOutput(n) for n in ("ITEM_IDS", "PROPENSITIES", "EVENT_ID")],
    )
    items = [x.decode() for x in result.as_numpy("ITEM_IDS")]
    props = result.as_numpy("PROPENSITIES")
    (event_id,) = [x.decode() for x in result.as_numpy("EVENT_ID")]
    assert len(items) == 3 and set(items) <= set(ids)
    assert props.dtype == np.float64 and np.all((props > 0) & (props <= 1))
    assert result.as_numpy("SCORES") is None  # not requested, not sent
    with RankerClient(srv.address) as ranker:
        reward = ranker.reward(event_id, items[0], 1.0)
    assert reward.accepted and not reward.duplicate


def test_errors_reach_the_triton_client_with_the_ranker_codes(client: Any) -> None:
    with pytest.raises(InferenceServerException) as exc:
        client.infer("bert", [_bytes("TEXT", ["x"])])
    assert exc.value.status() == "StatusCode.NOT_FOUND"
    assert "unknown model 'bert'" in exc.value.message()
    bad = tc.InferInput("TEXT", [1], "FP32")
    bad.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    with pytest.raises(InferenceServerException) as exc:
        client.infer("encoder", [bad])
    assert exc.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "inputs[TEXT].datatype" in exc.value.message()
    with pytest.raises(InferenceServerException) as exc:
        client.infer("rank", [_bytes("CONTEXT_TEXT", ["x"]), _bytes("POLICY", ["nope"])])
    assert exc.value.status() == "StatusCode.NOT_FOUND"


def test_the_asyncio_triton_client(srv: ThreadServer) -> None:
    import asyncio

    import tritonclient.grpc.aio as tca

    async def run() -> Any:
        async with tca.InferenceServerClient(url=srv.address) as c:
            result = await c.infer("encoder", [_bytes("TEXT", ["a", "b c"])])
            return result.as_numpy("EMBEDDING")

    emb = asyncio.run(run())
    assert emb.shape == (2, srv.engine.bundle.embedding_dim)
