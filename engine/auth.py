"""Bearer-token authentication and per-method scopes for the gRPC server.

Tokens come from a file (``server.auth.tokens_file`` / ``--tokens-file``, TOML or JSON) and/or
the environment variable ``EXPLORANK_TOKENS`` (JSON), never from the command line. Both map
each token to its scopes::

    # tokens.toml (mode 0600)
    "9d1c...4b" = ["rank"]                                      # a front end
    "e07a...c2" = { scopes = ["reward"], name = "click-logger" }  # a name for the logs

A client sends the metadata ``authorization: Bearer <token>``. The
:class:`TokenAuthInterceptor` answers ``UNAUTHENTICATED`` when the token is missing,
malformed or unknown, and ``PERMISSION_DENIED`` when it is valid but lacks the scope the
method needs (:data:`METHOD_SCOPES`); a method missing from that table is denied to every
token, so a new RPC stays closed until it is listed. Health and reflection
(:data:`OPEN_SERVICES`) and the Open Inference Protocol's ServerLive, ServerReady and
ModelReady (:data:`OPEN_METHODS`) need no token.

Tokens are kept only as SHA-256 digests and every presented token is compared with every
known one (``hmac.compare_digest`` on equal-length digests, no early exit), so neither the
time taken nor the error says which token, or how much of one, matched. No token appears in
a log line or an error message; tokens are told apart by their ``name`` (default: their
position, e.g. ``$EXPLORANK_TOKENS entry 2``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import grpc

from explorank.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "METHOD_SCOPES",
    "OPEN_METHODS",
    "OPEN_SERVICES",
    "SCOPES",
    "TOKENS_ENV",
    "Denial",
    "TokenAuthInterceptor",
    "TokenTable",
    "load_tokens",
]

log = logging.getLogger("explorank.auth")

#: rank: Rank and GetInfo. reward: Reward (it steers every policy). admin: administrative
#: calls (reload, ...), for an admin service to come. Scopes do not imply one another.
SCOPES = ("rank", "reward", "admin")
TOKENS_ENV = "EXPLORANK_TOKENS"
TOKENS_FILE_SETTING = "server.auth.tokens_file / --tokens-file"
#: Shorter tokens are refused: a token should be random, e.g. ``openssl rand -hex 32``.
MIN_TOKEN_CHARS = 16

#: The scope each method of explorank's services needs. Every method must be listed: one
#: that is not (a new RPC, or a name no service has) is denied to every token.
METHOD_SCOPES: Mapping[str, str] = MappingProxyType(
    {
        "/explorank.v1.Ranker/Rank": "rank",
        "/explorank.v1.Ranker/GetInfo": "rank",
        "/explorank.v1.Ranker/Reward": "reward",
        "/explorank.v1.Admin/Reload": "admin",
        "/explorank.v1.Admin/AddItems": "admin",
        "/explorank.v1.Admin/RemoveItems": "admin",
        # The Open Inference Protocol (KServe v2): inference and what describes the models
        "/inference.GRPCInferenceService/ModelInfer": "rank",
        "/inference.GRPCInferenceService/ModelMetadata": "rank",
        "/inference.GRPCInferenceService/ModelConfig": "rank",
        "/inference.GRPCInferenceService/ServerMetadata": "rank",
    }
)

#: Services callable without a token: health checks (load balancers, Kubernetes probes) and
#: server reflection (grpcurl); neither reveals or changes any state.
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

#: Single methods callable without a token: the Open Inference Protocol's liveness and
#: readiness calls, which are its health checks (they answer true/false, and ModelReady
#: NOT_FOUND for a model name the server does not have).
OPEN_METHODS = frozenset(
    {
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
        "/inference.GRPCInferenceService/ModelReady",
    }
)


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    scopes: frozenset[str]
    name: str


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _valid_token_chars(token: str) -> bool:
    """Visible ASCII only: what a gRPC metadata value can carry after ``Bearer ``."""
    return all("!" <= ch <= "~" for ch in token)


def _scopes(value: Any, where: str) -> frozenset[str]:
    if isinstance(value, str):
        value = [s.strip() for s in value.split(",") if s.strip()]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ConfigError(f'{where}: scopes must be a list of names, e.g. ["rank", "reward"]')
    unknown = sorted(set(value) - set(SCOPES))
    if unknown:
        raise ConfigError(f"{where}: unknown scope(s) {unknown}; known: {list(SCOPES)}")
    if not value:
        raise ConfigError(f"{where}: no scopes; give at least one of {list(SCOPES)}")
    return frozenset(value)


class TokenTable:
    """The accepted tokens (as digests), with their scopes and names."""

    def __init__(self, entries: Iterable[_Entry] = ()) -> None:
        self._entries = tuple(entries)

    @classmethod
    def parse(cls, data: Any, source: str) -> TokenTable:
        """Entries of ``data`` (token -> scopes or {scopes, name}); errors name the entry by its
        position in ``source``, never by the token."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: must map each token to its scopes")
        entries = []
        for pos, (token, value) in enumerate(data.items(), 1):
            where = f"{source} entry {pos}"
            name = where
            if isinstance(value, Mapping):
                extra = sorted(set(value) - {"scopes", "name"})
                if extra:
                    raise ConfigError(f"{where}: unknown key(s) {extra}; use scopes and name")
                name = str(value.get("name") or where)
                value = value.get("scopes")
            if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS:
                raise ConfigError(
                    f"{where}: the token is shorter than {MIN_TOKEN_CHARS} characters; "
                    "use a random one, e.g. openssl rand -hex 32"
                )
            if not _valid_token_chars(token):
                raise ConfigError(f"{where}: a token may hold visible ASCII characters only")
            entries.append(_Entry(_digest(token), _scopes(value, where), name))
        return cls(entries)

    def merged(self, other: TokenTable) -> TokenTable:
        mine = {e.digest: e.name for e in self._entries}
        for entry in other._entries:
            if entry.digest in mine:
                raise ConfigError(
                    f"the same token is listed twice ({mine[entry.digest]} and {entry.name})"
                )
        return TokenTable(self._entries + other._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, token: str) -> _Entry | None:
        """The entry of ``token``, or None. Every entry is compared, whichever matches."""
        presented = _digest(token)
        matches = [hmac.compare_digest(presented, e.digest) for e in self._entries]
        return self._entries[matches.index(True)] if any(matches) else None


