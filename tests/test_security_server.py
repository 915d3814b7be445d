"""A real server with TLS and bearer tokens (certificates made at run time): who gets in, who
does not and with which status code, what stays open, what is logged, the CLI client's flags,
the metrics endpoint's address, and the warning for a server exposed without protection."""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from explorank.cli import main
from explorank.engine.client import RankerClient
from explorank.errors import PermissionDeniedError, UnauthenticatedError, UnavailableError
from explorank.v1 import ranker_pb2, ranker_pb2_grpc
from tests.server_harness import ThreadServer, free_port, make_config
from tests.tls_certs import Pki, make_pki

RANK = "rank-only-0123456789abcdef0123456789"
BOTH = "rank-and-reward-fedcba9876543210fedcba"
ADMIN = "admin-only-00112233445566778899aabb"
WRONG = "not-a-token-ffeeddccbbaa99887766554433"
SECRETS = (RANK, BOTH, ADMIN, WRONG)
#: Fast warm-up: the tests need a working server, not every batch shape.
BATCHING = {"length_buckets": [64], "max_batch_size": 4}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def token_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tokens")
    table = out / "tokens.toml"
    table.write_text(
        f'"{RANK}" = ["rank"]\n'
        f'"{BOTH}" = {{ scopes = ["rank", "reward"], name = "click-logger" }}\n'
        f'"{ADMIN}" = ["admin"]\n'
    )
    table.chmod(0o600)
    files = {"table": table}
    for name, token in (("rank", RANK), ("both", BOTH), ("wrong", WRONG)):
        files[name] = out / f"{name}.token"
        files[name].write_text(token + "\n")
    return files


@pytest.fixture(scope="module")
def srv(
    tiny_bundle: Path,
    tmp_path_factory: pytest.TempPathFactory,
    pki: Pki,
    token_files: dict[str, Path],
) -> Iterator[ThreadServer]:
    """TLS (no client certificates) + tokens, metrics on the default host."""
    server = {
        "metrics_port": free_port(),
        "tls": {"cert": str(pki.server.cert), "key": str(pki.server.key)},
        "auth": {"tokens_file": str(token_files["table"])},
    }
    tmp = tmp_path_factory.mktemp("secure")
    config = make_config(tiny_bundle, tmp / "state.db", server=server, batching=BATCHING)
    with ThreadServer(config) as s:
        yield s


def _client(srv: ThreadServer, pki: Pki, token: str | None = None) -> RankerClient:
    return RankerClient(srv.address, tls_ca=pki.ca, token=token, timeout=10)


def _secure_channel(srv: ThreadServer, pki: Pki) -> grpc.Channel:
    return grpc.secure_channel(srv.address, grpc.ssl_channel_credentials(pki.ca.read_bytes()))


def test_tls_client_with_a_token_ranks_rewards_and_reads_info(srv: ThreadServer, pki: Pki) -> None:
    with _client(srv, pki, BOTH) as client:
        res = client.rank(context_text="space adventure", top_k=3)
        assert len(res.items) == 3
        assert client.reward(res.event_id, res.items[0].item_id, 1.0).accepted
        assert client.info()["catalog_size"] > 0


def test_a_plaintext_client_cannot_talk_to_a_tls_server(srv: ThreadServer, pki: Pki) -> None:
    client = RankerClient(srv.address, token=BOTH, timeout=3)
    with client, pytest.raises(UnavailableError, match="a TLS server closes plaintext"):
        client.rank(top_k=1)
    with grpc.insecure_channel(srv.address) as ch, pytest.raises(grpc.RpcError) as err:
        health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_a_client_trusting_another_ca_refuses_the_server(srv: ThreadServer, pki: Pki) -> None:
    client = RankerClient(srv.address, tls_ca=pki.other_ca, token=BOTH, timeout=3)
    with client, pytest.raises(UnavailableError, match="certificate is not trusted"):
        client.rank(top_k=1)


def test_tokens_and_scopes(srv: ThreadServer, pki: Pki) -> None:
    with _client(srv, pki) as client, pytest.raises(UnauthenticatedError, match="missing bearer"):
        client.rank(top_k=1)
    with _client(srv, pki, WRONG) as client, pytest.raises(UnauthenticatedError, match="invalid"):
        client.rank(top_k=1)
    with _client(srv, pki, RANK) as client:
        res = client.rank(top_k=2)
        assert len(res.items) == 2 and client.info()["catalog_size"] > 0
        with pytest.raises(PermissionDeniedError, match="lacks the 'reward' scope"):
            client.reward(res.event_id, res.items[0].item_id, 1.0)
    with _client(srv, pki, ADMIN) as client:
        with pytest.raises(PermissionDeniedError, match="lacks the 'rank' scope"):
            client.rank(top_k=1)
        with pytest.raises(PermissionDeniedError):
            client.reward("e", "i", 1.0)
    # the status codes themselves, as any gRPC client sees them
    stub = ranker_pb2_grpc.RankerStub(_secure_channel(srv, pki))
    for md, code in (
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", f"Bearer {WRONG}"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", f"Bearer {RANK}"),), grpc.StatusCode.PERMISSION_DENIED),
    ):
        with pytest.raises(grpc.RpcError) as err:
            stub.Reward(ranker_pb2.RewardRequest(event_id="e", item_id="i"), metadata=md, timeout=5)
        assert err.value.code() == code  # type: ignore[attr-defined]


