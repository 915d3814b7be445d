"""``sqlite``: the embedded state store (one database file, one engine replica).

Durability by construction: a reward row and the statistics it changes are written in
the same SQLite transaction, and ``record_reward`` returns only after that transaction's
COMMIT returned with ``synchronous=FULL`` in WAL mode (the WAL is fsynced at commit). So
after ``kill -9`` or a power cut the stored statistics are exactly the sum of the deltas
of the stored rewards, and every acknowledged reward is stored.

The event loop never touches the disk: every write goes through one writer thread fed
by a queue. When writes queue up the thread runs them in one transaction (group
commit: one fsync for many rewards) and resolves each caller's future only after COMMIT.
Each operation runs inside a SAVEPOINT, so one bad operation fails alone. Reads
(``get_event``, ``load_stats``) use a second connection on a reader thread; WAL lets
them run while the writer commits. ``export_events`` uses its own connection and one
read transaction, so the export is a consistent snapshot.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from explorank import hookimpl
from explorank.errors import ConfigError, ExplorankError, InvalidArgumentError
from explorank.paths import default_state_db
from explorank.plugins.api import (
    EventRecord,
    PolicyStats,
    RewardRecord,
    StateStore,
    StateUnavailableError,
    StatsDelta,
)
from explorank.plugins.builtin import _records
from explorank.plugins.errors import PluginError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id      TEXT PRIMARY KEY,
    created_at    REAL NOT NULL,
    user_id       TEXT NOT NULL,
    scorer        TEXT NOT NULL,
    policy        TEXT NOT NULL,
    model_version TEXT NOT NULL,
    top_k         INTEGER NOT NULL,
    payload       BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (created_at, event_id);
CREATE TABLE IF NOT EXISTS rewards (
    event_id   TEXT NOT NULL,
    item_id    TEXT NOT NULL,
    value      REAL NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (event_id, item_id)
);
CREATE TABLE IF NOT EXISTS stats (
    policy TEXT NOT NULL,
    kind   TEXT NOT NULL CHECK (kind IN ('item', 'array')),
    key    TEXT NOT NULL,
    value  BLOB NOT NULL,
    shape  TEXT NOT NULL,
    PRIMARY KEY (policy, kind, key)
);
CREATE TABLE IF NOT EXISTS closed_events (
    event_id TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS policy_versions (
    policy  TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
"""
SYNC_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
StatKey = tuple[str, str, str]  # (policy, kind, key)


@dataclass
class _Op:
    kind: str  # "event" | "reward" | "retention"
    args: tuple[Any, ...]
    future: cf.Future[Any]


