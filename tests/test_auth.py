"""Bearer tokens: the token table and its files, the method-scope table, and the interceptor
on a small grpc.aio server (admin scope, unlisted and streaming methods). The real server with
tokens is in tests/test_security_server.py."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from explorank.engine.auth import (
    METHOD_SCOPES,
    OPEN_METHODS,
    OPEN_SERVICES,
    SCOPES,
    TOKENS_ENV,
    TokenAuthInterceptor,
    TokenTable,
    load_tokens,
)
from explorank.errors import ConfigError
from explorank.v1 import ranker_pb2

RANK = "r" * 24 + "-rank-token"
REWARD = "w" * 24 + "-reward-token"
ADMIN = "a" * 24 + "-admin-token"
TABLE = TokenTable.parse(
    {RANK: ["rank"], REWARD: {"scopes": ["rank", "reward"], "name": "logger"}, ADMIN: "admin"},
    "test",
)


def _md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


# --- the token table and where it comes from ---------------------------------------------


def test_lookup_finds_each_token_and_only_it() -> None:
    assert TABLE.lookup(RANK).scopes == {"rank"}  # type: ignore[union-attr]
    entry = TABLE.lookup(REWARD)
    assert entry is not None and entry.scopes == {"rank", "reward"} and entry.name == "logger"
    assert TABLE.lookup(ADMIN).scopes == {"admin"}  # type: ignore[union-attr]
    for wrong in (RANK[:-1], RANK + "x", "", RANK.upper()):
        assert TABLE.lookup(wrong) is None
    assert RANK not in repr(TABLE.lookup(RANK))  # only a digest is kept


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"s3cr3t-tok": ["rank"]}, "shorter than 16 characters"),
        ({"x" * 20: ["rank", "root"]}, "unknown scope(s) ['root']"),
        ({"x" * 20: []}, "no scopes"),
        ({"x" * 20: [1]}, "scopes must be a list"),
        ({"x" * 20 + " y": ["rank"]}, "visible ASCII"),
        ({"x" * 20: {"scopes": ["rank"], "role": "a"}}, "unknown key(s) ['role']"),
        (["x" * 20], "must map each token to its scopes"),
    ],
)
def test_bad_entries_are_named_by_position_never_by_token(data: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        TokenTable.parse(data, "tokens file t.toml")
    assert expected in str(err.value)
    if isinstance(data, dict):
        assert "t.toml entry 1" in str(err.value)
        token = next(iter(data))
        assert token not in str(err.value)


def test_tokens_from_a_toml_file_a_json_file_and_the_environment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    toml_file = tmp_path / "tokens.toml"
    toml_file.write_text(f'"{RANK}" = ["rank"]\n"{ADMIN}" = {{ scopes = ["admin"] }}\n')
    toml_file.chmod(0o600)
    json_file = tmp_path / "tokens.json"
    json_file.write_text(json.dumps({REWARD: ["reward"]}))
    json_file.chmod(0o600)
    assert load_tokens(None, {}) is None  # off by default
    with caplog.at_level(logging.WARNING):
        table = load_tokens(toml_file, {TOKENS_ENV: json.dumps({REWARD: "rank,reward"})})
    assert table is not None and len(table) == 3 and not caplog.records
    assert table.lookup(REWARD).scopes == {"rank", "reward"}  # type: ignore[union-attr]
    from_json = load_tokens(json_file, {})
    assert from_json is not None and from_json.lookup(REWARD) is not None
    only_env = load_tokens(None, {TOKENS_ENV: json.dumps({ADMIN: ["admin"]})})
    assert only_env is not None and len(only_env) == 1


def test_token_file_errors_name_the_setting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConfigError, match=r"server.auth.tokens_file / --tokens-file"):
        load_tokens(tmp_path / "missing.toml", {})
    bad = tmp_path / "bad.toml"
    bad.write_text(f'"{RANK}" = [rank]\n')
    with pytest.raises(ConfigError, match="is not valid TOML") as err:
        load_tokens(bad, {})
    assert RANK not in str(err.value)
    with pytest.raises(ConfigError, match=f"\\${TOKENS_ENV} must be a JSON object") as err:
        load_tokens(None, {TOKENS_ENV: f"{RANK}=rank"})
    assert RANK not in str(err.value)
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps({RANK: ["rank"]}))
    with pytest.raises(ConfigError, match="the same token is listed twice") as err:
        load_tokens(dup, {TOKENS_ENV: json.dumps({RANK: ["reward"]})})
    assert RANK not in str(err.value)
    empty = tmp_path / "empty.toml"
    empty.write_text("# no tokens yet\n")
    with pytest.raises(ConfigError, match="no tokens"):
        load_tokens(empty, {})
    dup.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        load_tokens(dup, {})
    assert "can be read by other users (mode 644); chmod 600" in caplog.text
    assert RANK not in caplog.text


# --- the method-scope table ------------------------------------------------------------------


def test_every_served_method_is_in_the_scope_table_or_open() -> None:
    """A new RPC must be given a scope (else every token is refused it): every method of
    every service the server registers — explorank.v1's and the Open Inference Protocol's —
    needs a scope or is one of the open health-like calls; the OIP methods explorank does
    not serve are in neither (they answer UNIMPLEMENTED)."""
    import explorank.oip as oip
    from explorank.engine.oip import SERVED_METHODS

    methods = {
        f"/{service.full_name}/{method.name}"
        for service in ranker_pb2.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    served_oip = {
        f"/{oip.SERVICE_NAME}/{m.name}" for m in oip.SERVICE.methods if m.name in SERVED_METHODS
    }
    assert len(served_oip) == len(SERVED_METHODS)  # every served name exists upstream
    assert methods | served_oip == set(METHOD_SCOPES) | OPEN_METHODS
    assert not set(METHOD_SCOPES) & OPEN_METHODS
    assert set(METHOD_SCOPES.values()) <= set(SCOPES)
    assert METHOD_SCOPES["/explorank.v1.Ranker/Reward"] == "reward"
    assert METHOD_SCOPES["/explorank.v1.Ranker/Rank"] == "rank"
    assert METHOD_SCOPES["/explorank.v1.Ranker/GetInfo"] == "rank"
    admin = {m for m in methods if m.startswith("/explorank.v1.Admin/")}
    assert admin == {f"/explorank.v1.Admin/{n}" for n in ("Reload", "AddItems", "RemoveItems")}
    assert {METHOD_SCOPES[m] for m in admin} == {"admin"}
    assert not any(s.startswith("explorank.") for s in OPEN_SERVICES)
    # inference and model description need "rank"; only liveness and readiness are open
    assert {METHOD_SCOPES[m] for m in served_oip - OPEN_METHODS} == {"rank"}
    assert {m.rsplit("/", 1)[1] for m in OPEN_METHODS} == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
    }
    unserved = {f"/{oip.SERVICE_NAME}/{m.name}" for m in oip.SERVICE.methods} - served_oip
    assert unserved and not unserved & (set(METHOD_SCOPES) | OPEN_METHODS)


def test_authorize_decisions() -> None:
    auth = TokenAuthInterceptor(TABLE)
    rank, reward = "/explorank.v1.Ranker/Rank", "/explorank.v1.Ranker/Reward"
    unauth, denied = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED
    assert auth.authorize(rank, _md(RANK)) is None
    assert auth.authorize(reward, _md(REWARD)) is None
    assert auth.authorize(rank, (("authorization", f"bearer  {RANK} "),)) is None
    assert auth.authorize("/explorank.v1.Admin/AddItems", _md(ADMIN)) is None
    cases: list[tuple[str, Any, grpc.StatusCode, str]] = [
        (rank, (), unauth, "missing bearer token"),
        (rank, (("x-other", "1"),), unauth, "missing bearer token"),
        (rank, (("authorization", RANK),), unauth, "malformed"),
        (rank, (("authorization", "Basic dXNlcjpwYXNz"),), unauth, "malformed"),
        (rank, (("authorization", "Bearer "),), unauth, "malformed"),
        (rank, _md(RANK + "x"), unauth, "invalid bearer token"),
        (rank, _md(RANK) + _md(REWARD), unauth, "more than one"),
        (reward, _md(RANK), denied, "lacks the 'reward' scope"),
        (rank, _md(ADMIN), denied, "lacks the 'rank' scope"),
        ("/explorank.v1.Ranker/DropAll", _md(ADMIN), denied, "open to no token"),
        ("/explorank.v1.Admin/Reload", _md(REWARD), denied, "lacks the 'admin' scope"),
        ("/explorank.v1.Admin/Reload", _md(RANK), denied, "lacks the 'admin' scope"),
        ("/explorank.v1.Admin/Purge", _md(ADMIN), denied, "open to no token"),
    ]
    for method, md, code, text in cases:
        denial = auth.authorize(method, md)
        assert denial is not None and denial.code == code and text in denial.message, method
        for token in (RANK, REWARD, ADMIN):
            assert token not in denial.message and token not in denial.note
    assert auth.is_open("/grpc.health.v1.Health/Check")
    assert auth.is_open("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert not auth.is_open("/explorank.v1.Ranker/Rank")
    assert not auth.is_open("/grpc.health.v1.HealthX/Check")
    assert auth.is_open("/inference.GRPCInferenceService/ServerReady")
    assert not auth.is_open("/inference.GRPCInferenceService/ModelInfer")


# --- the interceptor on a small server: admin, unlisted, streaming ---------------------------

_IDENTITY = {"request_deserializer": None, "response_serializer": None}


async def _ok(request: bytes, context: Any) -> bytes:
    return b"ok:" + request


async def _stream(request: bytes, context: Any) -> Any:
    for i in range(3):
        yield bytes([i])


def _handlers() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        "explorank.v1.Admin",
        {
            "Reload": grpc.unary_unary_rpc_method_handler(_ok, **_IDENTITY),
            "Unlisted": grpc.unary_unary_rpc_method_handler(_ok, **_IDENTITY),
            "Watch": grpc.unary_stream_rpc_method_handler(_stream, **_IDENTITY),
        },
    )


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def test_admin_scope_unlisted_and_streaming_methods(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    denied: list[tuple[str, grpc.StatusCode]] = []
    scopes = {"/explorank.v1.Admin/Reload": "admin", "/explorank.v1.Admin/Watch": "admin"}

    async def run() -> dict[str, Any]:
        interceptor = TokenAuthInterceptor(
            TABLE, method_scopes=scopes, on_denied=lambda m, c: denied.append((m, c))
        )
        server = grpc.aio.server(interceptors=[interceptor])
        server.add_generic_rpc_handlers((_handlers(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        out: dict[str, Any] = {}
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                reload = ch.unary_unary("/explorank.v1.Admin/Reload")
                unlisted = ch.unary_unary("/explorank.v1.Admin/Unlisted")
                watch = ch.unary_stream("/explorank.v1.Admin/Watch")
                out["admin"] = await reload(b"x", metadata=_md(ADMIN), timeout=5)
                out["watch"] = [r async for r in watch(b"", metadata=_md(ADMIN), timeout=5)]
                for name, call in (
                    ("rank", lambda: reload(b"x", metadata=_md(RANK), timeout=5)),
                    ("none", lambda: reload(b"x", timeout=5)),
                    ("unlisted", lambda: unlisted(b"x", metadata=_md(ADMIN), timeout=5)),
                ):
                    try:
                        await call()
                    except grpc.aio.AioRpcError as err:
                        out[name] = (err.code(), err.details())
                try:
                    [r async for r in watch(b"", metadata=_md(REWARD), timeout=5)]
                except grpc.aio.AioRpcError as err:
                    out["watch_denied"] = (err.code(), err.details())
        finally:
            await server.stop(0)
        return out

    with caplog.at_level(logging.DEBUG):
        out = loop.run_until_complete(run())
    assert out["admin"] == b"ok:x"
    assert out["watch"] == [b"\x00", b"\x01", b"\x02"]
    assert out["rank"][0] == grpc.StatusCode.PERMISSION_DENIED
    assert "lacks the 'admin' scope" in out["rank"][1]
    assert out["none"][0] == grpc.StatusCode.UNAUTHENTICATED
    assert out["unlisted"][0] == grpc.StatusCode.PERMISSION_DENIED
    assert "open to no token" in out["unlisted"][1]
    assert out["watch_denied"][0] == grpc.StatusCode.PERMISSION_DENIED
    assert [c for _, c in denied].count(grpc.StatusCode.PERMISSION_DENIED) == 3
    assert "PERMISSION_DENIED /explorank.v1.Admin/Reload from ipv4:127.0.0.1" in caplog.text
    assert "logger: lacks scope 'admin'" in caplog.text  # the token's name, never the token
    for token in (RANK, REWARD, ADMIN):
        assert token not in caplog.text