def test_health_and_reflection_need_no_token(srv: ThreadServer, pki: Pki) -> None:
    ch = _secure_channel(srv, pki)
    resp = health_pb2_grpc.HealthStub(ch).Check(
        health_pb2.HealthCheckRequest(service="explorank.v1.Ranker"), timeout=5
    )
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(ch)
    responses = refl.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert "explorank.v1.Ranker" in names


def test_no_token_reaches_the_logs(
    srv: ThreadServer,
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    messages = []
    for token in SECRETS:
        with _client(srv, pki, token) as client:
            for call in (lambda: client.rank(top_k=1), lambda: client.reward("e", "i", 1.0)):
                try:
                    call()
                except Exception as exc:  # noqa: BLE001 - every refusal's message is checked
                    messages.append(str(exc))
    out, err = capfd.readouterr()
    assert "UNAUTHENTICATED /explorank.v1.Ranker/Rank from ipv4:127.0.0.1" in caplog.text
    assert "PERMISSION_DENIED /explorank.v1.Ranker/Reward" in caplog.text
    assert "(click-logger: " not in caplog.text  # BOTH may call both
    refused = [m for m in messages if m.startswith(("UNAUTHENTICATED", "PERMISSION_DENIED"))]
    assert len(refused) == 5  # WRONG twice, RANK's Reward, ADMIN twice (BOTH: unknown event)
    for secret in SECRETS:
        assert secret not in caplog.text and secret not in out and secret not in err
        assert not any(secret in m for m in messages)


def test_refusals_are_counted_and_metrics_listen_on_loopback(srv: ThreadServer, pki: Pki) -> None:
    assert srv.server is not None
    metrics_server = srv.server._metrics_server[0]
    assert metrics_server.server_address[0] == "127.0.0.1"
    with _client(srv, pki) as client, pytest.raises(UnauthenticatedError):
        client.info()
    port = srv.config.server.metrics_port
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'explorank_requests_total{code="UNAUTHENTICATED",rpc="GetInfo"}' in body


def test_cli_client_with_tls_ca_and_token_file(
    srv: ThreadServer,
    pki: Pki,
    token_files: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = ["--address", srv.address, "--tls-ca", str(pki.ca)]
    both = ["--token-file", str(token_files["both"])]
    assert main(["rank", *base, *both, "--top-k", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["items"]) == 2
    reward = ["reward", *base, "--event-id", res["event_id"], "--item", res["items"][0]["item_id"]]
    assert main([*reward, "--value", "1", "--token-file", str(token_files["rank"])]) == 1
    err = capsys.readouterr().err
    assert "PERMISSION_DENIED" in err and "'reward' scope" in err and RANK not in err
    assert main([*reward, "--value", "1", *both]) == 0
    assert capsys.readouterr().out.strip() == "accepted"
    assert main(["info", *base]) == 1
    assert "UNAUTHENTICATED: missing bearer token" in capsys.readouterr().err
    monkeypatch.setenv("EXPLORANK_TOKEN", RANK)
    assert main(["info", *base, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["catalog_size"] > 0
    # --token-file wins over $EXPLORANK_TOKEN
    assert main(["info", *base, "--token-file", str(token_files["wrong"])]) == 1
    err = capsys.readouterr().err
    assert "invalid bearer token" in err and WRONG not in err
    assert main(["info", "--address", srv.address, "--timeout", "3"]) == 1  # plaintext


def test_an_exposed_server_warns(
    tiny_bundle: Path,
    tmp_path: Path,
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On 0.0.0.0 with tokens (from $EXPLORANK_TOKENS) but without TLS: a warning that says
    TLS is missing; the tokens themselves are never logged."""
    monkeypatch.setenv("EXPLORANK_TOKENS", json.dumps({RANK: ["rank"]}))
    config = make_config(
        tiny_bundle, tmp_path / "state.db", server={"host": "0.0.0.0"}, batching=BATCHING
    )
    caplog.set_level(logging.DEBUG)
    with ThreadServer(config) as s, RankerClient(s.address, token=RANK) as client:
        assert len(client.rank(top_k=1).items) == 1
        tls_client = RankerClient(s.address, tls_ca=pki.ca, token=RANK, timeout=3)
        with tls_client, pytest.raises(UnavailableError, match="does not speak TLS"):
            tls_client.rank(top_k=1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    exposed = [w for w in warnings if "gRPC port on 0.0.0.0 (not loopback)" in w]
    assert len(exposed) == 1 and "no TLS" in exposed[0]
    assert "no authentication" not in exposed[0]
    assert "plaintext, 1 token(s)" in caplog.text
    assert RANK not in caplog.text


def test_a_loopback_server_does_not_warn(srv: ThreadServer) -> None:
    assert srv.server is not None
    assert srv.server.security.warnings(srv.config.server) == []
    assert srv.server.security.describe() == "TLS, 3 token(s)"
