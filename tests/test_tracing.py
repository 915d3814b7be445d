"""OpenTelemetry tracing, with the SDK's in-memory exporter: one SERVER span per call that
continues the caller's W3C traceparent, child spans per stage (tokenize, queue, encode, score,
policy, log) with batch size and padding on encode; errors marked; nothing imported or
recorded when off; the OTLP exporter chosen by the OTEL_* variables."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

import explorank.oip as oip  # noqa: E402
from explorank.engine import tracing  # noqa: E402
from explorank.errors import ConfigError  # noqa: E402
from explorank.v1 import ranker_pb2, ranker_pb2_grpc  # noqa: E402
from tests.server_harness import ThreadServer, make_config  # noqa: E402

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
STAGES = {"tokenize", "queue", "encode", "score", "policy", "log"}


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    tracing.enable(provider)
    try:
        yield exp
    finally:
        tracing.disable()


@pytest.fixture(scope="module")
def srv(
    exporter: InMemorySpanExporter, tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ThreadServer]:
    tmp = tmp_path_factory.mktemp("tracing")
    batching = {"length_buckets": [64, 128], "max_batch_size": 8}
    with ThreadServer(make_config(tiny_bundle, tmp / "state.db", batching=batching)) as server:
        yield server


def _finished(exporter: InMemorySpanExporter, name: str, timeout: float = 5.0) -> list[Any]:
    """The finished spans named ``name`` (an aborted call's span ends just after its status
    reaches the client, so wait a little for it)."""
    end = time.monotonic() + timeout
    while True:
        spans = [s for s in exporter.get_finished_spans() if s.name == name]
        if spans or time.monotonic() > end:
            return spans
        time.sleep(0.01)


def _spans_of_trace(exporter: InMemorySpanExporter, trace_id: int) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]


def test_rank_span_continues_the_callers_trace_with_a_child_per_stage(
    srv: ThreadServer, exporter: InMemorySpanExporter
) -> None:
    exporter.clear()
    stub = ranker_pb2_grpc.RankerStub(srv.channel())
    ids = [it.id for it in srv.engine.bundle.items[:8]]
    resp = stub.Rank(
        ranker_pb2.RankRequest(
            user_id="u-trace",
            context_text="a unique context for the tracing test: river and mountain",
            candidates=[ranker_pb2.Candidate(item_id=i) for i in ids],
            top_k=3,
        ),
        metadata=(("traceparent", TRACEPARENT),),
        timeout=20,
    )
    (rpc,) = _finished(exporter, "explorank.v1.Ranker/Rank")
    spans = _spans_of_trace(exporter, int(TRACE_ID, 16))
    assert rpc.kind == SpanKind.SERVER
    assert rpc.parent is not None and rpc.parent.span_id == int(PARENT_ID, 16)  # the caller's
    assert rpc.attributes["rpc.system"] == "grpc"
    assert rpc.attributes["rpc.method"] == "Rank"
    assert rpc.attributes["rpc.grpc.status_code"] == 0
    assert rpc.attributes["explorank.event_id"] == resp.event_id
    children = [
        s for s in spans if s.parent is not None and s.parent.span_id == rpc.context.span_id
    ]
    assert {s.name for s in children} == STAGES
    for child in children:
        assert rpc.start_time <= child.start_time <= child.end_time <= rpc.end_time, child.name
    (encode,) = [s for s in children if s.name == "encode"]
    assert encode.attributes["explorank.batch_size"] >= 1
    assert encode.attributes["explorank.sequences"] == 1  # the user context
    assert 0 < encode.attributes["explorank.padding_efficiency"] <= 1
    assert (
        encode.attributes["explorank.padded_tokens"] >= encode.attributes["explorank.real_tokens"]
    )
    (score,) = [s for s in children if s.name == "score"]
    assert score.attributes["explorank.candidates"] == len(ids)


def test_an_error_marks_the_span(srv: ThreadServer, exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    stub = ranker_pb2_grpc.RankerStub(srv.channel())
    with pytest.raises(grpc.RpcError):
        stub.Rank(
            ranker_pb2.RankRequest(top_k=10**6),
            metadata=(("traceparent", TRACEPARENT),),
            timeout=10,
        )
    (rpc,) = _finished(exporter, "explorank.v1.Ranker/Rank")
    assert rpc.status.status_code == StatusCode.ERROR
    assert rpc.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "top_k" in (rpc.status.description or "")


def test_oip_encoder_spans_count_every_text(
    srv: ThreadServer, exporter: InMemorySpanExporter
) -> None:
    exporter.clear()
    req = oip.ModelInferRequest(model_name="encoder")
    texts = [b"short", b"a much longer text " * 12, b"a medium length text about the sea"]
    t = req.inputs.add(name="TEXT", datatype="BYTES", shape=[len(texts)])
    t.contents.bytes_contents.extend(texts)
    oip.stub(srv.channel()).ModelInfer(req, timeout=20)  # no traceparent: a new trace
    (rpc,) = _finished(exporter, "inference.GRPCInferenceService/ModelInfer")
    spans = exporter.get_finished_spans()
    assert rpc.parent is None
    mine = [s for s in spans if s.parent is not None and s.parent.span_id == rpc.context.span_id]
    encodes = [s for s in mine if s.name == "encode"]
    assert sum(s.attributes["explorank.sequences"] for s in encodes) == len(texts)
    assert {s.name for s in mine} == {"tokenize", "queue", "encode"}


def test_off_imports_nothing_and_records_nothing() -> None:
    script = (
        "import sys\n"
        "import explorank.engine.server, explorank.cli.serve, explorank.engine.batcher\n"
        "from explorank.engine import tracing\n"
        "assert not tracing.enabled()\n"
        "assert tracing.stage('x') is tracing.stage('y')\n"  # one shared no-op
        "assert tracing.capture() is None\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_otlp_exporter_follows_the_otel_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    saved = (tracing._tracer, tracing._provider)
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "ranker-eu")
        tracing.configure(True, "otlp", "explorank")
        provider = tracing._provider
        assert provider.resource.attributes["service.name"] == "ranker-eu"
        processors = provider._active_span_processor._span_processors
        assert type(processors[0].span_exporter).__module__.endswith("proto.http.trace_exporter")
        tracing.disable()
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        monkeypatch.delenv("OTEL_SERVICE_NAME")
        tracing.configure(True, "otlp", "explorank-test")
        assert tracing._provider.resource.attributes["service.name"] == "explorank-test"
        processors = tracing._provider._active_span_processor._span_processors
        assert type(processors[0].span_exporter).__module__.endswith("proto.grpc.trace_exporter")
        tracing.disable()
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
        with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL='carrier-pigeon'"):
            tracing.configure(True, "otlp")
        monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
        with pytest.raises(ConfigError, match=r"pip install 'explorank\[otel\]'"):
            tracing.configure(True, "console")
        tracing.configure(False)  # off: nothing happens, nothing needed
        assert not tracing.enabled()
    finally:
        tracing._tracer, tracing._provider = saved


def test_serve_flag_and_config_key() -> None:
    import argparse

    from explorank.cli.serve import add_arguments, overrides_from_args
    from explorank.engine.config import load_config

    p = argparse.ArgumentParser()
    add_arguments(p)
    over = overrides_from_args(p.parse_args(["--tracing", "--log-format", "json"]))
    assert over["tracing"] == {"enabled": True}
    assert over["server"]["log_format"] == "json"
    cfg = load_config(environ={"EXPLORANK__TRACING__ENABLED": "true"})
    assert cfg.tracing.enabled and cfg.tracing.exporter == "otlp"
    assert not load_config(environ={}).tracing.enabled
