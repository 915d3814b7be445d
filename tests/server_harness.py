"""Run a real explorank gRPC server for tests: in a background thread (fast) or as a
subprocess (for signal and crash tests)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc

from explorank.engine.config import Config, load_config
from explorank.engine.pipeline import Engine
from explorank.engine.server import Server
from explorank.launch import module_command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(bundle: Path, state_db: Path, **sections: Mapping[str, Any]) -> Config:
    over: dict[str, Any] = {
        "model": {"bundle": str(bundle)},
        "server": {"port": 0, "metrics_port": 0, "grace_s": 2.0},
        "state": {"options": {"path": str(state_db)}},
        "batching": {"max_queue_delay_ms": 3.0, "max_batch_size": 16},
    }
    for key, value in sections.items():
        over[key] = {**over.get(key, {}), **value}
    return load_config(environ={}, overrides=over)


class ThreadServer:
    """An in-process server on its own event loop thread."""

    def __init__(self, config: Config, **engine_kwargs: Any) -> None:
        self.config = config
        self.engine = Engine.from_config(config, **engine_kwargs)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: Server | None = None
        self.port = 0

    def run(self, coro: Any, timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> ThreadServer:
        self.thread.start()

        async def start() -> int:
            self.server = Server(self.engine)
            return await self.server.start()

        self.port = self.run(start())
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        self.run(self.server.stop(1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class ProcessServer:
    """``explorank serve`` in a subprocess; ``port`` is known once it is SERVING."""

    def __init__(
        self,
        args: list[str],
        workdir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.port_file = workdir / f"port-{time.monotonic_ns()}"
        self.log_path = workdir / f"server-{time.monotonic_ns()}.log"
        cmd = module_command(
            "explorank",
            "serve",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--port-file",
            str(self.port_file),
            *args,
        )
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
        self.log = open(self.log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd
        )
        self.port = 0

    def wait_ready(self, timeout: float = 120.0) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            if self.port_file.exists() and self.port_file.read_text().strip():
                self.port = int(self.port_file.read_text())
                return self.port
            time.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.output()}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.log.close()

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return int(self.proc.returncode)
