"""A Rank call the way grpcurl makes it: service and message types discovered through
server reflection, request built from JSON, no generated stubs and no proto file."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.server_harness import ThreadServer, make_config


@pytest.fixture(scope="module")
def srv(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    with ThreadServer(make_config(tiny_bundle, tmp_path_factory.mktemp("refl") / "s.db")) as server:
        yield server


def test_rank_with_json_through_reflection_only(srv: ThreadServer) -> None:
    channel = srv.channel()
    db = ProtoReflectionDescriptorDatabase(channel)
    assert "explorank.v1.Ranker" in db.get_services()
    pool = descriptor_pool.DescriptorPool(db)  # a pool of its own: nothing from the stubs
    service = pool.FindServiceByName("explorank.v1.Ranker")
    method = service.methods_by_name["Rank"]
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)

    body = json.dumps({"user_id": "u1", "context_text": "a quiet story about the sea", "top_k": 3})
    request = json_format.Parse(body, request_cls())
    call = channel.unary_unary(
        f"/{service.full_name}/{method.name}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_cls.FromString,
    )
    response = call(request, timeout=10)
    out = json_format.MessageToDict(response, preserving_proto_field_name=True)
    assert len(out["items"]) == 3
    assert all(0 < item["propensity"] <= 1 for item in out["items"])
    assert out["event_id"]

    # The same call with a bad field value is INVALID_ARGUMENT naming the field.
    bad = json_format.Parse(json.dumps({"top_k": 10**6}), request_cls())
    with pytest.raises(grpc.RpcError) as exc:
        call(bad, timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "top_k" in exc.value.details()  # type: ignore[attr-defined]
