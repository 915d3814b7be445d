"""``explorank serve``: load (or build) a bundle and serve it over gRPC."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from explorank.cli.connect import RefuseSecretFlag
from explorank.errors import ConfigError

log = logging.getLogger("explorank.serve")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bundle", type=Path, help="bundle directory (default: build/use the default bundle)"
    )
    p.add_argument(
        "--config",
        type=Path,
        help="TOML config file (every key with its default: examples/explorank.toml)",
    )
    p.add_argument("--host", help="listen address (default 127.0.0.1; 0.0.0.0 for all interfaces)")
    p.add_argument("--port", type=int, help="gRPC port (default 50051; 0 = any free port)")
    p.add_argument(
        "--metrics-port", type=int, help="Prometheus /metrics port (default 9464; 0 = off)"
    )
    p.add_argument("--backend", choices=["auto", "onnxruntime", "tensorrt"])
    p.add_argument("--provider", choices=["auto", "cpu", "cuda", "tensorrt"])
    p.add_argument("--precision", choices=["auto", "fp32", "int8", "fp16"])
    p.add_argument("--threads", type=int, help="encoder intra-op threads (default: CPUs available)")
    p.add_argument(
        "--lanes",
        help="encoder batches computed side by side under concurrent load, each with an "
        "equal share of the threads (default auto: 2 on a CPU with 2+ threads; backend.lanes)",
    )
    p.add_argument(
        "--max-batch-size", type=int, help="dynamic batching limit (1 disables batching)"
    )
    p.add_argument("--max-queue-delay-ms", type=float, help="how long a batch waits to fill")
    p.add_argument("--max-queue-size", type=int, help="pending requests before RESOURCE_EXHAUSTED")
    p.add_argument(
        "--max-queue-wait-ms",
        type=float,
        help="refuse a request predicted to wait longer for the encoder (default 250)",
    )
    p.add_argument("--scorer", help="default scorer (default mf)")
    p.add_argument("--policy", help="default policy (default epsilon_greedy)")
    p.add_argument("--store", help="state store plugin (default sqlite)")
    p.add_argument(
        "--state-dir",
        type=Path,
        help="directory of the sqlite state database state.db (default: $EXPLORANK_STATE_DIR, "
        "else $XDG_STATE_HOME/explorank, else ~/.local/state/explorank)",
    )
    p.add_argument(
        "--state-db", type=Path, help="sqlite state database file (wins over --state-dir)"
    )
    p.add_argument("--redis-url", help="Redis URL for --store redis")
    p.add_argument("--grace", type=float, help="graceful shutdown period in seconds")
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip bundle checksum verification (paths are still confined to the bundle)",
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help="hot-reload the bundle when its manifest changes (point --bundle at a symlink)",
    )
    p.add_argument(
        "--trusted-key",
        type=Path,
        action="append",
        metavar="PUB.pem",
        help="serve only a bundle whose manifest is signed by this ed25519 public key "
        "(repeatable; model.trusted_keys)",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="serving processes on the one port, each with an equal share of the CPUs "
        "(default 1; server.workers)",
    )
    p.add_argument("--port-file", type=Path, help="write the bound port here once SERVING")
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="text (default) or json: one JSON object per line (server.log_format)",
    )
    p.add_argument(
        "--tracing",
        action="store_true",
        help="OpenTelemetry spans per call, exported as the OTEL_* variables say "
        "(needs the otel extra; tracing.enabled)",
    )
    g = p.add_argument_group("TLS and authentication (docs/operations.md, Security)")
    g.add_argument("--tls-cert", type=Path, help="PEM server certificate chain: serve TLS")
    g.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    g.add_argument(
        "--tls-client-ca",
        type=Path,
        help="PEM CA that client certificates must chain to: mutual TLS",
    )
    g.add_argument(
        "--tokens-file",
        type=Path,
        help="TOML/JSON file of bearer tokens and their scopes (or set $EXPLORANK_TOKENS)",
    )
    g.add_argument("--token", "--tokens", action=RefuseSecretFlag)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, dict[str, Any]] = {}

    def put(section: str, key: str, value: Any) -> None:
        if value is not None:
            o.setdefault(section, {})[key] = value

    put("server", "host", args.host)
    put("server", "port", args.port)
    put("server", "metrics_port", args.metrics_port)
    put("server", "grace_s", args.grace)
    put("server", "workers", getattr(args, "workers", None))
    put("server", "log_format", getattr(args, "log_format", None))
    if getattr(args, "tracing", False):
        put("tracing", "enabled", True)
    for key, value in (
        ("cert", args.tls_cert),
        ("key", args.tls_key),
        ("client_ca", args.tls_client_ca),
    ):
        if value is not None:
            o.setdefault("server", {}).setdefault("tls", {})[key] = str(value)
    if args.tokens_file is not None:
        o.setdefault("server", {}).setdefault("auth", {})["tokens_file"] = str(args.tokens_file)
    put("model", "bundle", str(args.bundle) if args.bundle else None)
    if args.no_verify:
        put("model", "verify_checksums", False)
    if getattr(args, "watch", False):
        put("model", "watch", True)
    if args.trusted_key:
        put("model", "trusted_keys", [str(k) for k in args.trusted_key])
    put("backend", "backend", args.backend)
    put("backend", "provider", args.provider)
    put("backend", "precision", args.precision)
    put("backend", "intra_op_threads", args.threads)
    put("backend", "lanes", args.lanes)
    put("batching", "max_batch_size", args.max_batch_size)
    put("batching", "max_queue_delay_ms", args.max_queue_delay_ms)
    put("batching", "max_queue_wait_ms", args.max_queue_wait_ms)
    put("batching", "max_queue_size", args.max_queue_size)
    put("ranking", "default_scorer", args.scorer)
    put("ranking", "default_policy", args.policy)
    put("state", "store", args.store)
    put("state", "dir", str(args.state_dir) if args.state_dir else None)
    if args.state_db is not None:
        o.setdefault("state", {}).setdefault("options", {})["path"] = str(args.state_db)
    if args.redis_url is not None:
        o.setdefault("state", {}).setdefault("options", {})["url"] = args.redis_url
    return o


ORT_BUILDS = ("onnxruntime", "onnxruntime-gpu")


def onnxruntime_conflict(installed: Sequence[str] | None = None) -> str | None:
    """A warning when both ONNX Runtime builds are installed (``pip install explorank[gpu]``
    adds the CUDA build next to the default CPU one): they share the ``onnxruntime`` module,
    and whichever was installed last decides whether CUDA is available at all."""
    if installed is None:
        from importlib.metadata import PackageNotFoundError, version

        installed = []
        for dist in ORT_BUILDS:
            try:
                version(dist)
            except PackageNotFoundError:
                continue
            installed.append(dist)
    if set(ORT_BUILDS) <= set(installed):
        return (
            "both onnxruntime (CPU) and onnxruntime-gpu are installed; they share one module and "
            "the CPU build may hide CUDA. Keep one: pip uninstall -y onnxruntime onnxruntime-gpu "
            "&& pip install onnxruntime-gpu"
        )
    return None


def run(args: argparse.Namespace) -> int:
    from explorank.engine import heap, logformat, tracing
    from explorank.engine.config import load_config
    from explorank.engine.default_bundle import ensure_default_bundle
    from explorank.engine.pipeline import Engine
    from explorank.engine.ports import GRPC_PORT_SETTING, METRICS_PORT_SETTING, check_port
    from explorank.engine.security import ServerSecurity
    from explorank.engine.server import Server
    from explorank.engine.workers import pin_worker_cpus, worker_identity

    worker = worker_identity()
    if worker is not None:
        pin_worker_cpus()
    if args.log_format:
        logformat.configure(args.log_format)
    config = load_config(args.config, overrides=overrides_from_args(args))
    logformat.configure(config.server.log_format)
    # Before the (slow) bundle load: a taken port is a one-line error at once.
    sc = config.server
    if sc.port and sc.port == sc.metrics_port:
        raise ConfigError(
            f"server.port and server.metrics_port are both {sc.port}; choose two different ports"
        )
    if worker is None:  # a worker's siblings hold the port already (SO_REUSEPORT)
        check_port(sc.host, sc.port, GRPC_PORT_SETTING)
    if sc.metrics_port:
        check_port(sc.metrics_host, sc.metrics_port, METRICS_PORT_SETTING)
    # Certificates, keys and tokens are checked before the bundle too.
    security = ServerSecurity.from_config(sc)
    tc = config.tracing
    tracing.configure(tc.enabled, tc.exporter, tc.service_name)
    if tc.enabled:
        log.info("tracing: OpenTelemetry spans to the %s exporter", tc.exporter)
    if config.model.bundle is None:
        config.model.bundle = ensure_default_bundle(config.model.cache_dir)
    if worker is None and sc.workers > 1:
        return _run_workers(args, config)
    config.state.options = config.state.store_options()
    if worker is not None and config.state.store == "sqlite":
        config.state.options["shared"] = True  # siblings write the same file
    if "path" in config.state.options:
        log.info("state: %s %s", config.state.store, config.state.options["path"])
    conflict = onnxruntime_conflict()
    if conflict:
        log.warning(conflict)
    engine = Engine.from_config(config)

    async def main() -> None:
        server = Server(engine, security, reuse_port=worker is not None)
        server.install_signal_handlers()
        try:
            port = await server.start()
        except BaseException:
            await server.stop(0)
            raise
        if config.server.gc_freeze:
            heap.freeze()
        if args.port_file:
            args.port_file.write_text(str(port))
        if config.server.log_format == "text":  # in JSON mode the SERVING log line says it
            print(f"explorank serving on {config.server.host}:{port}", flush=True)
        await server.wait()

    try:
        asyncio.run(main())
    finally:
        tracing.disable()  # flushes the spans still buffered
    return 0


def _run_workers(args: argparse.Namespace, config: Any) -> int:
    """``--workers N``: supervise N ``explorank serve`` processes on one port."""
    from explorank.engine.ports import free_port
    from explorank.engine.workers import Supervisor, WorkerSpec, run_supervisor
    from explorank.launch import module_command

    sc = config.server
    port = sc.port or free_port(sc.host if sc.host not in ("", "0.0.0.0", "::") else "127.0.0.1")
    argv = list(getattr(args, "_argv", None) or [])
    if "serve" not in argv:
        raise ConfigError("--workers needs the serve command line (run it as `explorank serve`)")

    def command(spec: WorkerSpec) -> list[str]:
        return module_command(
            "explorank",
            *argv,
            "--workers",
            "1",
            "--port",
            str(port),
            "--metrics-port",
            str(spec.metrics_port if sc.metrics_port else 0),
            "--port-file",
            str(spec.port_file),
            "--bundle",
            str(config.model.bundle),
            "--threads",
            str(len(spec.cpus)),
        )

    supervisor = Supervisor(
        sc.workers,
        command,
        metrics_host=sc.metrics_host,
        metrics_port=sc.metrics_port,
        free_port=free_port,
        stop_timeout_s=sc.drain_s + sc.grace_s + 30.0,
    )
    log.info(
        "starting %d workers on %s:%d (CPUs: %s)",
        sc.workers,
        sc.host,
        port,
        " | ".join(",".join(map(str, w.cpus)) for w in supervisor.workers),
    )
    return run_supervisor(supervisor, port, args.port_file)
