"""A taken port is a one-line error naming the port and its setting, never a traceback."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from explorank.engine.pipeline import Engine
from explorank.engine.ports import check_port
from explorank.engine.server import Server
from explorank.errors import ConfigError
from explorank.launch import module_command
from tests.fp32_bundle import fp32_bundle_for
from tests.server_harness import free_port, make_config


@pytest.fixture(scope="session")
def fp32_bundle(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_catalog: Path
) -> Path:
    return fp32_bundle_for(tmp_path_factory, tiny_model_dir, tiny_catalog)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port with another process's listener on it (here: a plain socket)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        module_command("explorank", "serve", *args),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_serve_grpc_port_in_use_is_one_line(tmp_path: Path, taken_port: int) -> None:
    # No bundle is needed: the ports are checked before one is loaded or built.
    proc = _serve(
        tmp_path,
        "--bundle",
        str(tmp_path / "none"),
        "--port",
        str(taken_port),
        "--metrics-port",
        "0",
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == (
        f"explorank: error: port {taken_port} is already in use (server.port / --port); "
        "choose another port or stop the other process"
    )


def test_serve_metrics_port_in_use_is_one_line(tmp_path: Path, taken_port: int) -> None:
    proc = _serve(
        tmp_path,
        "--bundle",
        str(tmp_path / "none"),
        "--port",
        "0",
        "--metrics-port",
        str(taken_port),
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"explorank: error: port {taken_port} is already in use "
        "(server.metrics_port / --metrics-port); choose another port or stop the other process"
    )


def test_serve_same_port_twice_is_an_error(tmp_path: Path) -> None:
    port = str(free_port())
    proc = _serve(
        tmp_path, "--bundle", str(tmp_path / "none"), "--port", port, "--metrics-port", port
    )
    assert proc.returncode == 2
    assert "server.port and server.metrics_port are both" in proc.stderr


def test_check_port_passes_a_free_port_and_port_zero() -> None:
    check_port("127.0.0.1", free_port(), "server.port / --port")
    check_port("127.0.0.1", 0, "server.port / --port")


def test_check_port_sees_a_wildcard_listener() -> None:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = int(sock.getsockname()[1])
        with pytest.raises(ConfigError, match=f"port {port} is already in use"):
            check_port("127.0.0.1", port, "server.port / --port")


@pytest.mark.parametrize("which", ["port", "metrics_port"])
def test_server_start_names_the_port_when_taken_after_the_check(
    which: str, fp32_bundle: Path, tmp_path: Path, taken_port: int
) -> None:
    """The port may be taken between the CLI's check and the bind: same error from start()."""
    server_section = {"port": 0, "metrics_port": 0, which: taken_port}
    config = make_config(fp32_bundle, tmp_path / "state.db", server=server_section)
    setting = "server.port / --port" if which == "port" else "server.metrics_port / --metrics-port"

    async def go() -> None:
        server = Server(Engine.from_config(config))
        try:
            with pytest.raises(ConfigError) as exc:
                await server.start()
        finally:
            await server.stop(0)
        assert str(exc.value) == (
            f"port {taken_port} is already in use ({setting}); "
            "choose another port or stop the other process"
        )

    asyncio.run(go())
