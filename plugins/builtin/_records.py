"""(De)serialisation shared by the state stores, and the exported event-log row format.

Two encodings of an :class:`EventRecord` live here:

- the *storage* encoding (:func:`encode_event` / :func:`decode_event`): compact JSON bytes
  with numpy arrays as base64 of their raw little-endian bytes, so float32 embeddings
  round-trip bit-exactly and a 384-d embedding costs ~2 KB instead of ~8 KB of decimals;
- the *export* row (:func:`export_row` / :func:`parse_export_row`): plain JSON that offline
  evaluation (``explorank ope``) and notebooks read without explorank. The row format is
  documented in ``docs/state.md``; change both together.

Statistics arrays are stored as float64 with their shape (:func:`pack_array`).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from explorank.errors import InvalidArgumentError
from explorank.plugins.api import EventRecord, RewardRecord
from explorank.plugins.errors import PluginError

STORAGE_VERSION = 1
EXPORT_FORMATS = ("jsonl", "parquet")

# ------------------------------------------------------------------------ arrays


def _array_to_json(arr: np.ndarray, dtype: str) -> dict[str, Any]:
    a = np.ascontiguousarray(arr, dtype=dtype)
    return {"shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode("ascii")}


def _array_from_json(obj: dict[str, Any], dtype: str) -> np.ndarray:
    raw = base64.b64decode(obj["b64"])
    return np.frombuffer(raw, dtype=dtype).reshape(obj["shape"]).copy()


def pack_array(arr: np.ndarray) -> tuple[bytes, str]:
    """float64 little-endian bytes of ``arr`` and its shape as JSON text."""
    a = np.ascontiguousarray(arr, dtype="<f8")
    return a.tobytes(), json.dumps(list(a.shape))


def unpack_array(blob: bytes, shape: str) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f8").reshape(json.loads(shape)).astype(np.float64)


# --------------------------------------------------------------------- validation


def check_event(event: EventRecord) -> None:
    """Raise :class:`InvalidArgumentError` when the event's parallel lists disagree.

    A malformed event would otherwise be stored and only fail later, when a reward
    or an offline evaluation reads it."""
    if not event.event_id:
        raise InvalidArgumentError("event_id", "must be a non-empty string")
    k = len(event.ranked_ids)
    for name in ("ranked_scores", "propensities", "explored"):
        if len(getattr(event, name)) != k:
            raise InvalidArgumentError(
                name, f"has {len(getattr(event, name))} entries but ranked_ids has {k}"
            )
    n = len(event.candidate_ids)
    if np.asarray(event.candidate_scores).shape != (n,):
        raise InvalidArgumentError(
            "candidate_scores", f"shape {np.asarray(event.candidate_scores).shape} != ({n},)"
        )
    emb = np.asarray(event.ranked_embeddings)
    if k and (emb.ndim != 2 or emb.shape[0] not in (0, k)):
        # (0, d): every ranked item is a catalog item of model_version, stored by reference
        raise InvalidArgumentError(
            "ranked_embeddings", f"shape {emb.shape}, expected ({k}, d) or (0, d)"
        )


def check_deltas_finite(
    policy: str, items: dict[str, np.ndarray], arrays: dict[str, np.ndarray]
) -> None:
    """A NaN/inf delta would poison the stored statistics forever: refuse it."""
    for kind, mapping in (("item", items), ("array", arrays)):
        for key, value in mapping.items():
            if not np.all(np.isfinite(value)):
                raise PluginError(
                    f"policy {policy!r} returned a non-finite {kind} delta for {key!r}"
                )


# ------------------------------------------------------------------ storage form


def _header(event: EventRecord) -> dict[str, Any]:
    """The scalar fields and candidate ids, identical in the storage and export encodings."""
    return {
        "event_id": event.event_id,
        "created_at": float(event.created_at),
        "user_id": event.user_id,
        "scorer": event.scorer,
        "policy": event.policy,
        "model_version": event.model_version,
        "top_k": int(event.top_k),
        "context_text": event.context_text,
        "candidate_ids": list(event.candidate_ids),
        "request_hash": event.request_hash,
    }


def encode_event(event: EventRecord) -> bytes:
    """Compact, lossless bytes for storage (see module docstring)."""
    obj = {
        "v": STORAGE_VERSION,
        **_header(event),
        "candidate_scores": _array_to_json(np.asarray(event.candidate_scores), "<f4"),
        "ranked_ids": list(event.ranked_ids),
        "ranked_scores": [float(x) for x in event.ranked_scores],
        "propensities": [float(x) for x in event.propensities],
        "explored": [bool(x) for x in event.explored],
        "user_embedding": _array_to_json(np.asarray(event.user_embedding), "<f4"),
        "ranked_embeddings": _array_to_json(np.asarray(event.ranked_embeddings), "<f4"),
    }
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def decode_event(data: bytes | str) -> EventRecord:
    obj = json.loads(data)
    if obj.get("v") != STORAGE_VERSION:
        raise PluginError(
            f"stored event has storage version {obj.get('v')!r}; expected {STORAGE_VERSION}"
        )
    return EventRecord(
        event_id=obj["event_id"],
        created_at=obj["created_at"],
        user_id=obj["user_id"],
        scorer=obj["scorer"],
        policy=obj["policy"],
        model_version=obj["model_version"],
        candidate_ids=obj["candidate_ids"],
        candidate_scores=_array_from_json(obj["candidate_scores"], "<f4").astype(np.float32),
        ranked_ids=obj["ranked_ids"],
        ranked_scores=obj["ranked_scores"],
        propensities=obj["propensities"],
        explored=obj["explored"],
        user_embedding=_array_from_json(obj["user_embedding"], "<f4").astype(np.float32),
        ranked_embeddings=_array_from_json(obj["ranked_embeddings"], "<f4").astype(np.float32),
        context_text=obj["context_text"],
        top_k=obj["top_k"],
        request_hash=obj.get("request_hash", ""),
    )


def encode_reward(reward: RewardRecord) -> str:
    return json.dumps({"value": reward.value, "created_at": reward.created_at})


def decode_reward(event_id: str, item_id: str, data: bytes | str) -> RewardRecord:
    obj = json.loads(data)
    return RewardRecord(event_id, item_id, float(obj["value"]), float(obj["created_at"]))


# ------------------------------------------------------------------- export rows


def export_row(event: EventRecord, rewards: Sequence[RewardRecord]) -> dict[str, Any]:
    """One exported line: the event with its rewards joined (format in docs/state.md)."""
    emb = np.asarray(event.ranked_embeddings, dtype=np.float32)
    return {
        **_header(event),
        "candidate_scores": np.asarray(event.candidate_scores, dtype=np.float32).tolist(),
        "ranked": [
            {
                "item_id": item_id,
                "score": float(event.ranked_scores[j]),
                "propensity": float(event.propensities[j]),
                "explored": bool(event.explored[j]),
                "position": j,
            }
            for j, item_id in enumerate(event.ranked_ids)
        ],
        "user_embedding": np.asarray(event.user_embedding, dtype=np.float32).tolist(),
        "ranked_embeddings": emb.tolist(),
        "rewards": [
            {"item_id": r.item_id, "value": float(r.value), "created_at": float(r.created_at)}
            for r in sorted(rewards, key=lambda r: (r.created_at, r.item_id))
        ],
    }


# ------------------------------------------------------------------------ writers


def check_format(fmt: str) -> str:
    if fmt not in EXPORT_FORMATS:
        raise InvalidArgumentError(
            "format", f"must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}"
        )
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise InvalidArgumentError(
                "format", "parquet export needs pyarrow (pip install pyarrow); or use jsonl"
            ) from None
    return fmt


class ExportWriter:
    """Streams export rows to ``path``: written to a temporary sibling file and renamed
    into place on success, so a crashed export never leaves a truncated file that looks
    complete. Parquet rows are buffered ``batch_rows`` at a time."""

    def __init__(self, path: str | Path, fmt: str = "jsonl", batch_rows: int = 1024) -> None:
        self.fmt = check_format(fmt)
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.count = 0
        self._batch: list[dict[str, Any]] = []
        self._batch_rows = batch_rows
        self._fh: Any = None
        self._pq: Any = None

    def __enter__(self) -> ExportWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.fmt == "jsonl":
            self._fh = open(self.tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        return self

    def write(self, row: dict[str, Any]) -> None:
        self.count += 1
        if self.fmt == "jsonl":
            self._fh.write(json.dumps(row, separators=(",", ":")))
            self._fh.write("\n")
            return
        self._batch.append(row)
        if len(self._batch) >= self._batch_rows:
            self._flush_parquet()

    def _flush_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._pq is None:
            self._pq = pq.ParquetWriter(str(self.tmp), _parquet_schema())
        if self._batch:
            self._pq.write_table(pa.Table.from_pylist(self._batch, schema=_parquet_schema()))
            self._batch = []

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.fmt == "jsonl":
                self._fh.close()
            elif exc_type is None:
                self._flush_parquet()
            if self._pq is not None:
                self._pq.close()
        finally:
            if exc_type is None:
                os.replace(self.tmp, self.path)
            else:
                self.tmp.unlink(missing_ok=True)


def _parquet_schema() -> Any:
    import pyarrow as pa

    ranked = pa.struct(
        [
            ("item_id", pa.string()),
            ("score", pa.float64()),
            ("propensity", pa.float64()),
            ("explored", pa.bool_()),
            ("position", pa.int64()),
        ]
    )
    reward = pa.struct(
        [("item_id", pa.string()), ("value", pa.float64()), ("created_at", pa.float64())]
    )
    return pa.schema(
        [
            ("event_id", pa.string()),
            ("created_at", pa.float64()),
            ("user_id", pa.string()),
            ("scorer", pa.string()),
            ("policy", pa.string()),
            ("model_version", pa.string()),
            ("top_k", pa.int64()),
            ("context_text", pa.string()),
            ("candidate_ids", pa.list_(pa.string())),
            ("candidate_scores", pa.list_(pa.float32())),
            ("ranked", pa.list_(ranked)),
            ("user_embedding", pa.list_(pa.float32())),
            ("ranked_embeddings", pa.list_(pa.list_(pa.float32()))),
            ("rewards", pa.list_(reward)),
        ]
    )
