"""TLS settings and files without a server: a bad file is one clear error naming the setting or
flag (exit 2 from the CLI); the exposure warning; loopback detection. Certificates are made at
run time (tests/tls_certs.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from explorank.cli import main
from explorank.engine.config import ServerConfig, TlsConfig, load_config
from explorank.engine.security import (
    ServerSecurity,
    channel_credentials,
    exposure_warnings,
    is_loopback,
    server_credentials,
)
from explorank.errors import ConfigError
from tests.tls_certs import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_tls_is_off_by_default_and_metrics_stay_on_loopback() -> None:
    sc = load_config(environ={}).server
    assert sc.tls.cert is None and sc.auth.tokens_file is None
    assert sc.metrics_host == "127.0.0.1" and sc.host == "127.0.0.1"
    security = ServerSecurity.from_config(sc, environ={})
    assert security.credentials is None and security.tokens is None
    assert security.interceptors() == []
    assert security.describe() == "plaintext, no authentication"


def test_server_credentials_for_tls_and_mutual_tls(pki: Pki) -> None:
    tls = TlsConfig(cert=pki.server.cert, key=pki.server.key)
    assert server_credentials(tls) is not None
    sc = ServerConfig(tls={"cert": pki.server.cert, "key": pki.server.key, "client_ca": pki.ca})
    assert ServerSecurity.from_config(sc, environ={}).describe() == "mutual TLS, no authentication"
    sc.tls.require_client_cert = False
    assert (
        "client certificates verified when sent"
        in ServerSecurity.from_config(sc, environ={}).describe()
    )
    assert channel_credentials(pki.ca, pki.client.cert, pki.client.key) is not None
    assert channel_credentials(pki.ca) is not None


def test_cert_and_key_go_together_and_client_ca_needs_them(pki: Pki) -> None:
    for server in (
        {"tls": {"cert": str(pki.server.cert)}},
        {"tls": {"key": str(pki.server.key)}},
    ):
        with pytest.raises(ConfigError, match=r"server.tls.cert and server.tls.key .* together"):
            load_config(environ={}, overrides={"server": server})
    with pytest.raises(ConfigError, match=r"client_ca \(--tls-client-ca\) needs"):
        load_config(environ={}, overrides={"server": {"tls": {"client_ca": str(pki.ca)}}})
    env = {"EXPLORANK__SERVER__TLS__CERT": str(pki.server.cert)}
    with pytest.raises(ConfigError, match="go together"):
        load_config(environ=env)
    with pytest.raises(ConfigError, match=r"did you mean 'server.tls.client_ca'\?"):
        load_config(environ={}, overrides={"server": {"tls": {"client_cas": "x"}}})


def _encrypted(pki: Pki, out: Path) -> Path:
    key = serialization.load_pem_private_key(pki.server.key.read_bytes(), None)
    path = out / "encrypted.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    return path


def test_bad_server_files_name_the_setting(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    cases = [
        ({"cert": missing, "key": pki.server.key}, "cannot read .*missing.pem .*--tls-cert"),
        ({"cert": pki.server.cert, "key": missing}, "cannot read .*missing.pem .*--tls-key"),
        ({"cert": pki.server.key, "key": pki.server.key}, "not a PEM certificate .*--tls-cert"),
        ({"cert": pki.server.cert, "key": pki.server.cert}, "not a PEM private key .*--tls-key"),
        ({"cert": pki.server.cert, "key": pki.client.key}, "is not the private key of"),
        ({"cert": pki.server.cert, "key": _encrypted(pki, tmp_path)}, "is encrypted .*--tls-key"),
        (
            {"cert": pki.server.cert, "key": pki.server.key, "client_ca": pki.server.key},
            "not a PEM CA certificate bundle .*--tls-client-ca",
        ),
        (
            {"cert": pki.server.cert, "key": pki.server.key, "client_ca": missing},
            "cannot read .*--tls-client-ca",
        ),
    ]
    for tls, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            server_credentials(TlsConfig(**tls))


def test_bad_client_files_name_the_flag(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--tls-ca"):
        channel_credentials(tmp_path / "missing.crt")
    with pytest.raises(ConfigError, match="--tls-cert and --tls-key"):
        channel_credentials(pki.ca, pki.client.cert, None)
    with pytest.raises(ConfigError, match="is not the private key of .*--tls-key"):
        channel_credentials(pki.ca, pki.client.cert, pki.server.key)


def _serve_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "serve",
        "--bundle",
        str(tmp_path / "no-bundle-needed"),
        "--port",
        "0",
        "--metrics-port",
        "0",
        *extra,
    ]


def test_serve_with_a_bad_tls_file_exits_2_before_loading(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checked before the bundle (which does not exist here): one line naming the flag."""
    args = _serve_args(
        tmp_path, "--tls-cert", str(tmp_path / "nope.crt"), "--tls-key", str(pki.server.key)
    )
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "(server.tls.cert / --tls-cert)" in err
    assert main(_serve_args(tmp_path, "--tls-client-ca", str(pki.ca))) == 2
    assert "--tls-client-ca) needs" in capsys.readouterr().err
    token = "t" * 32
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({token: ["rank", "sudo"]}))
    assert main(_serve_args(tmp_path, "--tokens-file", str(tokens))) == 2
    err = capsys.readouterr().err
    assert "unknown scope(s) ['sudo']" in err and token not in err


