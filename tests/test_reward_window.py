"""Delayed rewards: the reward window, and the optional default reward when it closes."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from explorank.engine.bundle import load_bundle
from explorank.engine.decision import ITEM_STATS
from explorank.v1 import ranker_pb2, ranker_pb2_grpc
from tests.server_harness import ThreadServer, make_config


def test_default_reward_applied_once_when_the_window_closes(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    config = make_config(
        tiny_bundle,
        tmp_path / "s.db",
        state={"reward_window_s": 1.0, "default_reward": -0.5, "window_check_interval_s": 3600},
    )
    cands = [ranker_pb2.Candidate(item_id=i.id) for i in load_bundle(tiny_bundle).items[:8]]
    with ThreadServer(config) as srv:
        stub = ranker_pb2_grpc.RankerStub(srv.channel())
        ev = stub.Rank(
            ranker_pb2.RankRequest(context_text="x", candidates=cands, top_k=3), timeout=10
        )
        shown = [i.item_id for i in ev.items]
        assert stub.Reward(
            ranker_pb2.RewardRequest(event_id=ev.event_id, item_id=shown[0], value=1.0), timeout=10
        ).accepted

        time.sleep(1.1)  # the window closes: a late reward is refused, not silently dropped
        with pytest.raises(grpc.RpcError) as exc:
            stub.Reward(
                ranker_pb2.RewardRequest(event_id=ev.event_id, item_id=shown[1], value=1.0),
                timeout=10,
            )
        assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
        assert "window" in exc.value.details()  # type: ignore[attr-defined]

        assert srv.run(srv.engine.feedback.close_windows()) == 2  # the two unrewarded items
        # closed events are not visited again
        assert srv.run(srv.engine.feedback.close_windows()) == 0
        # the policy-independent per-item statistics ([count, reward_sum]) learn every reward
        stats = srv.engine.decider.stats[ITEM_STATS]
        assert stats.items[shown[0]].tolist() == [1.0, 1.0]  # the client's reward, not the default
        assert stats.items[shown[1]].tolist() == [1.0, -0.5]
        assert stats.items[shown[2]].tolist() == [1.0, -0.5]
        # ucb1 did not rank this event (epsilon_greedy did): it learns only its own events
        assert srv.engine.decider.stats["ucb1"].items == {}
        durable = srv.run(srv.engine.store.load_stats(ITEM_STATS))
        assert {k: v.tolist() for k, v in durable.items.items()} == {
            k: v.tolist() for k, v in stats.items.items()
        }


def test_default_reward_needs_a_store_that_can_list_closed_windows(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    from explorank.errors import ConfigError
    from explorank.plugins.api import StateStore

    class NoWindows(StateStore):  # a store without window support
        name = "nowindows"

        async def log_event(self, event):  # type: ignore[no-untyped-def]
            pass

        async def get_event(self, event_id):  # type: ignore[no-untyped-def]
            return None

        async def record_reward(self, reward, deltas):  # type: ignore[no-untyped-def]
            return True

        async def load_stats(self, policy):  # type: ignore[no-untyped-def]
            from explorank.plugins.api import PolicyStats

            return PolicyStats()

        async def export_events(self, path, fmt="jsonl"):  # type: ignore[no-untyped-def]
            return 0

    from explorank.engine.pipeline import Engine

    config = make_config(tiny_bundle, tmp_path / "s.db", state={"default_reward": 0.0})
    engine = Engine.from_config(config, store=NoWindows())
    import asyncio

    with pytest.raises(ConfigError, match="default_reward"):
        asyncio.run(engine.start(warmup=False))
