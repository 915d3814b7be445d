"""AsyncRankerClient: the synchronous client's API for asyncio, against a real server (types,
errors, TLS and tokens), and its retry policy against a server that fails on purpose:
only idempotent calls (Reward; Rank with an event id), only on UNAVAILABLE."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from explorank.engine.client import AsyncRankerClient, RankerClient, RankResult, RewardResult
from explorank.errors import (
    InvalidArgumentError,
    NotFoundError,
    UnauthenticatedError,
    UnavailableError,
)
from explorank.v1 import ranker_pb2, ranker_pb2_grpc
from tests.server_harness import ThreadServer, make_config
from tests.tls_certs import Pki, make_pki

TOKEN = "async-client-0123456789abcdef01234567"
BATCHING = {"length_buckets": [64], "max_batch_size": 4}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def srv(
    tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory, pki: Pki
) -> Iterator[ThreadServer]:
    tmp = tmp_path_factory.mktemp("async")
    tokens = tmp / "tokens.toml"
    tokens.write_text(f'"{TOKEN}" = ["rank", "reward", "admin"]\n')
    tokens.chmod(0o600)
    server = {
        "tls": {"cert": str(pki.server.cert), "key": str(pki.server.key)},
        "auth": {"tokens_file": str(tokens)},
    }
    config = make_config(tiny_bundle, tmp / "state.db", server=server, batching=BATCHING)
    with ThreadServer(config) as s:
        yield s


def test_same_calls_and_types_as_the_sync_client(srv: ThreadServer, pki: Pki) -> None:
    async def run() -> tuple[Any, ...]:
        async with AsyncRankerClient(srv.address, tls_ca=pki.ca, token=TOKEN) as client:
            res = await client.rank(
                user_id="u1", context_text="a film about the sea", top_k=3, event_id="async-1"
            )
            again = await client.rank(
                user_id="u1", context_text="a film about the sea", top_k=3, event_id="async-1"
            )
            first = await client.reward(res.event_id, res.items[0].item_id, 1.0)
            dup = await client.reward(res.event_id, res.items[0].item_id, 1.0)
            info = await client.info()
            added = await client.add_items([("async-new", "a new item about gardens")])
            return res, again, first, dup, info, added

    res, again, first, dup, info, added = asyncio.run(run())
    assert isinstance(res, RankResult) and len(res.items) == 3 and res.event_id == "async-1"
    assert [i.item_id for i in again.items] == [i.item_id for i in res.items]  # logged answer
    assert isinstance(first, RewardResult) and first.accepted and not first.duplicate
    assert dup.duplicate
    assert info["catalog_size"] > 0 and info["model_version"] == res.model_version
    assert added["added"] == 1
    # the synchronous client sees the same event
    with RankerClient(srv.address, tls_ca=pki.ca, token=TOKEN) as sync:
        assert sync.reward(res.event_id, res.items[0].item_id, 1.0).duplicate


def test_errors_are_explorank_exceptions(srv: ThreadServer, pki: Pki) -> None:
    async def expect(exc_type: type[Exception], **client_kw: Any) -> Exception:
        async with AsyncRankerClient(srv.address, tls_ca=pki.ca, **client_kw) as client:
            with pytest.raises(exc_type) as info:
                if exc_type is NotFoundError:
                    await client.reward("no-such-event", "x", 1.0)
                else:
                    await client.rank(top_k=10**6)
            return info.value

    bad = asyncio.run(expect(InvalidArgumentError, token=TOKEN))
    assert isinstance(bad, InvalidArgumentError) and bad.field == "top_k"
    asyncio.run(expect(NotFoundError, token=TOKEN))
    asyncio.run(expect(UnauthenticatedError))  # no token


class _Flaky(ranker_pb2_grpc.RankerServicer):
    """Answers UNAVAILABLE the first ``fail`` times per (method, key), then succeeds."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.calls: Counter[str] = Counter()

    async def Rank(self, request: Any, context: Any) -> Any:
        key = f"Rank:{request.event_id}"
        self.calls[key] += 1
        if request.top_k == 99:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "top_k: nope")
        if self.calls[key] <= self.fail:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "draining")
        return ranker_pb2.RankResponse(event_id=request.event_id or "generated")

    async def Reward(self, request: Any, context: Any) -> Any:
        key = f"Reward:{request.event_id}"
        self.calls[key] += 1
        if self.calls[key] <= self.fail:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "redis down")
        return ranker_pb2.RewardResponse(accepted=True)


def _with_flaky(fail: int, body: Any) -> Counter[str]:
    servicer = _Flaky(fail)

    async def run() -> None:
        server = grpc.aio.server()
        ranker_pb2_grpc.add_RankerServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with AsyncRankerClient(
                f"127.0.0.1:{port}", retries=2, retry_backoff_s=0.01, timeout=5
            ) as client:
                await body(client)
        finally:
            await server.stop(0)

    asyncio.run(run())
    return servicer.calls


def test_idempotent_calls_are_retried_on_unavailable() -> None:
    async def body(client: AsyncRankerClient) -> None:
        assert (await client.rank(event_id="e1")).event_id == "e1"
        assert (await client.reward("e1", "i", 1.0)).accepted

    calls = _with_flaky(2, body)
    assert calls == Counter({"Rank:e1": 3, "Reward:e1": 3})  # two failures, then success


def test_rank_without_an_event_id_is_never_repeated() -> None:
    async def body(client: AsyncRankerClient) -> None:
        with pytest.raises(UnavailableError, match="draining"):
            await client.rank(context_text="x")

    assert _with_flaky(1, body) == Counter({"Rank:": 1})


def test_retries_stop_after_the_budget_and_never_on_other_codes() -> None:
    async def body(client: AsyncRankerClient) -> None:
        with pytest.raises(UnavailableError):
            await client.reward("e2", "i", 1.0)
        with pytest.raises(InvalidArgumentError):
            await client.rank(event_id="e3", top_k=99)

    calls = _with_flaky(5, body)
    assert calls["Reward:e2"] == 3  # 1 + retries
    assert calls["Rank:e3"] == 1


def test_the_sync_client_follows_the_same_policy() -> None:
    servicer = _Flaky(1)

    ready = threading.Event()
    port: list[int] = []

    async def serve(stop: asyncio.Event) -> None:
        server = grpc.aio.server()
        ranker_pb2_grpc.add_RankerServicer_to_server(servicer, server)
        port.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        ready.set()
        await stop.wait()
        await server.stop(0)

    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(stop),))
    thread.start()
    try:
        assert ready.wait(10)
        with RankerClient(f"127.0.0.1:{port[0]}", retry_backoff_s=0.01, timeout=5) as client:
            assert client.rank(event_id="s1").event_id == "s1"
            with pytest.raises(UnavailableError):
                client.rank()
            assert client.reward("s1", "i", 1.0).accepted
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
    assert servicer.calls == Counter({"Rank:s1": 2, "Rank:": 1, "Reward:s1": 2})
