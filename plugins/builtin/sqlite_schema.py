"""The sqlite store's schema and every SQL statement it runs, as plain functions.

Each function takes a :class:`sqlite3.Connection` (and plain arguments) and runs on
whatever thread calls it; none opens, commits or closes a transaction except the two
readers that need one snapshot (:func:`load_stats`, :func:`export_events`). The writer
thread (:mod:`~explorank.plugins.builtin.sqlite_writer`) calls the write functions inside
its transaction, one SAVEPOINT each.

Statistics are read-modify-written: :func:`record_reward` adds a reward's deltas to the
current values and stages the sums in a :class:`StatsTx`, which keeps what the operations
of one transaction changed and writes each changed statistic once, just before COMMIT.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from explorank.errors import InvalidArgumentError
from explorank.plugins.api import (
    CatalogChange,
    EventRecord,
    PolicyStats,
    RewardRecord,
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
CREATE TABLE IF NOT EXISTS catalog_changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL CHECK (kind IN ('add', 'remove')),
    item_id    TEXT NOT NULL,
    text       TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""
StatKey = tuple[str, str, str]  # (policy, kind, key)


def create_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


# ------------------------------------------------------------------------ writes


def insert_event(conn: sqlite3.Connection, event: EventRecord) -> None:
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
        raise InvalidArgumentError("event_id", f"{event.event_id!r} is already logged") from None


class StatsCache:
    """Committed statistics the writer has read or written, valid while no *other*
    connection has committed: ``PRAGMA data_version`` (which changes only when another
    connection — another process sharing the file — commits) is compared once per
    transaction, after ``BEGIN IMMEDIATE`` took the write lock, and the cache is dropped when
    it moved. So several processes can share one database without losing each other's sums."""

    def __init__(self) -> None:
        self.values: dict[StatKey, np.ndarray] = {}
        self.data_version: int | None = None

    def validate(self, conn: sqlite3.Connection) -> None:
        version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        if version != self.data_version:
            self.values.clear()
            self.data_version = version


class StatsTx:
    """The statistics the operations of one write transaction change.

    Three layers, newest first: what the running operation staged, what the transaction's
    earlier (successful) operations changed (the overlay), and a write-through cache of
    committed values that outlives the transaction (:class:`StatsCache`); below them, the
    ``stats`` table. So the writer reads each statistic from disk at most once. The writer
    drives it: :meth:`release` / :meth:`rollback_to` after each operation's SAVEPOINT,
    :meth:`before_commit` writes the overlay and bumps the changed policies' versions, and
    :meth:`after_commit` moves the overlay into the cache.
    """

    def __init__(self, cache: StatsCache) -> None:
        self._cache = cache
        self._validated = False
        self._overlay: dict[StatKey, np.ndarray] = {}
        self._staged: dict[StatKey, np.ndarray] = {}

    def current(self, conn: sqlite3.Connection, sk: StatKey) -> np.ndarray | None:
        if not self._validated:  # inside the transaction: the write lock is held
            self._cache.validate(conn)
            self._validated = True
        for layer in (self._staged, self._overlay, self._cache.values):
            value = layer.get(sk)
            if value is not None:
                return value
        return read_stat(conn, sk)

    def stage(self, sk: StatKey, value: np.ndarray) -> None:
        self._staged[sk] = value

    def release(self) -> None:
        """The running operation succeeded: keep what it staged."""
        self._overlay.update(self._staged)
        self._staged = {}

    def rollback_to(self) -> None:
        """The running operation failed: drop what it staged."""
        self._staged = {}

    def before_commit(self, conn: sqlite3.Connection) -> None:
        for (policy, kind, key), value in self._overlay.items():
            blob, shape = _records.pack_array(value)
            conn.execute(
                "INSERT OR REPLACE INTO stats (policy, kind, key, value, shape) VALUES (?,?,?,?,?)",
                (policy, kind, key, blob, shape),
            )
        for policy in {sk[0] for sk in self._overlay}:
            conn.execute(
                "INSERT INTO policy_versions (policy, version) VALUES (?, 1) "
                "ON CONFLICT (policy) DO UPDATE SET version = version + 1",
                (policy,),
            )

    def after_commit(self) -> None:
        self._cache.values.update(self._overlay)


