"""explorank's exception hierarchy: one base class, one meaning per subclass.

The gRPC layer maps these to status codes in exactly one place
(:mod:`explorank.engine.grpc_errors`); the CLI maps them to exit codes.
"""

from __future__ import annotations


class ExplorankError(Exception):
    """Base class of every error explorank raises on purpose."""


class InvalidArgumentError(ExplorankError, ValueError):
    """A caller's input is wrong. ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class NotFoundError(ExplorankError, LookupError):
    """Something named by the caller does not exist (event, scorer, policy, item)."""


class FailedPreconditionError(ExplorankError):
    """The request is well-formed but the system is not in a state to accept it
    (e.g. the reward window of an event has closed)."""


class ResourceExhaustedError(ExplorankError):
    """Overloaded: the batcher queue is full. Retry with backoff."""


class DeadlineExceededError(ExplorankError, TimeoutError):
    """The request's deadline passed before it could be computed."""


class UnavailableError(ExplorankError):
    """Not ready, shutting down, or a dependency (e.g. Redis) is unreachable."""


class UnauthenticatedError(ExplorankError):
    """The server wants a valid bearer token (``--token-file`` / ``$EXPLORANK_TOKEN``)."""


class PermissionDeniedError(ExplorankError):
    """The token is valid but lacks the scope the call needs."""


class ConfigError(ExplorankError, ValueError):
    """Configuration is invalid; the message says which setting and how to fix it."""


class BundleError(ExplorankError):
    """A bundle is missing, malformed, or fails checksum verification."""


class ExportError(ExplorankError):
    """The export stage failed (including a missed parity gate)."""


class ParityError(ExportError):
    """An exported artefact does not match its reference within tolerance."""
