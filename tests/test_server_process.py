"""The server as users run it: ``explorank serve`` in a subprocess (signals, crash recovery)."""

from __future__ import annotations

import concurrent.futures
import re
import signal
import sqlite3
import threading
from pathlib import Path

import grpc
import pytest

from explorank.engine.bundle import load_bundle
from explorank.engine.client import RankerClient
from explorank.errors import UnavailableError
from tests.server_harness import ProcessServer

pytestmark = pytest.mark.slow


def test_sigterm_graceful_shutdown(tiny_bundle: Path, tmp_path: Path) -> None:
    server = ProcessServer(
        ["--bundle", str(tiny_bundle), "--state-db", str(tmp_path / "s.db"), "--grace", "5"],
        tmp_path,
    )
    try:
        server.wait_ready()
        with RankerClient(server.address) as client:
            res = client.rank(context_text="before shutdown", top_k=3)
            assert len(res.items) == 3
        server.signal(signal.SIGTERM)
        server.proc.wait(30)
        assert server.proc.returncode == 0, server.output()
        assert "stopped" in server.output()
        # `serve` froze its start-up heap once it served (server.gc_freeze, on by default)
        assert re.search(r"gc: [1-9]\d* start-up objects frozen", server.output())
    finally:
        server.kill()


def test_rewards_survive_sigkill_exactly_once(tiny_bundle: Path, tmp_path: Path) -> None:
    """N rewards sent concurrently, SIGKILL mid-stream, restart: every acknowledged reward is
    applied exactly once (none lost, none doubled) and the policy state equals a replay."""
    db = tmp_path / "state.db"
    args = ["--bundle", str(tiny_bundle), "--state-db", str(db), "--policy", "ucb1"]
    ids = [it.id for it in load_bundle(tiny_bundle).items][:40]
    server = ProcessServer(args, tmp_path)
    acked: set[tuple[str, str]] = set()
    attempted: set[tuple[str, str]] = set()
    lock = threading.Lock()
    try:
        server.wait_ready()
        with RankerClient(server.address, timeout=10) as client:
            events = [
                client.rank(user_id=f"u{i}", context_text=f"ctx {i}", candidates=ids, top_k=5)
                for i in range(60)
            ]
        jobs = [
            (e.event_id, it.item_id, 1.0 if (n + k) % 3 else -0.5)
            for n, e in enumerate(events)
            for k, it in enumerate(e.items)
        ]

        def send(job: tuple[str, str, float]) -> None:
            with lock:
                attempted.add((job[0], job[1]))
            try:
                with RankerClient(server.address, timeout=10) as c:
                    res = c.reward(*job)
            except (UnavailableError, grpc.RpcError, Exception):
                return
            if res.accepted:
                with lock:
                    acked.add((job[0], job[1]))

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(send, j) for j in jobs]
            while True:
                with lock:
                    if len(acked) >= len(jobs) // 3:
                        break
                threading.Event().wait(0.01)
            server.proc.kill()  # SIGKILL mid-stream
            for f in futures:
                f.result()
        server.proc.wait(10)
    finally:
        server.kill()
    assert 0 < len(acked) < len(jobs), "the kill must land mid-stream"

    # Restart on the same database.
    server2 = ProcessServer(args, tmp_path)
    try:
        server2.wait_ready()
        with sqlite3.connect(db) as conn:
            stored = set(conn.execute("SELECT event_id, item_id FROM rewards").fetchall())
        assert acked <= stored, f"lost {len(acked - stored)} acknowledged rewards"
        assert stored <= attempted
        with RankerClient(server2.address, timeout=10) as client:
            values = {(e, i): v for e, i, v in jobs}
            for event_id, item_id in sorted(stored):
                again = client.reward(event_id, item_id, values[(event_id, item_id)])
                assert again.duplicate, "a stored reward must not be applied twice"
    finally:
        assert server2.stop() == 0, server2.output()

    # Policy state == replay of every stored reward (ucb1 keeps [count, reward_sum] per item).
    import asyncio

    from explorank.plugins.builtin.sqlite_store import SqliteStore

    async def load() -> dict[str, list[float]]:
        store = SqliteStore(path=str(db))
        await store.open()
        try:
            stats = await store.load_stats("ucb1")
        finally:
            await store.close()
        return {k: v.tolist() for k, v in stats.items.items()}

    items = asyncio.run(load())
    expected: dict[str, list[float]] = {}
    for event_id, item_id in stored:
        v = values[(event_id, item_id)]
        cur = expected.setdefault(item_id, [0.0, 0.0])
        cur[0] += 1
        cur[1] += v
    assert set(items) == set(expected)
    for item_id, (count, total) in expected.items():
        assert items[item_id][0] == pytest.approx(count)
        assert items[item_id][1] == pytest.approx(total)
