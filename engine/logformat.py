"""Log formats: human-readable text (the default) or one JSON object per line.

``server.log_format = "json"`` / ``explorank serve --log-format json`` writes every log record
as one line of JSON for log pipelines (Loki, Elasticsearch, Cloud Logging, ...)::

    {"timestamp": "2026-12-01T10:15:02.481Z", "level": "INFO", "logger": "explorank.server",
     "message": "SERVING ...", "event_id": "..."}

``event_id`` is there when the line belongs to a call that concerns an event: the servicer
opens a per-call context (:func:`call_context`) and the engine notes the event id in it
(:func:`note_event_id`) once it is known (a Rank's generated id, a Reward's event). A
traceback goes into ``exception``; with tracing on, ``trace_id`` and ``span_id`` of the
current span are added.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from explorank.engine import tracing

__all__ = ["FORMATS", "JsonFormatter", "call_context", "configure", "note_event_id"]

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: The current call's log fields (None outside a call).
_CALL: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "explorank_log_call", default=None
)


@contextmanager
def call_context() -> Iterator[dict[str, str]]:
    """A fresh set of log fields for one call (the servicer wraps every RPC in one)."""
    fields: dict[str, str] = {}
    token = _CALL.set(fields)
    try:
        yield fields
    finally:
        _CALL.reset(token)


def note_event_id(event_id: str) -> None:
    """Log lines of the current call carry ``event_id`` from here on (no-op outside a call);
    with tracing on, the current span gets the attribute ``explorank.event_id``."""
    fields = _CALL.get()
    if fields is not None and event_id:
        fields["event_id"] = event_id
    if event_id and tracing.enabled():
        tracing.set_attribute("explorank.event_id", event_id)


def current_fields() -> dict[str, str]:
    return dict(_CALL.get() or {})


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {
            "timestamp": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        event_id = getattr(record, "event_id", None) or (_CALL.get() or {}).get("event_id")
        if event_id:
            out["event_id"] = event_id
        if tracing.enabled():
            out.update(tracing.current_ids())
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"unknown log format {fmt!r}; choose from {', '.join(FORMATS)}")


def configure(fmt: str, root: logging.Logger | None = None) -> None:
    """Use ``fmt`` on every handler of the root logger (``explorank`` sets one up at start)."""
    root = root or logging.getLogger()
    chosen = formatter(fmt)
    if not root.handlers:
        logging.basicConfig()
    for handler in root.handlers:
        handler.setFormatter(chosen)