def _read_tokens_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the tokens file {path} ({TOKENS_FILE_SETTING}): {exc.strerror or exc}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"the tokens file {path} is not UTF-8 text") from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:  # the messages carry positions only
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise ConfigError(f"the tokens file {path} is not valid {kind}: {exc}") from None


def load_tokens(tokens_file: Path | None, environ: Mapping[str, str]) -> TokenTable | None:
    """The tokens of ``tokens_file`` and ``$EXPLORANK_TOKENS``; None when neither is set
    (authentication off). Raises :class:`ConfigError` for a bad file, entry or scope."""
    table: TokenTable | None = None
    if tokens_file is not None:
        path = Path(tokens_file).expanduser()
        table = TokenTable.parse(_read_tokens_file(path), f"tokens file {path}")
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:  # pragma: no cover - it was just read
            mode = 0
        if mode & 0o077:
            log.warning(
                "the tokens file %s can be read by other users (mode %o); chmod 600 it",
                path,
                mode,
            )
    raw = environ.get(TOKENS_ENV, "").strip()
    if raw:
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(
                f"${TOKENS_ENV} must be a JSON object of token -> scopes: {exc}"
            ) from None
        env_table = TokenTable.parse(data, f"${TOKENS_ENV}")
        table = env_table if table is None else table.merged(env_table)
    if table is not None and not len(table):
        raise ConfigError(
            f"no tokens in {TOKENS_FILE_SETTING} / ${TOKENS_ENV}: every call would be refused"
        )
    return table


