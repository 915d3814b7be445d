"""explorank's exception hierarchy: one base class, one meaning per subclass.

The gRPC layer maps these to status codes in exactly one place
(:mod:`explorank.engine.grpc_errors`); the CLI maps them to exit codes.
"""

from __future__ import annotations

import re


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


class AlreadyExistsError(ExplorankError):
    """The request reuses a key (e.g. an ``event_id``) that belongs to a different request."""


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


_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^/\s]+)@"
)
_KEY_VALUE_SECRET = re.compile(
    r"(?i)\b(?P<key>password|passwd|token|secret|api[_-]?key)(?P<sep>\s*[=:]\s*)(?P<value>[^\s,;&'\"]+)"
)
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+")


def redact(text: str) -> str:
    """``text`` with credentials masked: passwords in URLs (``redis://:pw@h`` ->
    ``redis://:***@h``), ``password=...`` / ``token: ...`` pairs and bearer tokens. Applied to
    every message a client sees and to the log lines that quote URLs."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    text = _KEY_VALUE_SECRET.sub(lambda m: f"{m['key']}{m['sep']}***", text)
    return _BEARER.sub("Bearer ***", text)