class SqliteStore(StateStore):
    """Embedded SQLite store: WAL, synchronous=FULL, one writer thread, group commit."""

    name = "sqlite"
    description = "embedded SQLite file (WAL, synchronous=FULL, group commit); one replica"
    shared = False
    supports_window_close = True

    OPTIONS = (
        "path",
        "synchronous",
        "events_synchronous",
        "busy_timeout_ms",
        "retention_max_age_s",
        "retention_max_events",
        "max_batch",
        "read_only",
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.path = Path(options.get("path") or default_state_db())
        self.synchronous = str(options.get("synchronous", "FULL")).upper()
        if self.synchronous not in SYNC_MODES:
            raise ConfigError(f"state.options.synchronous: must be one of {', '.join(SYNC_MODES)}")
        # Rank events are on every request's path; a commit holding only events uses this
        # level. NORMAL in WAL mode survives a process crash (kill -9) but not a power cut;
        # any commit that holds a reward uses ``synchronous`` (FULL), which also makes every
        # earlier event durable.
        self.events_synchronous = str(options.get("events_synchronous", "NORMAL")).upper()
        if self.events_synchronous not in SYNC_MODES:
            raise ConfigError(
                f"state.options.events_synchronous: must be one of {', '.join(SYNC_MODES)}"
            )
        self._current_sync = self.synchronous
        self.busy_timeout_ms = _positive_int(options, "busy_timeout_ms", 5000)
        self.max_batch = _positive_int(options, "max_batch", 256)
        self.retention_max_age_s: float | None = options.get("retention_max_age_s")
        self.retention_max_events: int | None = options.get("retention_max_events")
        self.read_only = bool(options.get("read_only", False))
        self._queue: Any = None
        self._writer: threading.Thread | None = None
        self._reader: cf.ThreadPoolExecutor | None = None
        self._read_local = threading.local()
        self._closed = True

    # ---------------------------------------------------------------- lifecycle
    async def open(self) -> None:
        if self.read_only:
            if not self.path.exists():
                raise InvalidArgumentError("path", f"no sqlite state database at {self.path}")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            import queue

            self._queue = queue.SimpleQueue()
            ready: cf.Future[None] = cf.Future()
            self._writer = threading.Thread(
                target=self._writer_main, args=(ready,), name="explorank-sqlite-writer", daemon=True
            )
            self._writer.start()
            await asyncio.wrap_future(ready)
        self._reader = cf.ThreadPoolExecutor(1, thread_name_prefix="explorank-sqlite-reader")
        self._closed = False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._reader is not None:
            await asyncio.wrap_future(self._reader.submit(self._close_reader))
            self._reader.shutdown(wait=True)
            self._reader = None

    async def healthy(self) -> bool:
        return not self._closed and (
            self.read_only or bool(self._writer and self._writer.is_alive())
        )

    def _connect(self, read_only: bool = False) -> sqlite3.Connection:
        if read_only:
            conn = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
        else:
            conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
        return conn

    # ------------------------------------------------------------------- writes
    async def log_event(self, event: EventRecord) -> None:
        _records.check_event(event)
        await self._submit("event", event)

    async def record_reward(self, reward: RewardRecord, deltas: Mapping[str, StatsDelta]) -> bool:
        return bool(await self._submit("reward", reward, dict(deltas)))

    async def apply_retention(self, max_age_s: float | None, max_events: int | None) -> int:
        if max_age_s is None and max_events is None:
            max_age_s, max_events = self.retention_max_age_s, self.retention_max_events
        if max_age_s is None and max_events is None:
            return 0
        return int(await self._submit("retention", max_age_s, max_events))

    async def _submit(self, kind: str, *args: Any) -> Any:
        if self._closed or self._writer is None or not self._writer.is_alive():
            raise StateUnavailableError(
                "sqlite store is read-only" if self.read_only else "sqlite store is closed"
            )
        fut: cf.Future[Any] = cf.Future()
        self._queue.put(_Op(kind, args, fut))
        return await asyncio.wrap_future(fut)

    # --------------------------------------------------------- the writer thread
    def _writer_main(self, ready: cf.Future[None]) -> None:
        try:
            conn = self._connect()
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ConfigError(
                    f"state.options.path: {self.path} cannot use WAL mode (got {mode})"
                )
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.executescript(SCHEMA)
        except Exception as exc:  # report to open() and stop
            if not isinstance(exc, ExplorankError):
                exc = StateUnavailableError(f"cannot open sqlite state database {self.path}: {exc}")
            ready.set_exception(exc)
            return
        ready.set_result(None)
        cache: dict[StatKey, np.ndarray] = {}
        stop = False
        while not stop:
            op = self._queue.get()
            if op is None:
                break
            batch = [op]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except Exception:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            try:
                self._run_batch(conn, batch, cache)
            except BaseException as exc:  # a bug here must not leave callers waiting forever
                log.exception("sqlite writer failed")
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(_map_error(exc, self.path))
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:  # the data is in the WAL already; just log
            log.warning("sqlite checkpoint on close failed: %s", exc)
        conn.close()

    def _run_batch(
        self, conn: sqlite3.Connection, batch: list[_Op], cache: dict[StatKey, np.ndarray]
    ) -> None:
        ops = [op for op in batch if op.future.set_running_or_notify_cancel()]
        if not ops:
            return
        overlay: dict[StatKey, np.ndarray] = {}
        touched: set[str] = set()
        results: list[tuple[_Op, Any, BaseException | None]] = []
        wanted = (
            self.synchronous if any(op.kind == "reward" for op in ops) else self.events_synchronous
        )
        if wanted != self._current_sync:
            conn.execute(f"PRAGMA synchronous = {wanted}")
            self._current_sync = wanted
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                conn.execute("SAVEPOINT op")
                try:
                    staged: dict[StatKey, np.ndarray] = {}
                    result = self._apply(conn, op, staged, overlay, cache)
                    conn.execute("RELEASE op")
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((op, None, _map_error(exc, self.path)))
                    continue
                overlay.update(staged)
                touched.update(k[0] for k in staged)
                results.append((op, result, None))
            for (policy, kind, key), value in overlay.items():
                blob, shape = _records.pack_array(value)
                conn.execute(
                    "INSERT OR REPLACE INTO stats (policy, kind, key, value, shape) VALUES (?,?,?,?,?)",
                    (policy, kind, key, blob, shape),
                )
            for policy in touched:
                conn.execute(
                    "INSERT INTO policy_versions (policy, version) VALUES (?, 1) "
                    "ON CONFLICT (policy) DO UPDATE SET version = version + 1",
                    (policy,),
                )
            conn.execute("COMMIT")
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            failure = _map_error(exc, self.path)
            for op in ops:
                op.future.set_exception(failure)
            return
        cache.update(overlay)
        for op, result, err in results:
            if err is not None:
                op.future.set_exception(err)
            else:
                op.future.set_result(result)

    def _apply(
        self,
        conn: sqlite3.Connection,
        op: _Op,
        staged: dict[StatKey, np.ndarray],
        overlay: dict[StatKey, np.ndarray],
        cache: dict[StatKey, np.ndarray],
    ) -> Any:
        if op.kind == "event":
            (event,) = op.args
            try:
                conn.execute(
                    "INSERT INTO events (event_id, created_at, user_id, scorer, policy, model_version,"
                    " top_k, payload) VALUES (?,?,?,?,?,?,?,?)",
                    (
                        event.event_id,
                        float(event.created_at),
                        event.user_id,
                        event.scorer,
                        event.policy,
                        event.model_version,
                        int(event.top_k),
                        _records.encode_event(event),
                    ),
                )
            except sqlite3.IntegrityError:
                raise InvalidArgumentError(
                    "event_id", f"{event.event_id!r} is already logged"
                ) from None
            return None
        if op.kind == "retention":
            return self._retention(conn, *op.args)
        if op.kind == "close":
            (event_ids,) = op.args
            conn.executemany(
                "INSERT OR IGNORE INTO closed_events (event_id) VALUES (?)",
                [(e,) for e in event_ids],
            )
            return None
        reward, deltas = op.args
        cur = conn.execute(
            "INSERT OR IGNORE INTO rewards (event_id, item_id, value, created_at) VALUES (?,?,?,?)",
            (reward.event_id, reward.item_id, float(reward.value), float(reward.created_at)),
        )
        if cur.rowcount == 0:
            return False  # duplicate: nothing applied
        for policy, delta in deltas.items():
            _records.check_deltas_finite(policy, delta.items, delta.arrays)
            for kind, mapping in (("item", delta.items), ("array", delta.arrays)):
                for key, value in mapping.items():
                    sk = (policy, kind, key)
                    add = np.asarray(value, dtype=np.float64)
                    cur_val = staged.get(sk)
                    if cur_val is None:
                        cur_val = overlay.get(sk)
                    if cur_val is None:
                        cur_val = cache.get(sk)
                    if cur_val is None:
                        cur_val = self._read_stat(conn, sk)
                    if cur_val is not None and cur_val.shape != add.shape:
                        raise PluginError(
                            f"policy {policy!r}: {kind} statistic {key!r} has shape {cur_val.shape}, "
                            f"delta has shape {add.shape}"
                        )
                    staged[sk] = add.copy() if cur_val is None else cur_val + add
        return True

    @staticmethod
    def _read_stat(conn: sqlite3.Connection, sk: StatKey) -> np.ndarray | None:
        row = conn.execute(
            "SELECT value, shape FROM stats WHERE policy = ? AND kind = ? AND key = ?", sk
        ).fetchone()
        return None if row is None else _records.unpack_array(row[0], row[1])

    @staticmethod
    def _retention(
        conn: sqlite3.Connection, max_age_s: float | None, max_events: int | None
    ) -> int:
        dropped = 0
        doomed = "SELECT event_id FROM events WHERE created_at < ?"
        if max_age_s is not None:
            cutoff = time.time() - float(max_age_s)
            conn.execute(f"DELETE FROM rewards WHERE event_id IN ({doomed})", (cutoff,))
            dropped += conn.execute("DELETE FROM events WHERE created_at < ?", (cutoff,)).rowcount
        if max_events is not None:
            beyond = "SELECT event_id FROM events ORDER BY created_at DESC, event_id DESC LIMIT -1 OFFSET ?"
            conn.execute(f"DELETE FROM rewards WHERE event_id IN ({beyond})", (int(max_events),))
            dropped += conn.execute(
                f"DELETE FROM events WHERE event_id IN ({beyond})", (int(max_events),)
            ).rowcount
        conn.execute(
            "DELETE FROM closed_events WHERE event_id NOT IN (SELECT event_id FROM events)"
        )
        return dropped

    # -------------------------------------------------------------------- reads
    def _read_conn(self) -> sqlite3.Connection:
        conn = getattr(self._read_local, "conn", None)
        if conn is None:
            conn = self._connect(read_only=self.read_only)
            self._read_local.conn = conn
        return conn

    def _close_reader(self) -> None:
        conn = getattr(self._read_local, "conn", None)
        if conn is not None:
            conn.close()
            self._read_local.conn = None

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._closed or self._reader is None:
            raise StateUnavailableError("sqlite store is closed")

        def call() -> Any:
            try:
                return fn(self._read_conn())
            except sqlite3.Error as exc:
                raise _map_error(exc, self.path) from exc

        return await asyncio.wrap_future(self._reader.submit(call))

    async def events_to_close(self, before: float, limit: int) -> list[EventRecord]:
        def fn(conn: sqlite3.Connection) -> list[EventRecord]:
            rows = conn.execute(
                "SELECT payload FROM events WHERE created_at < ? AND event_id NOT IN "
                "(SELECT event_id FROM closed_events) ORDER BY created_at, event_id LIMIT ?",
                (float(before), int(limit)),
            ).fetchall()
            return [_records.decode_event(r[0]) for r in rows]

        result: list[EventRecord] = await self._read(fn)
        return result

    async def mark_events_closed(self, event_ids: Sequence[str]) -> None:
        if event_ids:
            await self._submit("close", list(event_ids))

    async def get_event(self, event_id: str) -> EventRecord | None:
        def fn(conn: sqlite3.Connection) -> EventRecord | None:
            row = conn.execute(
                "SELECT payload FROM events WHERE event_id = ?", (event_id,)
            ).fetchone()
            return None if row is None else _records.decode_event(row[0])

        result: EventRecord | None = await self._read(fn)
        return result

    async def load_stats(self, policy: str) -> PolicyStats:
        def fn(conn: sqlite3.Connection) -> PolicyStats:
            conn.execute("BEGIN")
            try:
                stats = PolicyStats()
                rows = conn.execute(
                    "SELECT kind, key, value, shape FROM stats WHERE policy = ?", (policy,)
                ).fetchall()
                for kind, key, blob, shape in rows:
                    target = stats.items if kind == "item" else stats.arrays
                    target[key] = _records.unpack_array(blob, shape)
                row = conn.execute(
                    "SELECT version FROM policy_versions WHERE policy = ?", (policy,)
                ).fetchone()
                stats.version = int(row[0]) if row else 0
                return stats
            finally:
                conn.execute("COMMIT")

        result: PolicyStats = await self._read(fn)
        return result

    async def export_events(self, path: Path, fmt: str = "jsonl") -> int:
        _records.check_format(fmt)
        if self._closed:
            raise StateUnavailableError("sqlite store is closed")
        return await asyncio.to_thread(self._export, Path(path), fmt)

    def _export(self, path: Path, fmt: str) -> int:
        conn = self._connect(read_only=True)
        try:
            conn.execute("BEGIN")  # one snapshot for events and rewards
            events = conn.execute("SELECT payload FROM events ORDER BY created_at, event_id")
            with _records.ExportWriter(path, fmt) as writer:
                for (payload,) in events:
                    event = _records.decode_event(payload)
                    rewards = [
                        RewardRecord(event.event_id, item_id, value, created_at)
                        for item_id, value, created_at in conn.execute(
                            "SELECT item_id, value, created_at FROM rewards WHERE event_id = ?",
                            (event.event_id,),
                        )
                    ]
                    writer.write(_records.export_row(event, rewards))
                    if writer.count % 10_000 == 0:
                        log.info("exported %d events", writer.count)
            conn.execute("COMMIT")
            return writer.count
        except sqlite3.Error as exc:
            raise _map_error(exc, self.path) from exc
        finally:
            conn.close()


def _positive_int(options: Mapping[str, Any], name: str, default: int) -> int:
    value = options.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"state.options.{name}: must be a positive integer, got {value!r}")
    return value


def _map_error(exc: BaseException, path: Path) -> BaseException:
    """sqlite failures mean 'cannot make it durable now' (disk full, locked, I/O)."""
    if isinstance(exc, ExplorankError):
        return exc
    if isinstance(exc, sqlite3.Error):
        return StateUnavailableError(f"sqlite state database {path}: {exc}")
    return PluginError(f"sqlite store failed: {exc!r}")


@hookimpl
def register_state_stores(register: Callable[[type], None]) -> None:
    register(SqliteStore)
