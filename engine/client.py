"""A small typed Python client for production code.

    from explorank.engine.client import RankerClient

    with RankerClient("localhost:50051") as client:
        result = client.rank(user_id="u1", context_text="space opera", top_k=5)
        client.reward(result.event_id, result.items[0].item_id, 1.0)

gRPC errors come back as explorank's own exceptions (InvalidArgumentError,
NotFoundError, ResourceExhaustedError, ...), mapped from the status code;
UNAUTHENTICATED and PERMISSION_DENIED as UnauthenticatedError and PermissionDeniedError.

Retries: only calls that are safe to repeat — ``reward`` and ``rank`` with an ``event_id``
(the server answers a repeated event id with the logged result) — and only on UNAVAILABLE
(server restarting, draining, Redis briefly down), ``retries`` times with a doubling
backoff, all within the call's ``timeout``. A ``rank`` without an event id is never
repeated: a second attempt would log a second decision.

:class:`AsyncRankerClient` is the same client for asyncio (``grpc.aio``)::

    async with AsyncRankerClient("localhost:50051") as client:
        result = await client.rank(user_id="u1", context_text="space opera", top_k=5)
        await client.reward(result.event_id, result.items[0].item_id, 1.0)

A server with TLS, mutual TLS and bearer tokens (docs/operations.md, "Security")::

    RankerClient(
        "ranker.internal:50051",
        tls_ca="ca.crt",                                  # verifies the server
        tls_cert="client.crt", tls_key="client.key",      # mutual TLS
        token=Path("/run/secrets/explorank-token").read_text().strip(),
    )
"""

from __future__ import annotations

import asyncio
import logging
import time
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


def _check_token(token: str | None) -> tuple[tuple[str, str], ...]:
    if token is None:
        return ()
    token = token.strip()
    if not token or not all("!" <= ch <= "~" for ch in token):
        raise ConfigError(
            "the token (--token-file / $EXPLORANK_TOKEN) must be one line of visible "
            "ASCII characters"
        )
    return (("authorization", f"Bearer {token}"),)


