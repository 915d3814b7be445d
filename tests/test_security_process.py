"""``explorank serve --tls-cert --tls-key --tls-client-ca --tokens-file`` in a subprocess:
mutual TLS refuses clients without a certificate or with one from another CA, and the CLI
client gets in with its certificate and token."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from explorank.cli import main
from explorank.engine.client import RankerClient
from explorank.errors import UnavailableError
from tests.server_harness import ProcessServer
from tests.tls_certs import Pki, make_pki

pytestmark = pytest.mark.slow

TOKEN = "mtls-client-token-0123456789abcdef01234"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("token") / "client.token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture(scope="module")
def mtls(
    tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory, pki: Pki
) -> Iterator[ProcessServer]:
    tmp = tmp_path_factory.mktemp("mtls")
    tokens = tmp / "tokens.json"
    tokens.write_text(json.dumps({TOKEN: ["rank", "reward"]}))
    tokens.chmod(0o600)
    args = [
        "--bundle",
        str(tiny_bundle),
        "--state-db",
        str(tmp / "state.db"),
        "--max-batch-size",
        "4",
        "--tls-cert",
        str(pki.server.cert),
        "--tls-key",
        str(pki.server.key),
        "--tls-client-ca",
        str(pki.ca),
        "--tokens-file",
        str(tokens),
    ]
    server = ProcessServer(args, tmp)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_mtls_client_without_a_certificate_is_refused(mtls: ProcessServer, pki: Pki) -> None:
    client = RankerClient(mtls.address, tls_ca=pki.ca, token=TOKEN, timeout=5)
    with client, pytest.raises(UnavailableError, match="mutual-TLS server closes"):
        client.rank(top_k=1)


def test_mtls_client_with_a_certificate_from_another_ca_is_refused(
    mtls: ProcessServer, pki: Pki
) -> None:
    cert, key = pki.rogue_client.cert, pki.rogue_client.key
    client = RankerClient(
        mtls.address, tls_ca=pki.ca, tls_cert=cert, tls_key=key, token=TOKEN, timeout=5
    )
    with client, pytest.raises(UnavailableError, match="mutual-TLS server closes"):
        client.rank(top_k=1)


def test_mtls_client_with_a_good_certificate_gets_in(
    mtls: ProcessServer, pki: Pki, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client.cert)]
    tls += ["--tls-key", str(pki.client.key)]
    args = ["rank", "--address", mtls.address, *tls, "--token-file", str(token_file)]
    assert main([*args, "--top-k", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["items"]) == 2
    reward = ["reward", "--address", mtls.address, *tls, "--token-file", str(token_file)]
    reward += ["--event-id", res["event_id"], "--item", res["items"][0]["item_id"]]
    assert main([*reward, "--value", "1"]) == 0
    # the certificate alone is not enough: the token is still needed
    assert main(["info", "--address", mtls.address, *tls]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err


def test_the_server_log_says_mutual_tls_and_holds_no_token(mtls: ProcessServer) -> None:
    out = mtls.output()
    assert "(mutual TLS, 1 token(s); warming up)" in out
    assert "not loopback" not in out
    assert TOKEN not in out