def read_stat(conn: sqlite3.Connection, sk: StatKey) -> np.ndarray | None:
    row = conn.execute(
        "SELECT value, shape FROM stats WHERE policy = ? AND kind = ? AND key = ?", sk
    ).fetchone()
    return None if row is None else _records.unpack_array(row[0], row[1])


def record_reward(
    conn: sqlite3.Connection,
    stats: StatsTx,
    reward: RewardRecord,
    deltas: Mapping[str, StatsDelta],
) -> bool:
    """Insert the reward row and stage its deltas; False (nothing applied) for a duplicate."""
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
                cur_val = stats.current(conn, sk)
                if cur_val is not None and cur_val.shape != add.shape:
                    raise PluginError(
                        f"policy {policy!r}: {kind} statistic {key!r} has shape {cur_val.shape}, "
                        f"delta has shape {add.shape}"
                    )
                stats.stage(sk, add.copy() if cur_val is None else cur_val + add)
    return True


def apply_retention(
    conn: sqlite3.Connection, max_age_s: float | None, max_events: int | None
) -> int:
    """Delete events (and their rewards) older than ``max_age_s`` or beyond the newest
    ``max_events``; return how many events were deleted. Statistics are kept."""
    dropped = 0
    doomed = "SELECT event_id FROM events WHERE created_at < ?"
    if max_age_s is not None:
        cutoff = time.time() - float(max_age_s)
        conn.execute(f"DELETE FROM rewards WHERE event_id IN ({doomed})", (cutoff,))
        dropped += conn.execute("DELETE FROM events WHERE created_at < ?", (cutoff,)).rowcount
    if max_events is not None:
        beyond = (
            "SELECT event_id FROM events ORDER BY created_at DESC, event_id DESC LIMIT -1 OFFSET ?"
        )
        conn.execute(f"DELETE FROM rewards WHERE event_id IN ({beyond})", (int(max_events),))
        dropped += conn.execute(
            f"DELETE FROM events WHERE event_id IN ({beyond})", (int(max_events),)
        ).rowcount
    conn.execute("DELETE FROM closed_events WHERE event_id NOT IN (SELECT event_id FROM events)")
    return dropped


def mark_events_closed(conn: sqlite3.Connection, event_ids: Sequence[str]) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO closed_events (event_id) VALUES (?)", [(e,) for e in event_ids]
    )


def log_catalog_changes(conn: sqlite3.Connection, changes: Sequence[CatalogChange]) -> int:
    """Append ``changes`` in order; the last sequence number."""
    last = 0
    for c in changes:
        cur = conn.execute(
            "INSERT INTO catalog_changes (kind, item_id, text, created_at) VALUES (?,?,?,?)",
            (c.kind, c.item_id, c.text, float(c.created_at)),
        )
        last = int(cur.lastrowid or 0)
    return last


# ------------------------------------------------------------------------- reads


def catalog_changes(conn: sqlite3.Connection, after_seq: int) -> list[CatalogChange]:
    rows = conn.execute(
        "SELECT seq, kind, item_id, text, created_at FROM catalog_changes WHERE seq > ? "
        "ORDER BY seq",
        (int(after_seq),),
    ).fetchall()
    return [
        CatalogChange(kind, item_id, text, created_at, seq)
        for seq, kind, item_id, text, created_at in rows
    ]


def read_event(conn: sqlite3.Connection, event_id: str) -> EventRecord | None:
    row = conn.execute("SELECT payload FROM events WHERE event_id = ?", (event_id,)).fetchone()
    return None if row is None else _records.decode_event(row[0])


def events_to_close(conn: sqlite3.Connection, before: float, limit: int) -> list[EventRecord]:
    rows = conn.execute(
        "SELECT payload FROM events WHERE created_at < ? AND event_id NOT IN "
        "(SELECT event_id FROM closed_events) ORDER BY created_at, event_id LIMIT ?",
        (float(before), int(limit)),
    ).fetchall()
    return [_records.decode_event(r[0]) for r in rows]


def load_stats(conn: sqlite3.Connection, policy: str) -> PolicyStats:
    """``policy``'s statistics and version, read in one transaction."""
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


def export_events(conn: sqlite3.Connection, path: Path, fmt: str) -> int:
    """Write every event with its rewards to ``path``, from one read transaction (a
    consistent snapshot while the writer goes on); return the number of events."""
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
