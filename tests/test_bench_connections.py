"""The load generator's connections: the same number on every `serve --workers` process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import explorank.benchmarks.latency.connections as connections


class _FakeChannel:
    def __init__(self, worker: tuple[int, int]) -> None:
        self.worker = worker
        self.closed = False

    async def close(self) -> None:
        self.closed = True


def _install(monkeypatch: pytest.MonkeyPatch, answers: Iterator[tuple[int, int]]) -> list[Any]:
    """Each new channel reaches the next worker of ``answers``; returns every channel made."""
    made: list[_FakeChannel] = []

    def channel(address: str, options: Any = None) -> _FakeChannel:
        assert options == [connections.LOCAL_POOL]  # one TCP connection per channel
        made.append(_FakeChannel(next(answers)))
        return made[-1]

    async def worker_of(ch: _FakeChannel, timeout_s: float) -> tuple[int, int]:
        return ch.worker

    import grpc

    monkeypatch.setattr(grpc.aio, "insecure_channel", channel)
    monkeypatch.setattr(connections, "_worker_of", worker_of)
    return made


def test_extra_connections_to_a_full_worker_are_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    # the kernel's hash sends the first four connections to worker 1
    made = _install(monkeypatch, iter([(1, 2)] * 4 + [(0, 2)] * 4))
    conns = asyncio.run(connections.open_connections("x:1", 4))
    assert conns.per_worker == {0: 2, 1: 2} and conns.workers == 2
    assert [c.worker[0] for c in conns.channels] == [0, 1, 0, 1]  # interleaved
    assert conns.opened == 6  # stopped as soon as both workers had two
    assert sum(c.closed for c in made) == 2
    assert not any(c.closed for c in conns.channels)


def test_an_unreachable_worker_is_reported_not_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _install(monkeypatch, iter([(0, 2)] * 100))
    said: list[str] = []
    conns = asyncio.run(connections.open_connections("x:1", 4, max_tries=10, progress=said.append))
    assert conns.opened == 10 and conns.per_worker == {0: 2}
    assert len(said) == 1 and "uneven" in said[0] and "{0: 2}" in said[0]


@settings(max_examples=50, deadline=None)
@given(
    workers=st.integers(1, 4),
    count=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_every_worker_gets_its_share(workers: int, count: int, seed: int) -> None:
    import random

    rng = random.Random(seed)
    with pytest.MonkeyPatch.context() as mp:
        _install(mp, iter(lambda: (rng.randrange(workers), workers), None))
        conns = asyncio.run(connections.open_connections("x:1", count, max_tries=10_000))
    want = -(-count // workers)
    assert conns.per_worker == dict.fromkeys(range(workers), want)
    order = [c.worker[0] for c in conns.channels]
    assert order == [i % workers for i in range(want * workers)]


def test_a_server_without_workers_counts_as_one(monkeypatch: pytest.MonkeyPatch) -> None:
    _install(monkeypatch, iter([(0, 1)] * 10))
    conns = asyncio.run(connections.open_connections("x:1", 3))
    assert conns.workers == 1 and len(conns.channels) == 3 and conns.opened == 3
    with pytest.raises(ValueError, match="count"):
        asyncio.run(connections.open_connections("x:1", 0))