def test_client_commands_with_bad_files_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["info", "--address", "127.0.0.1:1", "--timeout", "1"]
    assert main([*base, "--tls-ca", str(tmp_path / "ca.crt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "(--tls-ca)" in err
    assert main([*base, "--token-file", str(tmp_path / "token")]) == 2
    assert "(--token-file)" in capsys.readouterr().err
    (tmp_path / "empty").write_text("\n")
    assert main([*base, "--token-file", str(tmp_path / "empty")]) == 2
    assert "(--token-file) is empty" in capsys.readouterr().err


def test_there_is_no_token_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """A token on the command line would show in ps and shell histories: refused (not taken
    as an abbreviation of --token-file), without echoing it."""
    secret = "x" * 32
    for args in (["rank", "--token", secret], ["serve", "--tokens", secret], ["serve", "--token"]):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "is not accepted: a secret on the command line" in err and secret not in err


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("[::]", False),
        ("", False),
        ("10.0.0.5", False),
        ("ranker.internal", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_exposure_warnings() -> None:
    local = ServerConfig()
    assert exposure_warnings(local, tls=False, auth=False) == []
    exposed = ServerConfig(host="0.0.0.0")
    (both,) = exposure_warnings(exposed, tls=False, auth=False)
    assert "0.0.0.0 (not loopback)" in both and "no TLS" in both and "no authentication" in both
    (no_tls,) = exposure_warnings(exposed, tls=False, auth=True)
    assert "no TLS" in no_tls and "no authentication" not in no_tls
    (no_auth,) = exposure_warnings(exposed, tls=True, auth=False)
    assert "no authentication" in no_auth and "no TLS" not in no_auth
    assert exposure_warnings(exposed, tls=True, auth=True) == []
    metrics = ServerConfig(metrics_host="0.0.0.0")
    (line,) = exposure_warnings(metrics, tls=True, auth=True)
    assert "metrics endpoint on 0.0.0.0:9464" in line
    assert (
        exposure_warnings(ServerConfig(metrics_host="0.0.0.0", metrics_port=0), tls=True, auth=True)
        == []
    )


def test_client_tls_and_token_arguments(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    from explorank.engine.client import RankerClient, _host

    secret = "c" * 40
    with caplog.at_level(logging.WARNING):
        RankerClient("10.1.2.3:50051", token=secret).close()  # channels connect lazily
        RankerClient("localhost:50051", token=secret).close()
        RankerClient("10.1.2.3:50051", tls_ca=pki.ca, token=secret).close()
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "bearer token to 10.1.2.3:50051 without TLS" in warning and secret not in caplog.text
    with pytest.raises(ConfigError, match="visible ASCII") as err:
        RankerClient("localhost:1", token="two words " + secret)
    assert secret not in str(err.value)
    with pytest.raises(ConfigError, match="either a channel or TLS"):
        RankerClient(channel=grpc.insecure_channel("localhost:1"), tls=True)
    assert RankerClient("localhost:1", tls_server_name="ranker.internal").tls
    hosts = ("h:1", "[::1]:2", "dns:///ranker.internal:3", "127.0.0.1:4", "ipv4:10.0.0.1:5")
    hosts += ("unix:/run/explorank.sock", "ipv6:[::1]:6")
    assert [_host(a) for a in hosts] == [
        "h",
        "::1",
        "ranker.internal",
        "127.0.0.1",
        "10.0.0.1",
        "localhost",
        "::1",
    ]
