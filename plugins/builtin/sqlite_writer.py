"""The sqlite store's group-commit writer: one thread, one connection, every write.

An operation is a callable ``fn(conn, tx)`` submitted with :meth:`SqliteWriter.submit`,
which returns a :class:`concurrent.futures.Future` for its result. The thread takes the
operations queued at that moment (up to ``max_batch``) and runs them in one transaction::

    BEGIN IMMEDIATE
      SAVEPOINT op; fn(conn, tx); RELEASE op     -- or ROLLBACK TO op: this one fails alone
      ...
    tx.before_commit(conn)
    COMMIT                                       -- then every future is resolved

so many callers share one fsync (group commit), and no caller hears "done" before its
write is committed. ``tx`` is a fresh :class:`TxState` per transaction (made by
``new_tx``): what the batch's operations share, told which of them were kept.

Durability level: a commit holding an operation submitted with ``durable=True`` (a
reward) runs at ``PRAGMA synchronous = <synchronous>`` (FULL: the WAL is fsynced at
COMMIT); a commit of other operations only (Rank events, retention, closed windows) at
``<events_synchronous>`` (NORMAL: survives a crash of the process, not of the machine).
The connection is in WAL mode, so readers on other connections never wait for it. On
close the WAL is checkpointed into the database file.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from explorank.errors import ConfigError, ExplorankError
from explorank.plugins.api import StateUnavailableError
from explorank.plugins.errors import PluginError

log = logging.getLogger(__name__)

T = TypeVar("T")


class TxState(Protocol):
    """What the operations of one transaction share; the writer tells it their fate."""

    def release(self) -> None:
        """The operation just run succeeded (its SAVEPOINT was released)."""

    def rollback_to(self) -> None:
        """The operation just run failed (rolled back to its SAVEPOINT)."""

    def before_commit(self, conn: sqlite3.Connection) -> None:
        """Last writes of the transaction, just before COMMIT."""

    def after_commit(self) -> None:
        """The COMMIT returned (not called when the transaction was rolled back)."""


S = TypeVar("S", bound=TxState)


@dataclass
class _Op(Generic[S]):
    fn: Callable[[sqlite3.Connection, S], Any]
    durable: bool
    future: cf.Future[Any]


def map_error(exc: BaseException, path: Path) -> BaseException:
    """sqlite failures mean 'cannot make it durable now' (disk full, locked, I/O)."""
    if isinstance(exc, ExplorankError):
        return exc
    if isinstance(exc, sqlite3.Error):
        return StateUnavailableError(f"sqlite state database {path}: {exc}")
    return PluginError(f"sqlite store failed: {exc!r}")


class SqliteWriter(Generic[S]):
    """One writer thread running queued operations in group-committed transactions.

    ``connect`` opens the thread's connection; ``setup`` runs once on it after WAL mode is
    set (e.g. creates the schema); ``new_tx`` makes the :class:`TxState` of a transaction.
    """

    def __init__(
        self,
        path: Path,
        connect: Callable[[], sqlite3.Connection],
        *,
        setup: Callable[[sqlite3.Connection], None],
        new_tx: Callable[[], S],
        synchronous: str = "FULL",
        events_synchronous: str = "NORMAL",
        max_batch: int = 256,
    ) -> None:
        self.path = path
        self._connect = connect
        self._setup = setup
        self._new_tx = new_tx
        self.synchronous = synchronous
        self.events_synchronous = events_synchronous
        self.max_batch = max_batch
        #: The ``PRAGMA synchronous`` level of the connection now (of the last commit).
        self.sync_level = synchronous
        self._queue: queue.SimpleQueue[_Op[S] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._main, name="explorank-sqlite-writer", daemon=True
        )
        self._ready: cf.Future[None] = cf.Future()

    def start(self) -> cf.Future[None]:
        """Start the thread; the future is done once the database is open (or failed to)."""
        self._thread.start()
        return self._ready

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def submit(
        self, fn: Callable[[sqlite3.Connection, S], T], *, durable: bool = False
    ) -> cf.Future[T]:
        """Queue ``fn``; its future is resolved after the COMMIT of its transaction.
        ``durable``: its commit must use the ``synchronous`` level (FULL)."""
        fut: cf.Future[T] = cf.Future()
        self._queue.put(_Op(fn, durable, fut))
        return fut

    def close(self) -> None:
        """Run what is queued, checkpoint, close the connection and end the thread (blocks)."""
        self._queue.put(None)
        self._thread.join()

    # ---------------------------------------------------------------- the thread
    def _open(self) -> sqlite3.Connection:
        conn = self._connect()
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ConfigError(f"state.options.path: {self.path} cannot use WAL mode (got {mode})")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        self._setup(conn)
        return conn

    def _main(self) -> None:
        try:
            conn = self._open()
        except Exception as exc:  # report to start()'s caller and stop
            if not isinstance(exc, ExplorankError):
                exc = StateUnavailableError(f"cannot open sqlite state database {self.path}: {exc}")
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        stop = False
        while not stop:
            op = self._queue.get()
            if op is None:
                break
            batch = [op]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            try:
                self._run_batch(conn, batch)
            except BaseException as exc:  # a bug here must not leave callers waiting forever
                log.exception("sqlite writer failed")
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(map_error(exc, self.path))
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:  # the data is in the WAL already; just log
            log.warning("sqlite checkpoint on close failed: %s", exc)
        conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Op[S]]) -> None:
        ops = [op for op in batch if op.future.set_running_or_notify_cancel()]
        if not ops:
            return
        results: list[tuple[_Op[S], Any, BaseException | None]] = []
        wanted = self.synchronous if any(op.durable for op in ops) else self.events_synchronous
        if wanted != self.sync_level:
            conn.execute(f"PRAGMA synchronous = {wanted}")
            self.sync_level = wanted
        tx = self._new_tx()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                conn.execute("SAVEPOINT op")
                try:
                    result = op.fn(conn, tx)
                    conn.execute("RELEASE op")
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    tx.rollback_to()
                    results.append((op, None, map_error(exc, self.path)))
                    continue
                tx.release()
                results.append((op, result, None))
            tx.before_commit(conn)
            conn.execute("COMMIT")
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            failure = map_error(exc, self.path)
            for op in ops:
                op.future.set_exception(failure)
            return
        tx.after_commit()
        for op, result, err in results:
            if err is not None:
                op.future.set_exception(err)
            else:
                op.future.set_result(result)
