"""``sqlite``: the embedded state store (one database file, one engine replica).

Durability by construction: a reward row and the statistics it changes are written in
the same SQLite transaction, and ``record_reward`` returns only after that transaction's
COMMIT returned with ``synchronous=FULL`` in WAL mode (the WAL is fsynced at commit). So
after ``kill -9`` or a power cut the stored statistics are exactly the sum of the deltas
of the stored rewards, and every acknowledged reward is stored.

The event loop never touches the disk: every write goes through one writer thread fed
by a queue (:mod:`~explorank.plugins.builtin.sqlite_writer`). When writes queue up the
thread runs them in one transaction (group commit: one fsync for many rewards) and
resolves each caller's future only after COMMIT. Each operation runs inside a SAVEPOINT,
so one bad operation fails alone. Reads (``get_event``, ``load_stats``) use a second
connection on a reader thread; WAL lets them run while the writer commits.
``export_events`` uses its own connection and one read transaction, so the export is a
consistent snapshot. The schema and the SQL are in
:mod:`~explorank.plugins.builtin.sqlite_schema`; this module holds the options, the
lifecycle and the async API.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, field_validator

from explorank import hookimpl
from explorank.errors import InvalidArgumentError
from explorank.paths import default_state_db
from explorank.plugins.api import (
    CatalogChange,
    EventRecord,
    PluginParams,
    PolicyStats,
    RewardRecord,
    StateStore,
    StateUnavailableError,
    StatsDelta,
)
from explorank.plugins.builtin import _records
from explorank.plugins.builtin import sqlite_schema as sql
from explorank.plugins.builtin.sqlite_schema import StatsCache, StatsTx
from explorank.plugins.builtin.sqlite_writer import SqliteWriter, map_error

T = TypeVar("T")
SyncLevel = Literal["OFF", "NORMAL", "FULL", "EXTRA"]


class SqliteStore(StateStore):
    """Embedded SQLite store: WAL, synchronous=FULL, one writer thread, group commit."""

    name = "sqlite"
    description = "embedded SQLite file (WAL, synchronous=FULL, group commit); one replica"
    shared = False
    supports_window_close = True
    supports_catalog_changes = True

    class Options(PluginParams):
        path: Path | None = Field(
            None, description="the database file; default: state.db in the state directory"
        )
        synchronous: SyncLevel = Field(
            "FULL",
            description="sync level of a commit that holds a reward; FULL or EXTRA survive "
            "a power cut",
        )
        # Rank events are on every request's path; a commit holding only events uses this
        # level. NORMAL in WAL mode survives a process crash (kill -9) but not a power cut;
        # any commit that holds a reward uses ``synchronous`` (FULL), which also makes every
        # earlier event durable.
        events_synchronous: SyncLevel = Field(
            "NORMAL",
            description="sync level of a commit that holds only events (NORMAL: survives "
            "kill -9, not a power cut)",
        )
        busy_timeout_ms: int = Field(5000, gt=0, description="wait this long for a lock")
        retention_max_age_s: float | None = Field(
            None, gt=0, description="apply_retention(None, None) drops events older than this"
        )
        retention_max_events: int | None = Field(
            None, ge=1, description="apply_retention(None, None) keeps only this many events"
        )
        max_batch: int = Field(256, gt=0, description="operations per group commit, at most")
        read_only: bool = Field(
            False, description="open an existing file read-only (events export)"
        )
        shared: bool = Field(
            False,
            description="several processes on this machine share the file (serve --workers): "
            "statistics and catalog changes are re-read every state.sync_interval_ms",
        )

        @field_validator("synchronous", "events_synchronous", mode="before")
        @classmethod
        def _upper(cls, v: Any) -> Any:
            return v.upper() if isinstance(v, str) else v

        @field_validator("path", mode="before")
        @classmethod
        def _blank_is_default(cls, v: Any) -> Any:
            return None if v == "" else v

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        self.path = Path(o.path or default_state_db())
        self.synchronous: str = o.synchronous
        self.events_synchronous: str = o.events_synchronous
        self.busy_timeout_ms = int(o.busy_timeout_ms)
        self.max_batch = int(o.max_batch)
        self.retention_max_age_s: float | None = o.retention_max_age_s
        self.retention_max_events: int | None = o.retention_max_events
        self.read_only = bool(o.read_only)
        #: instance attribute: True when other processes write the same file
        self.shared = bool(o.shared)
        self._writer: SqliteWriter[StatsTx] | None = None
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
            cache = StatsCache()  # committed statistics, writer thread only
            self._writer = SqliteWriter(
                self.path,
                self._connect,
                setup=sql.create_schema,
                new_tx=lambda: StatsTx(cache),
                synchronous=self.synchronous,
                events_synchronous=self.events_synchronous,
                max_batch=self.max_batch,
            )
            await asyncio.wrap_future(self._writer.start())
        self._reader = cf.ThreadPoolExecutor(1, thread_name_prefix="explorank-sqlite-reader")
        self._closed = False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            await asyncio.to_thread(self._writer.close)
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
        await self._submit(lambda conn, tx: sql.insert_event(conn, event))

    async def record_reward(self, reward: RewardRecord, deltas: Mapping[str, StatsDelta]) -> bool:
        changes = dict(deltas)
        return bool(
            await self._submit(
                lambda conn, tx: sql.record_reward(conn, tx, reward, changes), durable=True
            )
        )

    async def apply_retention(self, max_age_s: float | None, max_events: int | None) -> int:
        if max_age_s is None and max_events is None:
            max_age_s, max_events = self.retention_max_age_s, self.retention_max_events
        if max_age_s is None and max_events is None:
            return 0
        return int(
            await self._submit(lambda conn, tx: sql.apply_retention(conn, max_age_s, max_events))
        )

    async def mark_events_closed(self, event_ids: Sequence[str]) -> None:
        if event_ids:
            ids = list(event_ids)
            await self._submit(lambda conn, tx: sql.mark_events_closed(conn, ids))

    async def log_catalog_changes(self, changes: Sequence[CatalogChange]) -> int:
        batch = list(changes)
        return int(
            await self._submit(lambda conn, tx: sql.log_catalog_changes(conn, batch), durable=True)
        )

    async def catalog_changes(self, after_seq: int = 0) -> list[CatalogChange]:
        return await self._read(lambda conn: sql.catalog_changes(conn, after_seq))

    async def _submit(
        self, fn: Callable[[sqlite3.Connection, StatsTx], T], *, durable: bool = False
    ) -> T:
        if self._closed or self._writer is None or not self._writer.is_alive():
            raise StateUnavailableError(
                "sqlite store is read-only" if self.read_only else "sqlite store is closed"
            )
        return await asyncio.wrap_future(self._writer.submit(fn, durable=durable))

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

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed or self._reader is None:
            raise StateUnavailableError("sqlite store is closed")

        def call() -> T:
            try:
                return fn(self._read_conn())
            except sqlite3.Error as exc:
                raise map_error(exc, self.path) from exc

        return await asyncio.wrap_future(self._reader.submit(call))

    async def events_to_close(self, before: float, limit: int) -> list[EventRecord]:
        return await self._read(lambda conn: sql.events_to_close(conn, before, limit))

    async def get_event(self, event_id: str) -> EventRecord | None:
        return await self._read(lambda conn: sql.read_event(conn, event_id))

    async def load_stats(self, policy: str) -> PolicyStats:
        return await self._read(lambda conn: sql.load_stats(conn, policy))

    async def export_events(self, path: Path, fmt: str = "jsonl") -> int:
        _records.check_format(fmt)
        if self._closed:
            raise StateUnavailableError("sqlite store is closed")
        return await asyncio.to_thread(self._export, Path(path), fmt)

    def _export(self, path: Path, fmt: str) -> int:
        conn = self._connect(read_only=True)
        try:
            return sql.export_events(conn, path, fmt)
        except sqlite3.Error as exc:
            raise map_error(exc, self.path) from exc
        finally:
            conn.close()


@hookimpl
def register_state_stores(register: Callable[[type], None]) -> None:
    register(SqliteStore)
