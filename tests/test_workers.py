"""``explorank serve --workers N``: CPU shares, merged metrics, and N real worker processes on
one port sharing one sqlite store — a Reward reaches any worker, a catalog change reaches
all of them, a killed worker is restarted, SIGTERM stops the group."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from explorank.benchmarks.latency.connections import Connections, open_connections
from explorank.engine.workers import (
    WORKER_ACTIVITY_ENV,
    WORKER_ENV,
    PeerActivity,
    cpu_shares,
    merge_metrics,
    peer_activity,
    worker_identity,
)
from explorank.errors import ConfigError
from explorank.v1 import ranker_pb2, ranker_pb2_grpc
from tests.server_harness import ProcessServer, free_port


@given(
    cpus=st.sets(st.integers(0, 63), min_size=1, max_size=16),
    workers=st.integers(1, 24),
)
def test_cpu_shares_partition_the_cpus(cpus: set[int], workers: int) -> None:
    shares = cpu_shares(sorted(cpus), workers)
    assert len(shares) == workers and all(shares)
    if workers <= len(cpus):
        flat = [c for share in shares for c in share]
        assert sorted(flat) == sorted(cpus)  # every CPU once
        sizes = [len(s) for s in shares]
        assert max(sizes) - min(sizes) <= 1
    else:
        assert all(len(s) == 1 for s in shares)
        assert {s[0] for s in shares} == cpus  # round robin: every CPU is used


def test_worker_identity_and_bad_counts() -> None:
    assert worker_identity({}) is None
    assert worker_identity({"EXPLORANK_WORKER": "1/3"}) == (1, 3)
    for bad in ("3/3", "x", "1/2/3", "-1/2"):
        with pytest.raises(ConfigError, match="EXPLORANK_WORKER"):
            worker_identity({"EXPLORANK_WORKER": bad})
    with pytest.raises(ConfigError, match="workers"):
        cpu_shares([0, 1], 0)


def test_peer_activity_tells_a_worker_when_the_others_are_idle(tmp_path: Path) -> None:
    """Three workers mapping one file: a worker is idle to the others when it computes no
    batch and either ended its last one over ``quiet_s`` ago or no two workers' batches have
    overlapped within ``quiet_s`` (serial work: one client alternating between workers); a
    batch "computing" for longer than ``stale_s`` is a worker that died in it."""
    path = tmp_path / "activity"
    PeerActivity.create(path, 3)
    w = [PeerActivity(path, i, 3, quiet_s=0.05) for i in range(3)]
    t = 1000.0
    assert all(p.others_idle(t) for p in w)  # nobody has run anything
    w[1].started(t)
    assert not w[0].others_idle(t + 0.01) and not w[2].others_idle(t + 0.01)
    assert w[1].others_idle(t + 0.01)  # its own batch does not count
    w[1].ended(t + 0.02)
    assert w[0].others_idle(t + 0.025)  # ended 5 ms ago, but nothing overlapped: serial
    # w[0] bursts; w[2] starts a batch while it computes: an overlap, seen by all three
    w[0].started(t + 0.03)
    w[2].started(t + 0.035)
    assert not w[1].others_idle(t + 0.036)
    w[0].ended(t + 0.04)
    w[2].ended(t + 0.045)
    for p in w:  # within quiet_s of the overlap and of the others' last batches
        assert not p.others_idle(t + 0.05)
    # quiet_s after the overlap but not after the last batch ended: serial again
    assert w[1].others_idle(t + 0.0851)
    assert all(p.others_idle(t + 0.0951) for p in w)  # quiet_s after every batch
    w[2].started(t + 0.1)  # and never ends: the worker died in the batch
    assert not w[0].others_idle(t + 1.0)
    assert w[0].others_idle(t + 0.1 + 61.0)
    # the file is shared: a fresh mapping sees what the others wrote
    again = PeerActivity(path, 0, 3)
    assert not again.others_idle(t + 0.11)
    for p in (*w, again):
        p.close()
    with pytest.raises(ConfigError, match="too small"):
        PeerActivity(path, 0, 4)
    with pytest.raises(ConfigError, match="not in"):
        PeerActivity(path, 3, 3)
    # the same rule among threads of one process (encoder lanes): views of one buffer
    a, b = PeerActivity.in_process(2, quiet_s=0.05)
    assert a.others_idle(t) and b.others_idle(t)
    b.started(t)
    assert not a.others_idle(t + 0.01) and b.others_idle(t + 0.01)
    a.started(t + 0.02)  # an overlap
    a.ended(t + 0.03)
    b.ended(t + 0.03)
    assert not b.others_idle(t + 0.04) and not a.others_idle(t + 0.04)
    assert a.others_idle(t + 0.0801)  # quiet_s after every batch
    a.close()
    b.close()
    with pytest.raises(ConfigError, match="too small"):
        PeerActivity(None, 0, 2, shared=bytearray(PeerActivity.SLOT))
    with pytest.raises(ConfigError, match="path or a shared buffer"):
        PeerActivity(None, 0, 2)
    # a worker finds it through its environment; anything else has none
    env = {WORKER_ENV: "1/3", WORKER_ACTIVITY_ENV: str(path)}
    found = peer_activity(env)
    assert found is not None and (found.index, found.count) == (1, 3)
    found.close()
    assert peer_activity({WORKER_ACTIVITY_ENV: str(path)}) is None
    assert peer_activity({WORKER_ENV: "1/3"}) is None


def test_merged_metrics_label_every_sample_once_per_family() -> None:
    a = (
        "# HELP explorank_requests_total RPCs\n# TYPE explorank_requests_total counter\n"
        'explorank_requests_total{rpc="Rank",code="OK"} 3.0\n'
        "# HELP explorank_ready 1 when serving\n# TYPE explorank_ready gauge\n"
        "explorank_ready 1.0\n"
    )
    b = a.replace("3.0", "5.0").replace("ready 1.0", "ready 0.0")
    text = merge_metrics([(0, a), (1, b)])
    lines = text.splitlines()
    assert lines.count("# TYPE explorank_requests_total counter") == 1
    assert 'explorank_requests_total{worker="0",rpc="Rank",code="OK"} 3.0' in lines
    assert 'explorank_requests_total{worker="1",rpc="Rank",code="OK"} 5.0' in lines
    assert 'explorank_ready{worker="0"} 1.0' in lines
    assert 'explorank_ready{worker="1"} 0.0' in lines
    # each family's samples follow its own header
    assert lines.index("# TYPE explorank_ready gauge") < lines.index(
        'explorank_ready{worker="1"} 0.0'
    )
    assert lines.index('explorank_requests_total{worker="1",rpc="Rank",code="OK"} 5.0') < (
        lines.index("# TYPE explorank_ready gauge")
    )


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def _counts_by_worker(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in re.finditer(r'^explorank_requests_total\{worker="(\d+)",([^}]*)\} (\S+)$', text, re.M):
        labels = set(m.group(2).split(","))
        if {'rpc="Rank"', 'code="OK"'} <= labels:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def _fresh_stub(address: str) -> tuple[grpc.Channel, ranker_pb2_grpc.RankerStub]:
    # a new connection each time: SO_REUSEPORT spreads connections, not calls
    channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    return channel, ranker_pb2_grpc.RankerStub(channel)


async def _balanced(address: str, count: int) -> tuple[Connections, list[int]]:
    """open_connections, plus which worker answers a GetInfo on each channel in order."""
    conns = await open_connections(address, count, timeout_s=30)
    try:
        answered = []
        for channel in conns.channels:
            info = await ranker_pb2_grpc.RankerStub(channel).GetInfo(
                ranker_pb2.GetInfoRequest(), timeout=30
            )
            assert info.worker_count == 2
            answered.append(info.worker_index)
        return conns, answered
    finally:
        await conns.close()


def _worker_pids(output: str) -> dict[int, int]:
    pids: dict[int, int] = {}
    for m in re.finditer(r"worker (\d+): pid (\d+)", output):
        pids[int(m.group(1))] = int(m.group(2))
    return pids


@pytest.mark.timeout(300)
def test_two_workers_share_the_port_and_the_store(tiny_bundle: Path, tmp_path: Path) -> None:
    metrics_port = free_port()
    env = {"EXPLORANK__SERVER__DRAIN_S": "0.3", "EXPLORANK__STATE__SYNC_INTERVAL_MS": "200"}
    srv = ProcessServer(
        [
            "--bundle",
            str(tiny_bundle),
            "--state-db",
            str(tmp_path / "s.db"),
            "--workers",
            "2",
            "--metrics-port",
            str(metrics_port),
        ],
        tmp_path,
        env=env,
    )
    try:
        srv.wait_ready(240)
        pids = _worker_pids(srv.output())
        assert set(pids) == {0, 1} and os.getpid() not in pids.values()
        if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) >= 2:
            # one CPU each, and a session on both for when the other is idle
            assert srv.output().count("burst session with") == 2, srv.output()
            assert srv.output().count("warming up the burst session") == 2, srv.output()
        events = []
        for i in range(24):
            channel, stub = _fresh_stub(srv.address)
            with channel:
                res = stub.Rank(ranker_pb2.RankRequest(context_text=f"q {i}", top_k=2), timeout=30)
                events.append((res.event_id, res.items[0].item_id))
        # every Rank's Reward on another connection — whichever worker takes it knows the event
        for event_id, item_id in events:
            channel, stub = _fresh_stub(srv.address)
            with channel:
                out = stub.Reward(
                    ranker_pb2.RewardRequest(event_id=event_id, item_id=item_id, value=1.0),
                    timeout=30,
                )
                assert out.accepted
        text = _scrape(metrics_port)
        counts = _counts_by_worker(text)
        assert set(counts) == {"0", "1"} and sum(counts.values()) == 24, counts
        assert 'explorank_worker_up{worker="0"} 1' in text
        assert 'explorank_encoder_burst_batches{worker="1"}' in text
        # GetInfo says which worker a connection reached; the benchmark's connections use it
        # to load both workers equally (calls alternate workers round-robin over the list)
        conns, answered = asyncio.run(_balanced(srv.address, 4))
        assert conns.workers == 2 and conns.per_worker == {0: 2, 1: 2}, conns.describe()
        assert answered == [0, 1, 0, 1]
        # a catalog change made on one worker reaches the other
        channel = grpc.insecure_channel(srv.address)
        with channel:
            admin = ranker_pb2_grpc.AdminStub(channel)
            admin.AddItems(
                ranker_pb2.AddItemsRequest(
                    items=[ranker_pb2.CatalogItem(item_id="w-new", text="fresh arrival")]
                ),
                timeout=60,
            )
        end = time.monotonic() + 30
        known = 0
        while known < 12 and time.monotonic() < end:
            channel, stub = _fresh_stub(srv.address)
            with channel:
                try:
                    stub.Rank(
                        ranker_pb2.RankRequest(
                            context_text="x", candidates=[ranker_pb2.Candidate(item_id="w-new")]
                        ),
                        timeout=30,
                    )
                    known += 1
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
                    known = 0
                    time.sleep(0.1)
        assert known >= 12
        # a worker that dies is restarted
        os.kill(pids[1], signal.SIGKILL)
        end = time.monotonic() + 60
        while time.monotonic() < end and _worker_pids(srv.output()).get(1) == pids[1]:
            time.sleep(0.2)
        assert _worker_pids(srv.output())[1] != pids[1], srv.output()
        assert "worker 1 (pid" in srv.output() and "restarting" in srv.output()
    finally:
        code = srv.stop(timeout=60)
    output = srv.log_path.read_text()
    assert code == 0, output
    for pid in _worker_pids(output).values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.timeout(120)
def test_a_worker_that_cannot_start_stops_the_group_with_its_status(tmp_path: Path) -> None:
    srv = ProcessServer(["--bundle", str(tmp_path / "missing"), "--workers", "2"], tmp_path, env={})
    code = srv.proc.wait(90)
    output = srv.log_path.read_text()
    assert code == 2, output
    assert "could not start" in output and "missing" in output