@dataclass(frozen=True)
class Denial:
    """Why a call is refused: its status code, the message the caller gets, and a note for
    the server's log (never the token)."""

    code: grpc.StatusCode
    message: str
    note: str


_BEARER = "bearer "
_HOW = "send the metadata 'authorization: Bearer <token>'"


def _authorization(metadata: Iterable[Any] | None) -> list[str]:
    values = []
    for key, value in metadata or ():
        if key.lower() == "authorization":
            values.append(value.decode("latin-1") if isinstance(value, bytes) else str(value))
    return values


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid token with the scope their method needs; lets calls to
    :data:`OPEN_SERVICES` through. ``on_denied(method, code)`` is called for each refusal
    (metrics)."""

    def __init__(
        self,
        tokens: TokenTable,
        *,
        method_scopes: Mapping[str, str] = METHOD_SCOPES,
        open_services: Iterable[str] = OPEN_SERVICES,
        open_methods: Iterable[str] = OPEN_METHODS,
        on_denied: Callable[[str, grpc.StatusCode], None] | None = None,
    ) -> None:
        self.tokens = tokens
        self.method_scopes = dict(method_scopes)
        self.open_services = frozenset(open_services)
        self.open_methods = frozenset(open_methods)
        self.on_denied = on_denied

    def is_open(self, method: str) -> bool:
        return (
            method in self.open_methods or method.lstrip("/").split("/", 1)[0] in self.open_services
        )

    def authorize(self, method: str, metadata: Iterable[Any] | None) -> Denial | None:
        """None when the call may proceed, else why not."""
        unauth = grpc.StatusCode.UNAUTHENTICATED
        values = _authorization(metadata)
        if not values:
            return Denial(unauth, f"missing bearer token: {_HOW}", "no token")
        if len(values) > 1:
            return Denial(unauth, "more than one authorization metadata entry", "several tokens")
        value = values[0]
        if value[: len(_BEARER)].lower() != _BEARER or not value[len(_BEARER) :].strip():
            return Denial(unauth, f"malformed authorization metadata: {_HOW}", "not Bearer")
        entry = self.tokens.lookup(value[len(_BEARER) :].strip())
        if entry is None:
            return Denial(unauth, "invalid bearer token", "unknown token")
        scope = self.method_scopes.get(method)
        if scope is None:
            return Denial(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method} is open to no token (it is not in the server's method-scope table)",
                f"{entry.name}: unlisted method",
            )
        if scope not in entry.scopes:
            return Denial(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this token lacks the '{scope}' scope that {method} needs",
                f"{entry.name}: lacks scope '{scope}'",
            )
        return None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if self.is_open(method):
            return await continuation(handler_call_details)
        denial = self.authorize(method, handler_call_details.invocation_metadata)
        handler = await continuation(handler_call_details)
        if denial is None or handler is None:  # no such method: UNIMPLEMENTED, token or not
            return handler
        if self.on_denied is not None:
            self.on_denied(method, denial.code)
        return _denying(handler, method, denial)


def _denying(handler: grpc.RpcMethodHandler | None, method: str, denial: Denial) -> Any:
    """A handler of the same kind as ``handler`` (unary or streaming) that logs the refusal
    and aborts with ``denial`` without running the method."""

    async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
        level = (
            logging.WARNING if denial.code == grpc.StatusCode.PERMISSION_DENIED else logging.INFO
        )
        log.log(level, "%s %s from %s (%s)", denial.code.name, method, context.peer(), denial.note)
        await context.abort(denial.code, denial.message)

    des = getattr(handler, "request_deserializer", None)
    ser = getattr(handler, "response_serializer", None)
    request_streaming = bool(getattr(handler, "request_streaming", False))
    response_streaming = bool(getattr(handler, "response_streaming", False))
    if request_streaming and response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny, des, ser)
    if request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, des, ser)
    if response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny, des, ser)
    return grpc.unary_unary_rpc_method_handler(deny, des, ser)
