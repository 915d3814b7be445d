"""A small typed Python client for production code.

    from explorank.engine.client import RankerClient

    with RankerClient("localhost:50051") as client:
        result = client.rank(user_id="u1", context_text="space opera", top_k=5)
        client.reward(result.event_id, result.items[0].item_id, 1.0)

gRPC errors come back as explorank's own exceptions (InvalidArgumentError,
NotFoundError, ResourceExhaustedError, ...), mapped from the status code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeAlias

import grpc

from explorank.engine.grpc_errors import exception_for
from explorank.engine.requests import RankedItemOutput, RankOutput, RewardOutput
from explorank.v1 import ranker_pb2, ranker_pb2_grpc

#: What Rank and Reward return: the engine's own transport-independent types.
RankResult: TypeAlias = RankOutput
RewardResult: TypeAlias = RewardOutput


CandidateLike: TypeAlias = "str | tuple[str, str] | ranker_pb2.Candidate"


def _candidate(c: CandidateLike) -> ranker_pb2.Candidate:
    if isinstance(c, ranker_pb2.Candidate):
        return c
    if isinstance(c, str):
        return ranker_pb2.Candidate(item_id=c)
    item_id, text = c
    return ranker_pb2.Candidate(item_id=item_id, text=text)


class RankerClient:
    """Blocking client; one channel, reused. ``timeout`` is the per-call deadline (s)."""

    def __init__(
        self,
        address: str = "localhost:50051",
        *,
        timeout: float = 10.0,
        channel: grpc.Channel | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = channel or grpc.insecure_channel(address)
        self._stub = ranker_pb2_grpc.RankerStub(self._channel)

    def __enter__(self) -> RankerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _invoke(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
            details = err.details() if hasattr(err, "details") else str(err)
            raise exception_for(code, details or "") from err

    def rank(
        self,
        *,
        user_id: str = "",
        context_text: str = "",
        history_item_ids: Sequence[str] = (),
        candidates: Iterable[CandidateLike] = (),
        top_k: int = 0,
        scorer: str = "",
        policy: str = "",
        event_id: str = "",
        include_text: bool = False,
        timeout: float | None = None,
    ) -> RankResult:
        req = ranker_pb2.RankRequest(
            event_id=event_id,
            user_id=user_id,
            context_text=context_text,
            history_item_ids=list(history_item_ids),
            candidates=[_candidate(c) for c in candidates],
            top_k=top_k,
            scorer=scorer,
            policy=policy,
            include_text=include_text,
        )
        resp = self._invoke(self._stub.Rank, req, timeout)
        return RankResult(
            event_id=resp.event_id,
            items=[
                RankedItemOutput(i.item_id, i.score, i.propensity, i.explored, i.text)
                for i in resp.items
            ],
            model_version=resp.model_version,
            scorer=resp.scorer,
            policy=resp.policy,
        )

    def reward(
        self, event_id: str, item_id: str, value: float, *, timeout: float | None = None
    ) -> RewardResult:
        req = ranker_pb2.RewardRequest(event_id=event_id, item_id=item_id, value=value)
        resp = self._invoke(self._stub.Reward, req, timeout)
        return RewardResult(accepted=resp.accepted, duplicate=resp.duplicate)

    def info(self, *, timeout: float | None = None) -> dict[str, Any]:
        from google.protobuf.json_format import MessageToDict

        resp = self._invoke(self._stub.GetInfo, ranker_pb2.GetInfoRequest(), timeout)
        return MessageToDict(
            resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