def _error(err: grpc.RpcError, tls: bool) -> Exception:
    """The explorank exception for a failed call."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return UnauthenticatedError(f"UNAUTHENTICATED: {details}")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDeniedError(f"PERMISSION_DENIED: {details}")
    if code == grpc.StatusCode.UNAVAILABLE:
        details = (details or "") + connection_hint(details or "", tls=tls)
    return exception_for(code, details or "")


def _unavailable(err: grpc.RpcError) -> bool:
    return hasattr(err, "code") and err.code() == grpc.StatusCode.UNAVAILABLE


def _rank_request(
    *,
    user_id: str,
    context_text: str,
    history_item_ids: Sequence[str],
    candidates: Iterable[CandidateLike],
    top_k: int,
    scorer: str,
    policy: str,
    event_id: str,
    include_text: bool,
) -> ranker_pb2.RankRequest:
    return ranker_pb2.RankRequest(
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


def _rank_result(resp: ranker_pb2.RankResponse) -> RankResult:
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


def _info(resp: ranker_pb2.GetInfoResponse) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(
        resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _change(resp: ranker_pb2.CatalogChangeResponse) -> dict[str, int]:
    return {"added": resp.added, "removed": resp.removed, "catalog_size": resp.catalog_size}


def _reload(resp: ranker_pb2.ReloadResponse) -> dict[str, Any]:
    return {
        "model_version": resp.model_version,
        "previous_version": resp.previous_version,
        "catalog_size": resp.catalog_size,
        "seconds": resp.seconds,
    }


class _Options:
    """What both clients share: address, deadline, TLS, token, retry policy."""

    def __init__(
        self,
        address: str,
        timeout: float,
        channel: Any,
        tls: bool,
        tls_ca: str | Path | None,
        tls_cert: str | Path | None,
        tls_key: str | Path | None,
        tls_server_name: str | None,
        token: str | None,
        retries: int,
        retry_backoff_s: float,
    ) -> None:
        if retries < 0 or not retry_backoff_s >= 0:
            raise ConfigError("retries must be >= 0 and retry_backoff_s >= 0")
        self.address = address
        self.timeout = timeout
        self.retries = int(retries)
        self.retry_backoff_s = float(retry_backoff_s)
        self.tls = tls or any(v is not None for v in (tls_ca, tls_cert, tls_key, tls_server_name))
        self.metadata = _check_token(token)
        if self.metadata and not self.tls and channel is None and not is_loopback(_host(address)):
            log.warning("sending a bearer token to %s without TLS (use --tls-ca)", address)
        if channel is not None and self.tls:
            raise ConfigError("give either a channel or TLS settings, not both")
        self.credentials = channel_credentials(tls_ca, tls_cert, tls_key) if self.tls else None
        self.options = (
            [("grpc.ssl_target_name_override", tls_server_name)] if tls_server_name else []
        )

    def attempts(self, idempotent: bool) -> int:
        return 1 + (self.retries if idempotent else 0)


class RankerClient:
    """Blocking client; one channel, reused. ``timeout`` is the per-call deadline (s).

    TLS is on when ``tls`` is true or any of ``tls_ca`` (PEM CA that verifies the server;
    default: the system's roots), ``tls_cert`` + ``tls_key`` (client certificate, for mutual
    TLS) is given; ``tls_server_name`` overrides the name the server's certificate is
    checked against. ``token`` is sent as ``authorization: Bearer <token>`` on every call.
    Bad files or a bad token are a :class:`ConfigError`. ``retries``: extra attempts of an
    idempotent call (Reward; Rank with an event id) that got UNAVAILABLE, the first after
    ``retry_backoff_s``, doubling, within the call's deadline.
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
        retries: int = 2,
        retry_backoff_s: float = 0.1,
    ) -> None:
        o = _Options(
            address,
            timeout,
            channel,
            tls,
            tls_ca,
            tls_cert,
            tls_key,
            tls_server_name,
            token,
            retries,
            retry_backoff_s,
        )
        self._o = o
        self.address, self.timeout, self.tls = address, timeout, o.tls
        self._metadata = o.metadata
        if channel is not None:
            self._channel = channel
        elif o.credentials is not None:
            self._channel = grpc.secure_channel(address, o.credentials, options=o.options)
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

    def _invoke(
        self, method: Any, request: Any, timeout: float | None, *, idempotent: bool = False
    ) -> Any:
        total = self.timeout if timeout is None else timeout
        end = time.monotonic() + total
        backoff = self._o.retry_backoff_s
        attempts = self._o.attempts(idempotent)
        for attempt in range(1, attempts + 1):
            try:
                return method(
                    request, timeout=max(end - time.monotonic(), 0.001), metadata=self._metadata
                )
            except grpc.RpcError as err:
                if attempt < attempts and _unavailable(err) and time.monotonic() + backoff < end:
                    log.info("%s: UNAVAILABLE, retrying in %.2f s", self.address, backoff)
                    time.sleep(backoff)
                    backoff *= 2
                    continue
                raise _error(err, self.tls) from err
        raise AssertionError("unreachable")  # pragma: no cover

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
        """Rank candidates (default: the catalog). With ``event_id`` the call is idempotent
        (and retried on UNAVAILABLE); without, the server makes one up."""
        req = _rank_request(
            user_id=user_id,
            context_text=context_text,
            history_item_ids=history_item_ids,
            candidates=candidates,
            top_k=top_k,
            scorer=scorer,
            policy=policy,
            event_id=event_id,
            include_text=include_text,
        )
        resp = self._invoke(self._stub.Rank, req, timeout, idempotent=bool(event_id))
        return _rank_result(resp)

    def reward(
        self, event_id: str, item_id: str, value: float, *, timeout: float | None = None
    ) -> RewardResult:
        req = ranker_pb2.RewardRequest(event_id=event_id, item_id=item_id, value=value)
        resp = self._invoke(self._stub.Reward, req, timeout, idempotent=True)
        return RewardResult(accepted=resp.accepted, duplicate=resp.duplicate)

    # ---------------------------------------------------------- admin (scope "admin")
    def reload(self, bundle: str | Path = "", *, timeout: float | None = 600.0) -> dict[str, Any]:
        """Hot-reload ``bundle`` (default: the server's configured bundle)."""
        req = ranker_pb2.ReloadRequest(bundle=str(bundle))
        return _reload(self._invoke(self._admin.Reload, req, timeout))

    def add_items(
        self, items: Iterable[tuple[str, str]], *, timeout: float | None = 300.0
    ) -> dict[str, int]:
        """Add (id, text) items to the catalog; they are rankable when this returns."""
        req = ranker_pb2.AddItemsRequest(
            items=[ranker_pb2.CatalogItem(item_id=i, text=t) for i, t in items]
        )
        return _change(self._invoke(self._admin.AddItems, req, timeout))

    def remove_items(
        self, item_ids: Iterable[str], *, timeout: float | None = 60.0
    ) -> dict[str, int]:
        """Retire catalog items: never returned again."""
        req = ranker_pb2.RemoveItemsRequest(item_ids=list(item_ids))
        return _change(self._invoke(self._admin.RemoveItems, req, timeout))

    def info(self, *, timeout: float | None = None) -> dict[str, Any]:
        return _info(self._invoke(self._stub.GetInfo, ranker_pb2.GetInfoRequest(), timeout))

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The grpc.health.v1 status: ``SERVING`` or ``NOT_SERVING`` (no token needed)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        req = health_pb2.HealthCheckRequest(service=service)
        resp = self._invoke(stub.Check, req, timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


class AsyncRankerClient:
    """:class:`RankerClient` for asyncio, on a ``grpc.aio`` channel: the same options, types,
    errors and retry policy; every call is a coroutine. Use ``async with`` or ``await
    client.close()``."""

    def __init__(
        self,
        address: str = "localhost:50051",
        *,
        timeout: float = 10.0,
        channel: grpc.aio.Channel | None = None,
        tls: bool = False,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        tls_server_name: str | None = None,
        token: str | None = None,
        retries: int = 2,
        retry_backoff_s: float = 0.1,
    ) -> None:
        o = _Options(
            address,
            timeout,
            channel,
            tls,
            tls_ca,
            tls_cert,
            tls_key,
            tls_server_name,
            token,
            retries,
            retry_backoff_s,
        )
        self._o = o
        self.address, self.timeout, self.tls = address, timeout, o.tls
        self._metadata = o.metadata
        if channel is not None:
            self._channel = channel
        elif o.credentials is not None:
            self._channel = grpc.aio.secure_channel(address, o.credentials, options=o.options)
        else:
            self._channel = grpc.aio.insecure_channel(address)
        self._stub = ranker_pb2_grpc.RankerStub(self._channel)
        self._admin = ranker_pb2_grpc.AdminStub(self._channel)

    async def __aenter__(self) -> AsyncRankerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _invoke(
        self, method: Any, request: Any, timeout: float | None, *, idempotent: bool = False
    ) -> Any:
        total = self.timeout if timeout is None else timeout
        end = time.monotonic() + total
        backoff = self._o.retry_backoff_s
        attempts = self._o.attempts(idempotent)
        for attempt in range(1, attempts + 1):
            try:
                return await method(
                    request, timeout=max(end - time.monotonic(), 0.001), metadata=self._metadata
                )
            except grpc.RpcError as err:
                if attempt < attempts and _unavailable(err) and time.monotonic() + backoff < end:
                    log.info("%s: UNAVAILABLE, retrying in %.2f s", self.address, backoff)
                    await asyncio.sleep(backoff)
                    backoff *= 2
                    continue
                raise _error(err, self.tls) from err
        raise AssertionError("unreachable")  # pragma: no cover

    async def rank(
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
        """As :meth:`RankerClient.rank`."""
        req = _rank_request(
            user_id=user_id,
            context_text=context_text,
            history_item_ids=history_item_ids,
            candidates=candidates,
            top_k=top_k,
            scorer=scorer,
            policy=policy,
            event_id=event_id,
            include_text=include_text,
        )
        resp = await self._invoke(self._stub.Rank, req, timeout, idempotent=bool(event_id))
        return _rank_result(resp)

    async def reward(
        self, event_id: str, item_id: str, value: float, *, timeout: float | None = None
    ) -> RewardResult:
        req = ranker_pb2.RewardRequest(event_id=event_id, item_id=item_id, value=value)
        resp = await self._invoke(self._stub.Reward, req, timeout, idempotent=True)
        return RewardResult(accepted=resp.accepted, duplicate=resp.duplicate)

    async def reload(
        self, bundle: str | Path = "", *, timeout: float | None = 600.0
    ) -> dict[str, Any]:
        req = ranker_pb2.ReloadRequest(bundle=str(bundle))
        return _reload(await self._invoke(self._admin.Reload, req, timeout))

    async def add_items(
        self, items: Iterable[tuple[str, str]], *, timeout: float | None = 300.0
    ) -> dict[str, int]:
        req = ranker_pb2.AddItemsRequest(
            items=[ranker_pb2.CatalogItem(item_id=i, text=t) for i, t in items]
        )
        return _change(await self._invoke(self._admin.AddItems, req, timeout))

    async def remove_items(
        self, item_ids: Iterable[str], *, timeout: float | None = 60.0
    ) -> dict[str, int]:
        req = ranker_pb2.RemoveItemsRequest(item_ids=list(item_ids))
        return _change(await self._invoke(self._admin.RemoveItems, req, timeout))

    async def info(self, *, timeout: float | None = None) -> dict[str, Any]:
        resp = await self._invoke(self._stub.GetInfo, ranker_pb2.GetInfoRequest(), timeout)
        return _info(resp)

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """As :meth:`RankerClient.health`."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        req = health_pb2.HealthCheckRequest(service=service)
        resp = await self._invoke(stub.Check, req, timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))
