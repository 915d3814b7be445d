"""Server processes for ``bench serve`` (start, wait for health, stop) and /metrics scraping.

Each target runs as its own subprocess on a free loopback port (started so that the
current directory cannot shadow the installed package: :mod:`explorank.launch`); the
benchmark process is only the client. Start-up waits for the port file the server writes once SERVING
and then for the standard gRPC health check; stop is SIGTERM, then SIGKILL after a
grace period. Logs go to ``<workdir>/<name>.log`` and their tail is quoted when a
server fails to start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from explorank.errors import ExplorankError, InvalidArgumentError
from explorank.launch import module_command

__all__ = [
    "ManagedServer",
    "check_loopback",
    "explorank_command",
    "explorank_server",
    "free_port",
    "parse_metrics",
    "peer_command",
    "scrape_metrics",
    "triton_peer_command",
    "window_stats",
]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_loopback(address: str) -> str:
    """Accept only ``HOST:PORT`` on loopback: the benchmark never sends load elsewhere."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgumentError("--address", f"expected HOST:PORT, got {address!r}")
    if host not in LOOPBACK_HOSTS:
        raise InvalidArgumentError(
            "--address",
            f"{host!r} is not loopback; bench serve only sends load to 127.0.0.1 / localhost",
        )
    return address


def explorank_command(
    bundle: Path,
    workdir: Path,
    name: str,
    port_file: Path,
    metrics_port: int,
    *,
    max_batch_size: int | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    cmd = module_command(
        "explorank",
        "serve",
        "--bundle",
        str(bundle),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--metrics-port",
        str(metrics_port),
        "--state-db",
        str(workdir / f"{name}-state.db"),
    )
    if max_batch_size is not None:
        cmd += ["--max-batch-size", str(max_batch_size)]
    return cmd + list(extra)


def explorank_server(
    bundle: Path,
    workdir: Path,
    name: str,
    *,
    threads: int | None = None,
    extra: Sequence[str] = (),
) -> ManagedServer:
    """An ``explorank serve`` target with default settings (plus ``extra`` arguments) on a
    free loopback port, its /metrics on another."""
    port_file = workdir / f"{name}.port"
    mport = free_port()
    args = (["--threads", str(threads)] if threads else []) + list(extra)
    cmd = explorank_command(bundle, workdir, name, port_file, mport, extra=args)
    return ManagedServer(name, cmd, workdir, port_file, metrics_port=mport)


def triton_peer_command(
    python: str, bundle: Path, port_file: Path, metrics_port: int, threads: int | None = None
) -> list[str]:
    """The Triton dynamic-batching peer (a standalone script: ``python`` needs
    nvidia-pytriton, numpy, onnxruntime and tokenizers, not explorank)."""
    script = Path(__file__).with_name("peer_triton_server.py")
    cmd = [
        python,
        "-P",
        str(script),
        "--bundle",
        str(bundle),
        "--port",
        str(free_port()),
        "--http-port",
        str(free_port()),
        "--metrics-port",
        str(metrics_port),
        "--port-file",
        str(port_file),
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    return cmd


def peer_command(
    bundle: Path, model_dir: Path, port_file: Path, threads: int | None = None
) -> list[str]:
    cmd = module_command(
        "explorank.benchmarks.latency.peer_torch_server",
        "--bundle",
        str(bundle),
        "--model",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--port-file",
        str(port_file),
    )
    if threads:
        cmd += ["--threads", str(threads)]
    return cmd


class ManagedServer:
    """One server subprocess; use as a context manager so it is always stopped."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        workdir: Path,
        port_file: Path,
        *,
        metrics_port: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name, self.cmd, self.workdir, self.port_file = name, list(cmd), workdir, port_file
        self.metrics_port = metrics_port
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (the command starts Python directly)."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def metrics_url(self) -> str | None:
        return f"http://127.0.0.1:{self.metrics_port}/metrics" if self.metrics_port else None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def start(self, timeout_s: float = 180.0) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port_file.unlink(missing_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                last = self.log_tail(1).strip()
                raise ExplorankError(
                    f"{self.name} exited with code {self.proc.returncode} while starting"
                    f"{': ' + last if last else ''}\nlog tail:\n{self.log_tail()}"
                )
            text = self.port_file.read_text().strip() if self.port_file.exists() else ""
            if text.isdigit():
                time.sleep(0.05)  # the writer may not be done: accept only a stable value
                if self.port_file.read_text().strip() != text:
                    continue
                self.port = int(text)
                self._wait_healthy(end)
                return self.address
            time.sleep(0.1)
        self.stop()
        raise ExplorankError(
            f"{self.name} not ready after {timeout_s:.0f} s; log tail:\n{self.log_tail()}"
        )

    def _wait_healthy(self, end: float) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(self.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < end:
                try:
                    resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise ExplorankError(f"{self.name} never reported SERVING; log tail:\n{self.log_tail()}")

    def stop(self, grace_s: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def __enter__(self) -> ManagedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- metrics ---------------------------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {sample name: value summed over label sets}.

    Histogram samples keep their suffixes (``explorank_batch_size_sum``/``_count``),
    counters their ``_total`` name; ``_created`` timestamps are dropped.
    """
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            if sample.name.endswith("_bucket"):
                continue
            out[sample.name] = out.get(sample.name, 0.0) + float(sample.value)
    return out


def scrape_metrics(url: str, timeout_s: float = 5.0) -> dict[str, float]:
    if not url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
        raise InvalidArgumentError("--metrics-url", f"{url!r} is not a loopback http URL")
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - loopback only (checked)
        return parse_metrics(resp.read().decode("utf-8", "replace"))


def window_stats(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, Any]:
    """avg_batch_size and padding_efficiency for the window between two scrapes (None if idle)."""

    def delta(name: str) -> float:
        return float(after.get(name, 0.0)) - float(before.get(name, 0.0))

    if "nv_inference_exec_count_total" in after:  # Triton: inferences / batch executions
        execs = delta("nv_inference_exec_count_total")
        return {
            "avg_batch_size": delta("nv_inference_count_total") / execs if execs > 0 else None,
            "padding_efficiency": None,
            "batches": int(execs),
        }
    batches = delta("explorank_batch_size_count")
    computed = delta("explorank_tokens_computed_total")
    return {
        "avg_batch_size": delta("explorank_batch_size_sum") / batches if batches > 0 else None,
        "padding_efficiency": delta("explorank_tokens_real_total") / computed
        if computed > 0
        else None,
        "batches": int(batches),
    }
