"""OpenTelemetry tracing (the ``otel`` extra), off by default.

With ``tracing.enabled`` (``explorank serve --tracing``) every call to explorank's services
gets a SERVER span named ``<service>/<method>`` (``explorank.v1.Ranker/Rank``,
``inference.GRPCInferenceService/ModelInfer``), continuing the caller's trace when the call
carries a W3C ``traceparent`` in its gRPC metadata, with child spans for the stages the
Prometheus histogram ``explorank_stage_seconds`` times:

- ``tokenize``: the tokenizer thread (attribute ``explorank.texts``);
- ``queue``: waiting in the dynamic batcher, per request and batch it joined;
- ``encode``: the encoder batch the request was part of, with ``explorank.batch_size``,
  ``explorank.padded_length``, ``explorank.real_tokens``, ``explorank.padded_tokens``,
  ``explorank.padding_efficiency`` and ``explorank.sequences`` (this request's share);
- ``score`` and ``policy``: the scorer and the policy plugin, on the decider's thread;
- ``log``: writing the event to the state store.

The RPC span carries ``rpc.system``, ``rpc.service``, ``rpc.method``,
``rpc.grpc.status_code`` and, once known, ``explorank.event_id``.

Spans go to an OTLP exporter configured by the standard variables (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``_TRACES_ENDPOINT``,
``OTEL_EXPORTER_OTLP_PROTOCOL`` = ``grpc`` or ``http/protobuf``, ``OTEL_EXPORTER_OTLP_HEADERS``,
``OTEL_TRACES_SAMPLER`` / ``_ARG``, ``OTEL_BSP_*``), or to the console
(``tracing.exporter = "console"``). Incoming ``traceparent`` is read with the propagators of
``OTEL_PROPAGATORS`` (default W3C trace context and baggage).

Off, nothing of OpenTelemetry is imported, and every hook below is one check of a module
global (:func:`enabled`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

from explorank.errors import ConfigError

__all__ = [
    "configure",
    "current_ids",
    "disable",
    "enable",
    "enabled",
    "record",
    "rpc_span",
    "stage",
]

_tracer: Any = None
_provider: Any = None
_api: Any = None  # the opentelemetry.trace module, once enabled
_null = contextlib.nullcontext()


def enabled() -> bool:
    return _tracer is not None


def enable(provider: Any) -> None:
    """Trace with ``provider`` (an SDK ``TracerProvider``; tests pass one with an in-memory
    exporter). It is not installed as OpenTelemetry's global provider."""
    global _tracer, _provider, _api
    from opentelemetry import trace

    from explorank import __version__

    _api = trace
    _provider = provider
    _tracer = provider.get_tracer("explorank", __version__)


def disable(*, shutdown: bool = True) -> None:
    """Stop tracing; flush and shut down the provider's exporters first."""
    global _tracer, _provider
    provider, _tracer, _provider = _provider, None, None
    if provider is not None and shutdown:
        provider.shutdown()


def flush(timeout_ms: int = 5000) -> None:
    """Export the spans still buffered (at shutdown)."""
    if _provider is not None:
        _provider.force_flush(timeout_ms)


def configure(enabled: bool, exporter: str = "otlp", service_name: str = "explorank") -> None:
    """Set tracing up from ``[tracing]``: nothing when off; else an SDK provider with a batch
    processor and the exporter (OTLP from the ``OTEL_*`` variables, or the console)."""
    if not enabled:
        return
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as exc:
        raise ConfigError(
            f"tracing.enabled (--tracing) needs OpenTelemetry ({exc.name} is missing): "
            "pip install 'explorank[otel]'"
        ) from None
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    span_exporter: Any
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
    elif exporter == "otlp":
        span_exporter = _otlp_exporter()
    else:
        raise ConfigError(f"tracing.exporter: unknown exporter {exporter!r}; use otlp or console")
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    enable(provider)


def _otlp_exporter() -> Any:
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    modules = {
        "grpc": "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
        "http/protobuf": "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    }
    if protocol not in modules:
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use grpc or http/protobuf"
        )
    try:
        module = importlib.import_module(modules[protocol])
    except ImportError as exc:
        raise ConfigError(
            f"the OTLP exporter for {protocol} is not installed ({exc.name}): "
            "pip install 'explorank[otel]'"
        ) from None
    return module.OTLPSpanExporter()  # endpoint, headers, TLS, timeout: from the OTEL_* variables


# ------------------------------------------------------------------------------ spans


@contextlib.contextmanager
def rpc_span(service: str, method: str, metadata: Iterable[Any] | None) -> Iterator[Any]:
    """The SERVER span of one call, current for its duration; continues the trace of the
    caller's ``traceparent`` (gRPC metadata). Call only when :func:`enabled`."""
    from opentelemetry import propagate

    carrier = {}
    for key, value in metadata or ():
        if isinstance(value, str):
            carrier[key.lower()] = value
    parent = propagate.extract(carrier)
    with _tracer.start_as_current_span(
        f"{service}/{method}",
        context=parent,
        kind=_api.SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def finish(span: Any, code: Any, message: str = "") -> None:
    """Record a call's gRPC status on its span (errors other than client mistakes as ERROR)."""
    span.set_attribute("rpc.grpc.status_code", int(code.value[0]))
    if code.name != "OK":
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, f"{code.name}: {message}"[:200]))


def stage(name: str, **attributes: Any) -> Any:
    """A child span of the current one for a stage; a shared no-op when tracing is off."""
    if _tracer is None:
        return _null
    return _tracer.start_as_current_span(name, attributes=attributes or None)


def set_attribute(key: str, value: Any) -> None:
    if _tracer is not None:
        _api.get_current_span().set_attribute(key, value)


def capture() -> Any:
    """The current span, to parent spans recorded later from elsewhere (the batcher)."""
    if _tracer is None:
        return None
    span = _api.get_current_span()
    return span if span.get_span_context().is_valid else None


def mono_to_ns(t: float) -> int:
    """A ``time.monotonic()`` time as epoch nanoseconds (what spans are stamped with)."""
    return time.time_ns() - int((time.monotonic() - t) * 1e9)


def record(parent: Any, name: str, start_ns: int, end_ns: int, attributes: dict[str, Any]) -> None:
    """A finished child span of ``parent`` with explicit start and end times."""
    if _tracer is None or parent is None:
        return
    span = _tracer.start_span(
        name,
        context=_api.set_span_in_context(parent),
        start_time=start_ns,
        attributes=attributes,
    )
    span.end(end_time=end_ns)


def current_ids() -> dict[str, str]:
    """``trace_id`` and ``span_id`` of the current span (for JSON log lines)."""
    if _tracer is None:
        return {}
    ctx = _api.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}
