"""The one place where explorank's exception types become gRPC status codes and messages.

A client's mistake is never INTERNAL: every error explorank raises on purpose maps to a
specific code with a message naming the field or thing at fault. What a client sees is
bounded and clean (:func:`to_client`): messages are cut to :data:`MAX_MESSAGE_CHARS` and
credentials are masked; an INTERNAL status never carries exception text or a traceback —
only a short error id, which the server log line (with the traceback) carries too. A plugin
that misbehaves is the exception: its INTERNAL names the plugin and its package, because
that is what an operator needs, and it contains nothing the client sent.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

import grpc

from explorank.errors import (
    AlreadyExistsError,
    BundleError,
    ConfigError,
    DeadlineExceededError,
    ExplorankError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
    redact,
)

log = logging.getLogger("explorank.grpc")

#: Longest message a client gets (names echoed back are cut well before, at the source).
MAX_MESSAGE_CHARS = 1000

_MAPPING: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    # a bundle given to Reload that fails verification: the request cannot be carried out
    (BundleError, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_for(exc: BaseException) -> grpc.StatusCode:
    for etype, code in _MAPPING:
        if isinstance(exc, etype):
            return code
    if isinstance(exc, ExplorankError):
        return grpc.StatusCode.INTERNAL
    return grpc.StatusCode.INTERNAL


@dataclass(frozen=True)
class ClientError:
    """What the client is told: a status code, a message, and for INTERNAL an error id."""

    code: grpc.StatusCode
    message: str
    error_id: str = ""


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def to_client(exc: BaseException) -> ClientError:
    """The status and message for ``exc`` (see the module docstring)."""
    from explorank.engine.decision import PluginFailure

    code = status_for(exc)
    if code != grpc.StatusCode.INTERNAL:
        return ClientError(code, clip(redact(str(exc))))
    error_id = uuid.uuid4().hex[:12]
    if isinstance(exc, PluginFailure):
        return ClientError(code, clip(f"{redact(str(exc))} (error id {error_id})"), error_id)
    return ClientError(
        code, f"internal error (error id {error_id}); the server log has the details", error_id
    )


class OncePerKey:
    """Log the first occurrence of each key in full (with the traceback), later ones as a
    one-line summary at most every ``every_s`` seconds: a broken plugin or a client sending
    garbage must not flood the log with a traceback per request."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s = every_s
        self._seen: dict[str, tuple[float, int]] = {}

    def __call__(self, key: str, message: str, *, exc: BaseException | None = None) -> None:
        now = time.monotonic()
        last = self._seen.get(key)
        if last is None:
            self._seen[key] = (now, 0)
            log.error(message, exc_info=exc)
            return
        at, suppressed = last
        if now - at >= self.every_s:
            self._seen[key] = (now, 0)
            log.error("%s (and %d more like it since the last report)", message, suppressed)
        else:
            self._seen[key] = (at, suppressed + 1)


def exception_for(code: grpc.StatusCode, message: str) -> ExplorankError:
    """The inverse mapping, used by the client: a status back to an explorank error."""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field, _, rest = message.partition(": ")
        return InvalidArgumentError(field if rest else "request", rest or message)
    etype = _INVERSE.get(code)
    if etype is not None:
        return etype(message)
    return ExplorankError(f"{code.name}: {message}")


_INVERSE: dict[grpc.StatusCode, type[ExplorankError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
}
