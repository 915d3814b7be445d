"""A model and a catalog that change while the server runs: hot reload under load (no failed
request, each client switches version once), refused bundles, ``--watch``, and catalog items
added and retired at run time — across a restart and across two replicas."""

from __future__ import annotations

import concurrent.futures
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from explorank.cli import main as cli_main
from explorank.engine.bundle import load_bundle
from explorank.v1 import ranker_pb2, ranker_pb2_grpc
from tests.bundle_edit import copy_bundle, edit_manifest, flip_byte
from tests.server_harness import ThreadServer, make_config


def _version(bundle: Path, version: str) -> Path:
    edit_manifest(bundle, lambda m: m.update(model_version=version))
    return bundle


def _wait_for(pred: Any, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


# --------------------------------------------------------------------- reload
@pytest.mark.timeout(300)
def test_reload_under_load_fails_nothing_and_switches_once(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    a = _version(copy_bundle(tiny_bundle, tmp_path / "a"), "tiny-a")
    b = _version(copy_bundle(tiny_bundle, tmp_path / "b"), "tiny-b")
    with ThreadServer(make_config(a, tmp_path / "s.db")) as srv:
        channel = srv.channel()
        stub = ranker_pb2_grpc.RankerStub(channel)
        admin = ranker_pb2_grpc.AdminStub(channel)
        stop = threading.Event()
        versions: dict[int, list[str]] = {k: [] for k in range(4)}
        failures: list[str] = []

        def client(k: int) -> None:
            i = 0
            while not stop.is_set():
                try:
                    resp = stub.Rank(
                        ranker_pb2.RankRequest(context_text=f"client {k} request {i}", top_k=3),
                        timeout=30,
                    )
                    versions[k].append(resp.model_version)
                except grpc.RpcError as err:
                    failures.append(f"{err.code().name}: {err.details()}")  # type: ignore[attr-defined]
                i += 1

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            workers = [pool.submit(client, k) for k in range(4)]
            _wait_for(lambda: all(len(v) >= 5 for v in versions.values()))
            out = admin.Reload(ranker_pb2.ReloadRequest(bundle=str(b)), timeout=120)
            marks = {k: len(v) for k, v in versions.items()}
            _wait_for(lambda: all(len(versions[k]) >= marks[k] + 5 for k in versions))
            stop.set()
            for w in workers:
                w.result()
        info = stub.GetInfo(ranker_pb2.GetInfoRequest(), timeout=10)
    assert failures == []
    assert out.model_version == "tiny-b" and out.previous_version == "tiny-a"
    assert info.model_version == "tiny-b"
    for seq in versions.values():
        switches = sum(1 for x, y in zip(seq, seq[1:], strict=False) if x != y)
        assert switches == 1 and seq[0] == "tiny-a" and seq[-1] == "tiny-b", seq


def test_events_keep_bundle_embeddings_by_reference_across_one_reload(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """An event of bundle items is stored without copies of their embeddings; after a reload
    its rewards still learn from the bundle that ranked it (kept for one reload), while an
    event of items added at run time carries its own copy and learns after any reload."""
    a = _version(copy_bundle(tiny_bundle, tmp_path / "a"), "tiny-a")
    b = _version(copy_bundle(tiny_bundle, tmp_path / "b"), "tiny-b")
    c = _version(copy_bundle(tiny_bundle, tmp_path / "c"), "tiny-c")
    with ThreadServer(make_config(a, tmp_path / "s.db")) as srv:
        stub = ranker_pb2_grpc.RankerStub(srv.channel())
        admin = ranker_pb2_grpc.AdminStub(srv.channel())
        admin.AddItems(
            ranker_pb2.AddItemsRequest(items=[ranker_pb2.CatalogItem(item_id="fresh", text="x")]),
            timeout=30,
        )
        bundled = stub.Rank(ranker_pb2.RankRequest(context_text="q", top_k=3), timeout=10)
        fresh = stub.Rank(
            ranker_pb2.RankRequest(
                context_text="q", candidates=[ranker_pb2.Candidate(item_id="fresh")], top_k=1
            ),
            timeout=10,
        )
        stored = srv.run(srv.engine.store.get_event(bundled.event_id))
        assert stored.ranked_embeddings.shape == (0, srv.engine.gen.catalog.dim)
        assert srv.run(srv.engine.store.get_event(fresh.event_id)).ranked_embeddings.shape[0] == 1
        srv.engine.events.cache.clear()  # rewards below read the events back from the store

        def reward(event: Any, pos: int = 0) -> ranker_pb2.RewardResponse:
            item = event.items[pos].item_id
            req = ranker_pb2.RewardRequest(event_id=event.event_id, item_id=item, value=1.0)
            return stub.Reward(req, timeout=10)

        admin.Reload(ranker_pb2.ReloadRequest(bundle=str(b)), timeout=120)
        assert reward(bundled).accepted  # ranked by tiny-a, served just before tiny-b
        second = stub.Rank(ranker_pb2.RankRequest(context_text="q2", top_k=3), timeout=10)
        assert second.model_version == "tiny-b"
        admin.Reload(ranker_pb2.ReloadRequest(bundle=str(c)), timeout=120)
        srv.engine.events.cache.clear()
        with pytest.raises(grpc.RpcError) as info:
            reward(bundled, 1)  # tiny-a: two reloads ago, no longer loaded
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
        assert "tiny-a" in info.value.details()  # type: ignore[attr-defined]
        assert reward(second).accepted  # tiny-b, the previous bundle
        assert reward(fresh).accepted  # carries its own embedding


def test_a_bad_bundle_is_refused_and_the_old_one_keeps_serving(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    bad = copy_bundle(tiny_bundle, tmp_path / "bad")
    flip_byte(bad / "item_embeddings.npy")
    with ThreadServer(make_config(tiny_bundle, tmp_path / "s.db")) as srv:
        stub = ranker_pb2_grpc.RankerStub(srv.channel())
        admin = ranker_pb2_grpc.AdminStub(srv.channel())
        before = stub.GetInfo(ranker_pb2.GetInfoRequest(), timeout=10).model_version
        with pytest.raises(grpc.RpcError) as info:
            admin.Reload(ranker_pb2.ReloadRequest(bundle=str(bad)), timeout=60)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
        assert "item_embeddings.npy" in info.value.details()  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as missing:
            admin.Reload(ranker_pb2.ReloadRequest(bundle=str(tmp_path / "nope")), timeout=60)
        assert missing.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
        assert stub.GetInfo(ranker_pb2.GetInfoRequest(), timeout=10).model_version == before
        assert len(stub.Rank(ranker_pb2.RankRequest(context_text="x", top_k=2)).items) == 2


@pytest.mark.timeout(120)
def test_watch_reloads_when_the_bundle_symlink_moves(tiny_bundle: Path, tmp_path: Path) -> None:
    a = _version(copy_bundle(tiny_bundle, tmp_path / "a"), "tiny-a")
    b = _version(copy_bundle(tiny_bundle, tmp_path / "b"), "tiny-b")
    link = tmp_path / "current"
    link.symlink_to(a, target_is_directory=True)
    config = make_config(link, tmp_path / "s.db", model={"watch": True, "watch_interval_s": 0.1})
    with ThreadServer(config) as srv:
        stub = ranker_pb2_grpc.RankerStub(srv.channel())

        def version() -> str:
            return stub.GetInfo(ranker_pb2.GetInfoRequest(), timeout=10).model_version

        assert version() == "tiny-a"
        tmp = tmp_path / "next"
        tmp.symlink_to(b, target_is_directory=True)
        tmp.replace(link)  # an atomic switch, as a deployment would do it
        _wait_for(lambda: version() == "tiny-b")


# -------------------------------------------------------------------- catalog
def _ranked_ids(stub: Any, **kw: Any) -> list[str]:
    resp = stub.Rank(ranker_pb2.RankRequest(top_k=1000, policy="greedy", **kw), timeout=20)
    return [i.item_id for i in resp.items]


def test_catalog_add_and_remove_survive_a_restart(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    retired = bundle.items[3].id
    config = make_config(tiny_bundle, tmp_path / "s.db")
    with ThreadServer(config) as srv:
        stub = ranker_pb2_grpc.RankerStub(srv.channel())
        admin = ranker_pb2_grpc.AdminStub(srv.channel())
        shown = stub.Rank(
            ranker_pb2.RankRequest(
                context_text="q", candidates=[ranker_pb2.Candidate(item_id=retired)], top_k=1
            ),
            timeout=10,
        )
        out = admin.AddItems(
            ranker_pb2.AddItemsRequest(
                items=[
                    ranker_pb2.CatalogItem(item_id="new-1", text="a brand new space opera"),
                    ranker_pb2.CatalogItem(item_id="new-2", text="cozy winter recipes"),
                ]
            ),
            timeout=30,
        )
        assert (out.added, out.catalog_size) == (2, len(bundle.items) + 2)
        assert {"new-1", "new-2"} <= set(_ranked_ids(stub, context_text="space"))
        # rankable by id alone, like any catalog item: no text needed now
        by_id = _ranked_ids(
            stub, context_text="space", candidates=[ranker_pb2.Candidate(item_id="new-1")]
        )
        assert by_id == ["new-1"]
        out = admin.RemoveItems(ranker_pb2.RemoveItemsRequest(item_ids=[retired]), timeout=30)
        assert (out.removed, out.catalog_size) == (1, len(bundle.items) + 1)
        assert retired not in _ranked_ids(stub, context_text="space")
        with pytest.raises(grpc.RpcError) as info:
            _ranked_ids(stub, candidates=[ranker_pb2.Candidate(item_id=retired)])
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        # a bundled item's text is the bundle's: an add naming one is refused, not dropped
        with pytest.raises(grpc.RpcError) as info:
            admin.AddItems(
                ranker_pb2.AddItemsRequest(
                    items=[ranker_pb2.CatalogItem(item_id=bundle.items[0].id, text="other")]
                ),
                timeout=30,
            )
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS  # type: ignore[attr-defined]
        assert "items[0].item_id" in info.value.details()  # type: ignore[attr-defined]
        # a reward for an event that showed the retired item is still learned
        assert stub.Reward(
            ranker_pb2.RewardRequest(event_id=shown.event_id, item_id=retired, value=1.0),
            timeout=10,
        ).accepted
    with ThreadServer(make_config(tiny_bundle, tmp_path / "s.db")) as srv:
        stub = ranker_pb2_grpc.RankerStub(srv.channel())
        ids = _ranked_ids(stub, context_text="space")
        assert {"new-1", "new-2"} <= set(ids) and retired not in ids
        info_ = stub.GetInfo(ranker_pb2.GetInfoRequest(), timeout=10)
        assert info_.catalog_size == len(bundle.items) + 1


@pytest.mark.redis
@pytest.mark.timeout(180)
def test_catalog_changes_reach_every_replica(
    tiny_bundle: Path, tmp_path: Path, redis_url: str
) -> None:
    state = {
        "store": "redis",
        "options": {"url": redis_url, "key_prefix": f"explorank-live-{uuid.uuid4().hex}:"},
        "sync_interval_ms": 100,
    }
    with (
        ThreadServer(make_config(tiny_bundle, tmp_path / "a.db", state=state)) as a,
        ThreadServer(make_config(tiny_bundle, tmp_path / "b.db", state=state)) as b,
    ):
        stub_a = ranker_pb2_grpc.RankerStub(a.channel())
        stub_b = ranker_pb2_grpc.RankerStub(b.channel())
        ranker_pb2_grpc.AdminStub(a.channel()).AddItems(
            ranker_pb2.AddItemsRequest(
                items=[ranker_pb2.CatalogItem(item_id="shared-1", text="a shared new item")]
            ),
            timeout=30,
        )
        _wait_for(lambda: "shared-1" in _ranked_ids(stub_b, context_text="new"))
        ranker_pb2_grpc.AdminStub(b.channel()).RemoveItems(
            ranker_pb2.RemoveItemsRequest(item_ids=["shared-1"]), timeout=30
        )
        _wait_for(lambda: "shared-1" not in _ranked_ids(stub_a, context_text="new"))
        # the embedding each replica computed for the item is the same
        assert a.engine.gen.catalog.embeddings[a.engine.gen.catalog.index["shared-1"]].tolist() == (
            b.engine.gen.catalog.embeddings[b.engine.gen.catalog.index["shared-1"]].tolist()
        )


def test_catalog_and_reload_from_the_command_line(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    b = _version(copy_bundle(tiny_bundle, tmp_path / "b"), "tiny-cli")
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": "file-1", "text": "from a file"}\n')
    with ThreadServer(make_config(tiny_bundle, tmp_path / "s.db")) as srv:
        addr = ["--address", srv.address]
        assert (
            cli_main(
                [
                    "catalog",
                    "add",
                    *addr,
                    "--item",
                    "cli-1",
                    "--text",
                    "from the cli",
                    "--file",
                    str(items),
                ]
            )
            == 0
        )
        assert "added 2, retired 0" in capsys.readouterr().out
        assert cli_main(["catalog", "remove", *addr, "cli-1"]) == 0
        assert "added 0, retired 1" in capsys.readouterr().out
        assert cli_main(["reload", *addr, "--bundle", str(b)]) == 0
        assert "now serving tiny-cli" in capsys.readouterr().out
        assert srv.engine.bundle.model_version == "tiny-cli"
        # the catalog changes were replayed onto the new bundle
        assert "file-1" in srv.engine.gen.catalog.ids and "cli-1" not in srv.engine.gen.catalog.ids
        assert cli_main(["catalog", "add", *addr, "--item", "x"]) == 2  # --text missing
