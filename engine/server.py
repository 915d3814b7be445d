"""The gRPC server: a thin servicer over :class:`~explorank.engine.pipeline.Engine`, the
standard health service, server reflection, Prometheus metrics and graceful shutdown; TLS and
bearer tokens come from :mod:`~explorank.engine.security` and :mod:`~explorank.engine.auth`."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from explorank.engine import tracing
from explorank.engine.grpc_errors import OncePerKey, to_client
from explorank.engine.logformat import call_context
from explorank.engine.oip import SERVICE_NAME as OIP_SERVICE_NAME
from explorank.engine.oip import OipServicer, add_oip_service
from explorank.engine.pipeline import Engine
from explorank.engine.ports import GRPC_PORT_SETTING, METRICS_PORT_SETTING, bind_error, port_error
from explorank.engine.requests import CandidateInput, RankInput, RankOutput
from explorank.engine.security import ServerSecurity
from explorank.engine.workers import worker_identity
from explorank.errors import ConfigError, InvalidArgumentError, redact
from explorank.v1 import ranker_pb2, ranker_pb2_grpc

log = logging.getLogger("explorank.server")

SERVICE_NAME = ranker_pb2.DESCRIPTOR.services_by_name["Ranker"].full_name
#: A health service name that is SERVING for as long as the process serves at all (for
#: liveness probes: a Redis outage makes the server NOT_SERVING, not dead).
LIVENESS_SERVICE = "explorank.liveness"
ADMIN_SERVICE_NAME = ranker_pb2.DESCRIPTOR.services_by_name["Admin"].full_name
T = TypeVar("T")


def rank_input_from_proto(req: ranker_pb2.RankRequest) -> RankInput:
    return RankInput(
        user_id=req.user_id,
        context_text=req.context_text,
        history_item_ids=list(req.history_item_ids),
        candidates=[CandidateInput(c.item_id, c.text) for c in req.candidates],
        top_k=int(req.top_k),
        scorer=req.scorer,
        policy=req.policy,
        event_id=req.event_id,
        include_text=req.include_text,
    )


def rank_output_to_proto(out: RankOutput) -> ranker_pb2.RankResponse:
    return ranker_pb2.RankResponse(
        event_id=out.event_id,
        items=[
            ranker_pb2.RankedItem(
                item_id=i.item_id,
                score=i.score,
                propensity=i.propensity,
                explored=i.explored,
                text=i.text,
            )
            for i in out.items
        ],
        model_version=out.model_version,
        scorer=out.scorer,
        policy=out.policy,
    )


class Malformed:
    """A request body that could not be decoded (see :func:`add_service`)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _safe(decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception as exc:  # protobuf's DecodeError, or anything a bad body causes
            return Malformed(exc)

    return deserialize


def add_service(servicer: Any, server: grpc.aio.Server, name: str = "Ranker") -> None:
    """Register an explorank service like the generated ``add_*Servicer_to_server``, but
    with request decoders that never raise: a malformed body reaches the handler as
    :class:`Malformed` and is answered INVALID_ARGUMENT (gRPC would answer UNKNOWN with the
    decoder's text and log a traceback per request)."""
    service = ranker_pb2.DESCRIPTOR.services_by_name[name]
    handlers = {}
    for method in service.methods:
        request_cls = getattr(ranker_pb2, method.input_type.name)
        response_cls = getattr(ranker_pb2, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=_safe(request_cls.FromString),
            response_serializer=response_cls.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )


class _Servicer:
    """What every explorank servicer shares: one error map, one way to log faults, one span
    and one set of log fields per call."""

    #: The gRPC service the servicer implements (span names, the debug access log).
    service = ""

    def __init__(
        self, engine: Engine, log_once: OncePerKey | None = None, service: str | None = None
    ) -> None:
        self.engine = engine
        self._log_once = log_once or OncePerKey()
        if service is not None:
            self.service = service

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        """The call's deadline as a ``time.monotonic()`` time (``server.default_deadline_s``
        for calls that carry none)."""
        remaining = context.time_remaining()
        if remaining is None:
            remaining = self.engine.config.server.default_deadline_s
        return time.monotonic() + remaining

    async def _call(
        self,
        rpc: str,
        context: grpc.aio.ServicerContext,
        request: Any,
        fn: Callable[[], Awaitable[T]],
    ) -> T:
        with call_context():
            if not tracing.enabled():
                return await self._run(rpc, context, request, fn, None)
            with tracing.rpc_span(self.service, rpc, context.invocation_metadata()) as span:
                return await self._run(rpc, context, request, fn, span)

    async def _run(
        self,
        rpc: str,
        context: grpc.aio.ServicerContext,
        request: Any,
        fn: Callable[[], Awaitable[T]],
        span: Any,
    ) -> T:
        code = grpc.StatusCode.OK
        message = ""
        t0 = time.perf_counter()
        try:
            if isinstance(request, Malformed):
                self._log_once(
                    f"malformed {rpc}",
                    f"{rpc}: a request body could not be decoded "
                    f"({type(request.error).__name__}); answered INVALID_ARGUMENT",
                )
                raise InvalidArgumentError(
                    "request", f"the {rpc} request body is not a valid protobuf message"
                )
            return await fn()
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            out = to_client(exc)
            code, message = out.code, out.message
            if code == grpc.StatusCode.INTERNAL:
                self._report_internal(rpc, exc, out.error_id)
            await context.abort(code, out.message)
            raise  # abort raises; unreachable
        finally:
            self.engine.metrics.requests.labels(rpc, code.name).inc()
            if span is not None:
                tracing.finish(span, code, message)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s/%s %s in %.1f ms%s",
                    self.service,
                    rpc,
                    code.name,
                    (time.perf_counter() - t0) * 1000.0,
                    f": {message}" if message else "",
                )

    def _report_internal(self, rpc: str, exc: BaseException, error_id: str) -> None:
        """Log an INTERNAL once with its traceback (per plugin, or per exception type and
        place), then as rate-limited one-liners; every line carries the error id."""
        from explorank.engine.decision import PluginFailure

        if isinstance(exc, PluginFailure):
            key = f"plugin {exc.kind} {exc.name}"
        else:
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else "?"
            key = f"{type(exc).__name__} at {where}"
        self._log_once(key, f"{rpc} failed (error id {error_id}): {redact(str(exc))}", exc=exc)


