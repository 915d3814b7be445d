"""A small typed Python client for production code.

    from explorank.engine.client import RankerClient

    with RankerClient("localhost:50051") as client:
        result = client.rank(user_id="u1", context_text="space opera", top_k=5)
        client.reward(result.event_id, result.items[0].item_id, 1.0)

gRPC errors come back as explorank's own exceptions (InvalidArgumentError,
NotFoundError, ResourceExhaustedError, ...), mapped from the status code;
UNAUTHENTICATED and PERMISSION_DENIED as UnauthenticatedError and PermissionDeniedError.

A server with TLS, mutual TLS and bearer tokens (docs/operations.md, "Security")::

    RankerClient(
        "ranker.internal:50051",
        tls_ca="ca.crt",                                  # verifies the server
        tls_cert="client.crt", tls_key="client.key",      # mutual TLS
        token=Path("/run/secrets/explorank-token").read_text().strip(),
    )
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import grpc

from explorank.engine.grpc_errors import exception_for
from explorank.engine.requests import RankedItemOutput, RankOutput, RewardOutput
from explorank.engine.security import channel_credentials, connection_hint, is_loopback
from explorank.errors import ConfigError, PermissionDeniedError, UnauthenticatedError
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


log = logging.getLogger("explorank.client")


def _host(address: str) -> str:
    """The host of a gRPC target: ``HOST:PORT``, ``[IPv6]:PORT``, ``dns:///HOST:PORT``,
    ``ipv4:ADDR:PORT``; ``localhost`` for a Unix socket (``unix:PATH``)."""
    if address.startswith(("unix:", "unix-abstract:")):
        return "localhost"
    target = address
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if target.startswith(scheme):
            target = target[len(scheme) :]
            break
    if target.startswith("["):
        return target[1:].split("]", 1)[0]
    return target.rsplit(":", 1)[0] if target.count(":") == 1 else target


class RankerClient:
    """Blocking client; one channel, reused. ``timeout`` is the per-call deadline (s).

    TLS is on when ``tls`` is true or any of ``tls_ca`` (PEM CA that verifies the server;
    default: the system's roots), ``tls_cert`` + ``tls_key`` (client certificate, for mutual
    TLS) is given; ``tls_server_name`` overrides the name the server's certificate is
    checked against. ``token`` is sent as ``authorization: Bearer <token>`` on every call.
    Bad files or a bad token are a :class:`ConfigError`.
    """

    def __init__(
        self,
        address: str = "localhost:50051",
        *,
        timeout: float = 10.0,
        channel: grpc.Channel | None = None,
        tls: bool = False,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        tls_server_name: str | None = None,
        token: str | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        use_tls = tls or any(v is not None for v in (tls_ca, tls_cert, tls_key, tls_server_name))
        self.tls = use_tls
        self._metadata: tuple[tuple[str, str], ...] = ()
        if token is not None:
            token = token.strip()
            if not token or not all("!" <= ch <= "~" for ch in token):
                raise ConfigError(
                    "the token (--token-file / $EXPLORANK_TOKEN) must be one line of visible "
                    "ASCII characters"
                )
            self._metadata = (("authorization", f"Bearer {token}"),)
            if not use_tls and channel is None and not is_loopback(_host(address)):
                log.warning("sending a bearer token to %s without TLS (use --tls-ca)", address)
        if channel is not None:
            if use_tls:
                raise ConfigError("give either a channel or TLS settings, not both")
            self._channel = channel
        elif use_tls:
            creds = channel_credentials(tls_ca, tls_cert, tls_key)
            options = (
                [("grpc.ssl_target_name_override", tls_server_name)] if tls_server_name else []
            )
            self._channel = grpc.secure_channel(address, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(address)
        self._stub = ranker_pb2_grpc.RankerStub(self._channel)
        self._admin = ranker_pb2_grpc.AdminStub(self._channel)

    def __enter__(self) -> RankerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _invoke(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
            details = err.details() if hasattr(err, "details") else str(err)
            if code == grpc.StatusCode.UNAUTHENTICATED:
                raise UnauthenticatedError(f"UNAUTHENTICATED: {details}") from err
            if code == grpc.StatusCode.PERMISSION_DENIED:
                raise PermissionDeniedError(f"PERMISSION_DENIED: {details}") from err
            if code == grpc.StatusCode.UNAVAILABLE:
                details = (details or "") + connection_hint(details or "", tls=self.tls)
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

    # ---------------------------------------------------------- admin (scope "admin")
    def reload(self, bundle: str | Path = "", *, timeout: float | None = 600.0) -> dict[str, Any]:
        """Hot-reload ``bundle`` (default: the server's configured bundle)."""
        req = ranker_pb2.ReloadRequest(bundle=str(bundle))
        resp = self._invoke(self._admin.Reload, req, timeout)
        return {
            "model_version": resp.model_version,
            "previous_version": resp.previous_version,
            "catalog_size": resp.catalog_size,
            "seconds": resp.seconds,
        }

    def add_items(
        self, items: Iterable[tuple[str, str]], *, timeout: float | None = 300.0
    ) -> dict[str, int]:
        """Add (id, text) items to the catalog; they are rankable when this returns."""
        req = ranker_pb2.AddItemsRequest(
            items=[ranker_pb2.CatalogItem(item_id=i, text=t) for i, t in items]
        )
        resp = self._invoke(self._admin.AddItems, req, timeout)
        return {"added": resp.added, "removed": resp.removed, "catalog_size": resp.catalog_size}

    def remove_items(
        self, item_ids: Iterable[str], *, timeout: float | None = 60.0
    ) -> dict[str, int]:
        """Retire catalog items: never returned again."""
        req = ranker_pb2.RemoveItemsRequest(item_ids=list(item_ids))
        resp = self._invoke(self._admin.RemoveItems, req, timeout)
        return {"added": resp.added, "removed": resp.removed, "catalog_size": resp.catalog_size}

    def info(self, *, timeout: float | None = None) -> dict[str, Any]:
        from google.protobuf.json_format import MessageToDict

        resp = self._invoke(self._stub.GetInfo, ranker_pb2.GetInfoRequest(), timeout)
        return MessageToDict(
            resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
