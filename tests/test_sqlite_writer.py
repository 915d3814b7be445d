"""SqliteWriter on its own: group commit, one failing operation fails alone, no
acknowledgement before COMMIT."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from explorank.plugins.api import StateUnavailableError
from explorank.plugins.builtin.sqlite_writer import SqliteWriter
from explorank.plugins.errors import PluginError

pytestmark = pytest.mark.timeout(60)


class Recorder:
    """A TxState that records what the writer tells it."""

    def __init__(self, fail_before_commit: bool = False) -> None:
        self.log: list[str] = []
        self.fail_before_commit = fail_before_commit

    def release(self) -> None:
        self.log.append("release")

    def rollback_to(self) -> None:
        self.log.append("rollback_to")

    def before_commit(self, conn: sqlite3.Connection) -> None:
        self.log.append("before_commit")
        if self.fail_before_commit:
            raise sqlite3.OperationalError("disk I/O error")

    def after_commit(self) -> None:
        self.log.append("after_commit")


class Harness:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.statements: list[str] = []
        self.txs: list[Recorder] = []  # one per transaction
        self.fail_next_commit = False
        self.writer: SqliteWriter[Recorder] = SqliteWriter(
            path,
            self._connect,
            setup=lambda conn: conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)"),
            new_tx=self._new_tx,
        )
        self.writer.start().result(10)
        self.statements.clear()

    def _new_tx(self) -> Recorder:
        self.txs.append(Recorder(self.fail_next_commit))
        return self.txs[-1]

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        conn.set_trace_callback(self.statements.append)
        return conn

    def commits(self) -> int:
        return sum(s.strip().upper() == "COMMIT" for s in self.statements)

    def rows(self) -> list[int]:
        with sqlite3.connect(str(self.path)) as conn:
            return [k for (k,) in conn.execute("SELECT k FROM t ORDER BY k")]


def insert(k: int) -> Callable[[sqlite3.Connection, Recorder], int]:
    def op(conn: sqlite3.Connection, tx: Recorder) -> int:
        conn.execute("INSERT INTO t (k) VALUES (?)", (k,))
        return k

    return op


def test_operations_queued_during_a_transaction_share_one_commit(tmp_path: Path) -> None:
    h = Harness(tmp_path / "w.db")
    started, go = threading.Event(), threading.Event()

    def slow(conn: sqlite3.Connection, tx: Recorder) -> int:
        started.set()
        assert go.wait(10)
        return insert(0)(conn, tx)

    first = h.writer.submit(slow)
    assert started.wait(10)
    queued = [h.writer.submit(insert(k), durable=k == 5) for k in range(1, 21)]
    assert not any(f.done() for f in queued)
    go.set()
    assert first.result(10) == 0
    assert [f.result(10) for f in queued] == list(range(1, 21))
    assert h.commits() == 2  # the first transaction, then all twenty queued behind it
    assert h.writer.sync_level == "FULL"  # the second commit held a durable operation
    h.writer.close()
    assert h.rows() == list(range(21))


def test_a_failing_operation_fails_alone(tmp_path: Path) -> None:
    h = Harness(tmp_path / "w.db")
    started, go = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection, tx: Recorder) -> None:
        started.set()
        assert go.wait(10)

    def half_done_then_bug(conn: sqlite3.Connection, tx: Recorder) -> None:
        conn.execute("INSERT INTO t (k) VALUES (99)")  # rolled back with its SAVEPOINT
        raise ValueError("boom")

    blocker = h.writer.submit(hold)
    assert started.wait(10)
    ok1 = h.writer.submit(insert(1))
    bug = h.writer.submit(half_done_then_bug)
    duplicate = h.writer.submit(insert(1))  # a constraint violation: sqlite3.IntegrityError
    ok2 = h.writer.submit(insert(2))
    go.set()
    blocker.result(10)
    assert ok1.result(10) == 1 and ok2.result(10) == 2
    with pytest.raises(PluginError, match="boom"):
        bug.result(10)
    with pytest.raises(StateUnavailableError, match="UNIQUE"):
        duplicate.result(10)
    assert h.commits() == 2  # the failures did not split or abort the batch
    assert len(h.txs) == 2 and h.txs[1].log == [
        "release",
        "rollback_to",
        "rollback_to",
        "release",
        "before_commit",
        "after_commit",
    ]
    h.writer.close()
    assert h.rows() == [1, 2]


def test_no_future_resolves_when_the_commit_fails(tmp_path: Path) -> None:
    h = Harness(tmp_path / "w.db")
    h.fail_next_commit = True
    fut = h.writer.submit(insert(7), durable=True)
    with pytest.raises(StateUnavailableError, match="disk I/O error"):
        fut.result(10)
    assert h.txs[0].log == ["release", "before_commit"]  # rolled back: no after_commit
    h.fail_next_commit = False
    assert h.writer.submit(insert(8)).result(10) == 8  # the writer goes on
    h.writer.close()
    assert h.rows() == [8]