class RankerServicer(_Servicer, ranker_pb2_grpc.RankerServicer):
    """``explorank.v1.Ranker``: Rank, Reward, GetInfo."""

    service = SERVICE_NAME

    async def Rank(
        self, request: ranker_pb2.RankRequest, context: grpc.aio.ServicerContext
    ) -> ranker_pb2.RankResponse:
        async def run() -> ranker_pb2.RankResponse:
            out = await self.engine.rank(
                rank_input_from_proto(request), deadline=self._deadline(context)
            )
            return rank_output_to_proto(out)

        return await self._call("Rank", context, request, run)

    async def Reward(
        self, request: ranker_pb2.RewardRequest, context: grpc.aio.ServicerContext
    ) -> ranker_pb2.RewardResponse:
        async def run() -> ranker_pb2.RewardResponse:
            out = await self.engine.reward(request.event_id, request.item_id, request.value)
            return ranker_pb2.RewardResponse(accepted=out.accepted, duplicate=out.duplicate)

        return await self._call("Reward", context, request, run)

    async def GetInfo(
        self, request: ranker_pb2.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> ranker_pb2.GetInfoResponse:
        async def run() -> ranker_pb2.GetInfoResponse:
            info = dict(self.engine.info())
            batching = ranker_pb2.BatchingInfo(**info.pop("batching"))
            gate = info.pop("int8_gate", None)
            if gate is not None:
                info["int8_gate"] = ranker_pb2.Int8Gate(**gate)
            info["unavailable_plugins"] = [
                ranker_pb2.PluginProblem(**p) for p in info.pop("unavailable_plugins")
            ]
            index, count = worker_identity() or (0, 1)
            return ranker_pb2.GetInfoResponse(
                batching=batching, worker_index=index, worker_count=count, **info
            )

        return await self._call("GetInfo", context, request, run)


class AdminServicer(_Servicer, ranker_pb2_grpc.AdminServicer):
    """``explorank.v1.Admin``: hot reload and catalog changes (the ``admin`` token scope)."""

    service = ADMIN_SERVICE_NAME

    async def Reload(
        self, request: ranker_pb2.ReloadRequest, context: grpc.aio.ServicerContext
    ) -> ranker_pb2.ReloadResponse:
        async def run() -> ranker_pb2.ReloadResponse:
            out = await self.engine.reload(request.bundle or None)
            return ranker_pb2.ReloadResponse(**out)

        return await self._call("Reload", context, request, run)

    async def AddItems(
        self, request: ranker_pb2.AddItemsRequest, context: grpc.aio.ServicerContext
    ) -> ranker_pb2.CatalogChangeResponse:
        async def run() -> ranker_pb2.CatalogChangeResponse:
            items = [(i.item_id, i.text) for i in request.items]
            return ranker_pb2.CatalogChangeResponse(**await self.engine.add_items(items))

        return await self._call("AddItems", context, request, run)

    async def RemoveItems(
        self, request: ranker_pb2.RemoveItemsRequest, context: grpc.aio.ServicerContext
    ) -> ranker_pb2.CatalogChangeResponse:
        async def run() -> ranker_pb2.CatalogChangeResponse:
            out = await self.engine.remove_items(list(request.item_ids))
            return ranker_pb2.CatalogChangeResponse(**out)

        return await self._call("RemoveItems", context, request, run)


def reflection_pool() -> Any:
    """One descriptor pool with every served service, for server reflection: explorank's own
    and the standard ones live in protobuf's default pool, the Open Inference Protocol in
    :mod:`explorank.oip`'s private pool (see there why)."""
    from google.protobuf import descriptor_pb2, descriptor_pool
    from grpc_reflection.v1alpha import reflection_pb2

    import explorank.oip as oip

    pool = descriptor_pool.DescriptorPool()
    for data in oip.FILES:
        pool.AddSerializedFile(data)
    seen: set[str] = set()

    def add(file: Any) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dep in file.dependencies:
            add(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.AddSerializedFile(proto.SerializeToString())

    for file in (ranker_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
        add(file)
    return pool


def manifest_signature(bundle_dir: Any) -> tuple[str, int, int] | None:
    """(resolved path, mtime, size) of a bundle's manifest, None when unreadable."""
    from pathlib import Path

    try:
        path = (Path(bundle_dir) / "manifest.json").resolve()
        st = path.stat()
    except OSError:
        return None
    return (str(path), st.st_mtime_ns, st.st_size)


class Server:
    """Owns the grpc.aio server, the health servicer and the engine's lifecycle."""

    def __init__(
        self, engine: Engine, security: ServerSecurity | None = None, *, reuse_port: bool = False
    ) -> None:
        self.engine = engine
        sc = engine.config.server
        # TLS credentials and bearer tokens ([server.tls], [server.auth]); ConfigError if bad
        self.security = security or ServerSecurity.from_config(sc)
        max_bytes = sc.max_message_mb * 1024 * 1024
        self.grpc_server = grpc.aio.server(
            interceptors=self.security.interceptors(engine.metrics.requests),
            maximum_concurrent_rpcs=sc.max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", max_bytes),
                ("grpc.max_send_message_length", max_bytes),
                # off, so a port in use is an error; on for `serve --workers` siblings
                ("grpc.so_reuseport", 1 if reuse_port else 0),
            ],
        )
        self.health = health.aio.HealthServicer()
        log_once = OncePerKey()
        add_service(RankerServicer(engine, log_once), self.grpc_server, "Ranker")
        add_service(AdminServicer(engine, log_once), self.grpc_server, "Admin")
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        services = [SERVICE_NAME, ADMIN_SERVICE_NAME]
        if sc.oip:
            shared = _Servicer(engine, log_once, OIP_SERVICE_NAME)
            add_oip_service(
                OipServicer(engine, self.ready, shared._call, shared._deadline),
                self.grpc_server,
                _safe,
            )
            services.append(OIP_SERVICE_NAME)
        services += [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        reflection.enable_server_reflection(
            (*services, reflection.SERVICE_NAME), self.grpc_server, pool=reflection_pool()
        )
        self.port = 0
        self._metrics_server: Any = None
        self._stopped = asyncio.Event()
        self._stopping = False
        self._serving: bool | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None

    def ready(self) -> bool:
        """What health reports: SERVING (Rank can be served now, not shutting down)."""
        return self._serving is True and not self._stopping

    async def _set_health(self, status: Any) -> None:
        await self.health.set("", status)
        await self.health.set(SERVICE_NAME, status)

    async def start(self) -> int:
        sc = self.engine.config.server
        self.port = self._add_port(sc.host, sc.port)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await self.grpc_server.start()
        log.info(
            "gRPC listening on %s:%d (%s; warming up)", sc.host, self.port, self.security.describe()
        )
        for warning in self.security.warnings(sc):
            log.warning(warning)
        if sc.metrics_port:
            try:
                self._metrics_server = self.engine.metrics.serve_http(
                    sc.metrics_port, sc.metrics_host
                )
            except OSError as exc:
                raise port_error(
                    sc.metrics_host, sc.metrics_port, METRICS_PORT_SETTING, exc
                ) from None
            log.info("metrics on http://%s:%d/metrics", sc.metrics_host, sc.metrics_port)
        await self.engine.start()
        await self._update_health()
        self._health_task = asyncio.create_task(self._health_loop(), name="explorank-health")
        if self.engine.config.model.watch:
            self._watch_task = asyncio.create_task(self._watch_loop(), name="explorank-watch")
        info = self.engine.info()
        log.info(
            "SERVING %s (%s) on %s:%d backend=%s provider=%s precision=%s (%s) catalog=%d",
            info["model_name"],
            info["model_version"],
            sc.host,
            self.port,
            info["backend"],
            info["execution_provider"],
            info["precision"],
            info["precision_reason"],
            info["catalog_size"],
        )
        return self.port

    async def _update_health(self) -> bool:
        """Health = whether Rank can be served now (:meth:`Engine.check_health`)."""
        ok, why = await self.engine.check_health()
        if self._stopping:
            return False
        if ok != self._serving:
            if self._serving is not None:
                if ok:
                    log.warning("health: SERVING again")
                else:
                    log.error("health: NOT_SERVING (%s)", why)
            self._serving = ok
            self.engine.metrics.ready.set(1 if ok else 0)
            await self._set_health(
                health_pb2.HealthCheckResponse.SERVING
                if ok
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
        return ok

    async def _health_loop(self) -> None:
        interval = self.engine.config.server.health_interval_s
        while not self._stopping:
            await asyncio.sleep(interval)
            try:
                await self._update_health()
            except Exception:  # never let the probe die: health would freeze
                log.exception("health check failed")

    async def _watch_loop(self) -> None:
        """``model.watch``: reload when the bundle's manifest changes (followed through a
        symlink). A refused bundle is not retried until its manifest changes again."""
        mc = self.engine.config.model
        assert mc.bundle is not None
        seen = manifest_signature(mc.bundle)
        while not self._stopping:
            await asyncio.sleep(mc.watch_interval_s)
            current = manifest_signature(mc.bundle)
            if current == seen or current is None:
                continue
            seen = current
            log.info("watch: the bundle at %s changed; reloading", mc.bundle)
            try:
                await self.engine.reload()
            except Exception as exc:
                log.error("watch: the new bundle was refused; still serving the old one: %s", exc)

    def _add_port(self, host: str, port: int) -> int:
        """Bind the gRPC port; a failure is a :class:`ConfigError` naming the setting."""
        credentials = self.security.credentials
        try:
            if credentials is not None:
                bound = self.grpc_server.add_secure_port(f"{host}:{port}", credentials)
            else:
                bound = self.grpc_server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:  # grpcio >= 1.50 raises where it used to return 0
            bound = 0
        if bound == 0:
            exc = bind_error(host, port)
            if exc is not None:
                raise port_error(host, port, GRPC_PORT_SETTING, exc)
            raise ConfigError(f"cannot listen on {host}:{port} ({GRPC_PORT_SETTING})")
        return int(bound)

    async def stop(self, grace_s: float | None = None) -> None:
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        sc = self.engine.config.server
        grace = sc.grace_s if grace_s is None else grace_s
        # SIGTERM/SIGINT (no explicit grace) drains; a programmatic stop(grace) does not
        drain = sc.drain_s if grace_s is None else 0.0
        for task in (self._health_task, self._watch_task):
            if task is not None:
                task.cancel()
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.engine.metrics.ready.set(0)
        if drain > 0 and self.engine.ready:
            # Health says NOT_SERVING while calls are still served: load balancers and
            # Kubernetes readiness probes move traffic away before the listener closes.
            log.info("draining for %.1f s (NOT_SERVING, still serving)", drain)
            await asyncio.sleep(drain)
        log.info("shutting down (in-flight calls get %.1f s)", grace)
        self.engine.accepting = False
        await self.grpc_server.stop(grace)
        await self.engine.stop(grace)
        if self._metrics_server is not None:
            server = (
                self._metrics_server[0]
                if isinstance(self._metrics_server, tuple)
                else self._metrics_server
            )
            shutdown = getattr(server, "shutdown", None)
            if shutdown:
                shutdown()
        if tracing.enabled():
            tracing.flush()
        self._stopped.set()
        log.info("stopped")

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: drain and stop; SIGHUP: reload the configured bundle."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self.stop()))
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self._reload()))

    async def _reload(self) -> None:
        if self._stopping:
            return
        log.info("SIGHUP: reloading %s", self.engine.config.model.bundle)
        try:
            await self.engine.reload()
        except Exception as exc:
            log.error("SIGHUP: the bundle was refused; still serving the old one: %s", exc)

    async def wait(self) -> None:
        await self._stopped.wait()
