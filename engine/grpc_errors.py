"""The one place where explorank's exception types become gRPC status codes.

A client's mistake is never INTERNAL: every error explorank raises on purpose maps to a
specific code with a message naming the field or thing at fault.
"""

from __future__ import annotations

import logging

import grpc

from explorank.errors import (
    ConfigError,
    DeadlineExceededError,
    ExplorankError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)

log = logging.getLogger("explorank.grpc")

_MAPPING: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_for(exc: BaseException) -> grpc.StatusCode:
    for etype, code in _MAPPING:
        if isinstance(exc, etype):
            return code
    if isinstance(exc, ExplorankError):
        return grpc.StatusCode.INTERNAL
    return grpc.StatusCode.INTERNAL


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
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
}
