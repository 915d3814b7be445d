"""``--log-format json``: one JSON object per line (timestamp, level, logger, message, and the
event id where the line belongs to a call about an event); the default stays text."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from explorank.engine import logformat
from explorank.engine.client import RankerClient
from explorank.engine.config import load_config
from explorank.errors import ConfigError
from tests.server_harness import ThreadServer, make_config

KEYS = {"timestamp", "level", "logger", "message"}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_a_record_is_one_line_of_json_with_the_fields() -> None:
    fmt = logformat.JsonFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "explorank.x", logging.ERROR, __file__, 1, "two\nlines %s", ("é",), sys.exc_info()
        )
    line = fmt.format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert out["message"] == "two\nlines é"
    assert (out["level"], out["logger"]) == ("ERROR", "explorank.x")
    assert TIMESTAMP.match(out["timestamp"])
    assert "ValueError: boom" in out["exception"]
    assert "event_id" not in out  # not inside a call about an event
    with logformat.call_context():
        logformat.note_event_id("ev-1")
        assert json.loads(fmt.format(record))["event_id"] == "ev-1"
    assert "event_id" not in json.loads(fmt.format(record))  # the call's fields are gone


def test_log_format_setting_and_its_errors() -> None:
    assert load_config(environ={}).server.log_format == "text"
    assert (
        load_config(environ={"EXPLORANK__SERVER__LOG_FORMAT": "json"}).server.log_format == "json"
    )
    with pytest.raises(ConfigError, match="log_format"):
        load_config(environ={"EXPLORANK__SERVER__LOG_FORMAT": "xml"})


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Every record at DEBUG, formatted as JSON, into a buffer."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logformat.JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_call_lines_carry_the_event_id(
    tiny_bundle: Path, tmp_path: Path, json_log: io.StringIO
) -> None:
    config = make_config(tiny_bundle, tmp_path / "s.db", batching={"length_buckets": [64]})
    with ThreadServer(config) as srv, RankerClient(srv.address) as client:
        res = client.rank(user_id="u1", context_text="a film about the sea", top_k=3)
        client.reward(res.event_id, res.items[0].item_id, 1.0)
        time.sleep(0.2)  # the access line is written as the call ends
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert lines and all(set(x) >= KEYS for x in lines)
    calls = [x for x in lines if x["logger"] == "explorank.server" and "/" in x["message"]]
    rank = [x for x in calls if x["message"].startswith("explorank.v1.Ranker/Rank OK")]
    reward = [x for x in calls if x["message"].startswith("explorank.v1.Ranker/Reward OK")]
    assert rank and rank[0]["event_id"] == res.event_id
    assert reward and reward[0]["event_id"] == res.event_id
    assert any(x["message"].startswith("SERVING") and "event_id" not in x for x in lines)


def test_serve_log_format_json_writes_only_json_lines(tiny_bundle: Path, tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    cmd = [
        sys.executable,
        "-m",
        "explorank",
        "-vv",
        "serve",
        "--bundle",
        str(tiny_bundle),
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--port-file",
        str(port_file),
        "--state-db",
        str(tmp_path / "state.db"),
        "--log-format",
        "json",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EXPLORANK__BATCHING__LENGTH_BUCKETS": "[64]"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
    )
    try:
        end = time.monotonic() + 120
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < end, "server not ready"
            time.sleep(0.05)
        with RankerClient(f"127.0.0.1:{port_file.read_text().strip()}") as client:
            res = client.rank(context_text="a quiet garden", top_k=2)
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    lines = [line for line in output.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    assert all(set(x) >= KEYS and TIMESTAMP.match(x["timestamp"]) for x in parsed)
    assert any(x["message"].startswith("SERVING") for x in parsed)
    assert any(x.get("event_id") == res.event_id for x in parsed)
    assert any(x["message"] == "stopped" for x in parsed)
