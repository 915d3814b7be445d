"""A throwaway ``redis-server`` for tests: free loopback port, temp dir, no persistence.

Used by the ``redis_url`` fixtures. Order of preference: ``EXPLORANK_TEST_REDIS_URL`` (an
external server, e.g. the one ``.ci/run`` starts), else a private ``redis-server`` binary
started here, else the tests skip with a reason saying how to get one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ENV_URL = "EXPLORANK_TEST_REDIS_URL"
SKIP_REASON = (
    "no redis-server: install the Debian package redis-server (apt-get install redis-server) "
    f"or set {ENV_URL}=redis://host:port/db"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` child process; ``kill()`` sends SIGKILL (outage tests)."""

    def __init__(self, binary: str | None = None, *, persistent: bool = False) -> None:
        self.binary = binary or shutil.which("redis-server")
        if self.binary is None:
            raise FileNotFoundError(SKIP_REASON)
        self.dir = Path(tempfile.mkdtemp(prefix="explorank-redis-"))
        self.port = 0
        #: persistent: an append-only file fsynced on every write, so a stop and a start
        #: (on the same port, :meth:`restart`) keep every acknowledged write
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0, *, port: int | None = None) -> RedisServer:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        for _ in range(3):  # the port can be taken between free_port() and bind
            self.port = port or free_port()
            self.proc = subprocess.Popen(
                [
                    self.binary,  # type: ignore[list-item]
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--dir", str(self.dir),
                    "--save", "",
                    *persistence,
                    "--daemonize", "no",
                    "--logfile", str(self.dir / "redis.log"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _ping(self.port):
                    return self
                time.sleep(0.05)
            self.stop()
        log = (
            (self.dir / "redis.log").read_text(errors="replace")[-2000:]
            if (self.dir / "redis.log").exists()
            else ""
        )
        raise RuntimeError(f"redis-server did not start: {log}")

    def restart(self, timeout_s: float = 10.0) -> RedisServer:
        """Start again on the same port (after :meth:`stop` or :meth:`kill`)."""
        return self.start(timeout_s, port=self.port)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def external_url() -> str | None:
    return os.environ.get(ENV_URL) or None


def have_redis() -> bool:
    return bool(external_url() or shutil.which("redis-server"))
