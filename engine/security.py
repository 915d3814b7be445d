"""TLS (and mutual TLS) for the gRPC server and its clients, the server's security set-up
(credentials + token interceptor) and the warning about an exposed port.

Certificate and key files are checked with the standard library's :mod:`ssl` when they are
loaded (readable, PEM, the key matches the certificate, not encrypted), so a bad file is a
:class:`ConfigError` naming the setting or flag instead of a failed bind or a handshake
error later. Serving needs nothing beyond grpcio.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from explorank.engine.auth import METHOD_SCOPES, TokenAuthInterceptor, TokenTable, load_tokens
from explorank.errors import ConfigError

if TYPE_CHECKING:
    from explorank.engine.config import ServerConfig, TlsConfig

__all__ = [
    "ServerSecurity",
    "channel_credentials",
    "connection_hint",
    "exposure_warnings",
    "is_loopback",
    "server_credentials",
]

log = logging.getLogger("explorank.security")

TLS_CERT_SETTING = "server.tls.cert / --tls-cert"
TLS_KEY_SETTING = "server.tls.key / --tls-key"
TLS_CLIENT_CA_SETTING = "server.tls.client_ca / --tls-client-ca"


def _read(path: Path | str, setting: str) -> bytes:
    p = Path(path).expanduser()
    try:
        return p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {p} ({setting}): {exc.strerror or exc}") from None


def _no_password() -> bytes:
    raise ConfigError("encrypted")


def _check_pair(cert: Path, key: Path, cert_setting: str, key_setting: str) -> None:
    """Raise a ConfigError naming the setting unless ``cert`` is a PEM certificate and
    ``key`` its unencrypted PEM private key."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=str(cert))
    except (ssl.SSLError, ValueError):
        raise ConfigError(f"{cert} is not a PEM certificate ({cert_setting})") from None
    try:
        ctx.load_cert_chain(str(cert), str(key), password=_no_password)
    except ConfigError:
        raise ConfigError(
            f"{key} is encrypted ({key_setting}); give the key unencrypted "
            "(openssl pkey -in KEY -out KEY.plain) and protect it with file permissions"
        ) from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise ConfigError(
                f"{key} is not the private key of {cert} ({key_setting}, {cert_setting})"
            ) from None
        raise ConfigError(f"{key} is not a PEM private key ({key_setting})") from None


def _check_ca(ca: Path, setting: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (ssl.SSLError, ValueError):
        raise ConfigError(f"{ca} is not a PEM CA certificate bundle ({setting})") from None


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials | None:
    """The server's TLS credentials from ``[server.tls]``; None when TLS is off."""
    if tls.cert is None or tls.key is None:
        return None
    cert = _read(tls.cert, TLS_CERT_SETTING)
    key = _read(tls.key, TLS_KEY_SETTING)
    _check_pair(
        Path(tls.cert).expanduser(), Path(tls.key).expanduser(), TLS_CERT_SETTING, TLS_KEY_SETTING
    )
    root: bytes | None = None
    if tls.client_ca is not None:
        root = _read(tls.client_ca, TLS_CLIENT_CA_SETTING)
        _check_ca(Path(tls.client_ca).expanduser(), TLS_CLIENT_CA_SETTING)
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=root,
        require_client_auth=root is not None and tls.require_client_cert,
    )


def channel_credentials(
    ca: Path | str | None = None, cert: Path | str | None = None, key: Path | str | None = None
) -> grpc.ChannelCredentials:
    """A client's TLS credentials: ``ca`` verifies the server (None: the system's roots);
    ``cert`` + ``key`` are the client certificate for mutual TLS. Errors name the flag."""
    if (cert is None) != (key is None):
        raise ConfigError("--tls-cert and --tls-key (tls_cert, tls_key) go together")
    root = None
    if ca is not None:
        root = _read(ca, "--tls-ca")
        _check_ca(Path(ca).expanduser(), "--tls-ca")
    chain = private = None
    if cert is not None and key is not None:
        chain, private = _read(cert, "--tls-cert"), _read(key, "--tls-key")
        _check_pair(Path(cert).expanduser(), Path(key).expanduser(), "--tls-cert", "--tls-key")
    return grpc.ssl_channel_credentials(
        root_certificates=root, private_key=private, certificate_chain=chain
    )


def connection_hint(details: str, *, tls: bool) -> str:
    """A hint to add to a failed connection's message when TLS is the likely cause, or ''."""
    if "failed to connect" not in details:
        return ""
    if "WRONG_VERSION_NUMBER" in details:
        return " (the server does not speak TLS: is it a plaintext server? drop the --tls flags)"
    if "handshake failed" in details.lower():
        return (
            " (TLS: the server's certificate is not trusted or does not match the address: "
            "check --tls-ca and --tls-server-name)"
        )
    if "Socket closed" in details:
        if not tls:
            return " (a TLS server closes plaintext connections: use --tls-ca or --tls)"
        return (
            " (a mutual-TLS server closes connections from clients without a certificate "
            "signed by its CA: check --tls-cert and --tls-key)"
        )
    return ""


_LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name, IPv6 possibly in brackets) is loopback only:
    127.0.0.0/8, ::1 or localhost. 0.0.0.0, :: and every other name are not."""
    h = host.strip().strip("[]").lower()
    if h in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def exposure_warnings(sc: ServerConfig, *, tls: bool, auth: bool) -> list[str]:
    """What is exposed when the server listens beyond loopback: one line per port."""
    out = []
    if not is_loopback(sc.host):
        missing = []
        if not tls:
            missing.append("no TLS: requests, responses and tokens cross the network in clear")
        if not auth:
            missing.append(
                "no authentication: anyone who reaches the port can call Rank and Reward "
                "and steer every policy"
            )
        if missing:
            out.append(
                f"gRPC port on {sc.host} (not loopback) with "
                + "; ".join(missing)
                + ". Set [server.tls] (--tls-cert/--tls-key) and [server.auth] tokens_file or "
                "$EXPLORANK_TOKENS (docs/operations.md, Security)"
            )
    if sc.metrics_port and not is_loopback(sc.metrics_host):
        out.append(
            f"the metrics endpoint on {sc.metrics_host}:{sc.metrics_port} (not loopback) has "
            'no TLS and no authentication; keep server.metrics_host = "127.0.0.1" unless a '
            "firewall protects it"
        )
    return out


@dataclass
class ServerSecurity:
    """What :class:`~explorank.engine.server.Server` needs: TLS credentials (None =
    plaintext), tokens (None = no authentication) and a description for the log."""

    credentials: grpc.ServerCredentials | None = None
    tokens: TokenTable | None = None
    #: "required" (mutual TLS), "optional" (verified when sent) or "" (no client_ca).
    client_certs: str = ""

    @classmethod
    def from_config(
        cls, sc: ServerConfig, environ: Mapping[str, str] | None = None
    ) -> ServerSecurity:
        """Load and check ``[server.tls]``, ``[server.auth]`` and ``$EXPLORANK_TOKENS``
        (``environ``, default ``os.environ``); raises :class:`ConfigError`."""
        credentials = server_credentials(sc.tls)
        tokens = load_tokens(sc.auth.tokens_file, os.environ if environ is None else environ)
        client_certs = ""
        if credentials is not None and sc.tls.client_ca is not None:
            client_certs = "required" if sc.tls.require_client_cert else "optional"
        return cls(credentials, tokens, client_certs)

    def interceptors(self, requests_counter: Any = None) -> Sequence[grpc.aio.ServerInterceptor]:
        """The token interceptor when authentication is on; refusals are counted in
        ``requests_counter`` (``explorank_requests_total{rpc, code}``) when given."""
        if self.tokens is None:
            return []

        def count(method: str, code: grpc.StatusCode) -> None:
            if requests_counter is not None:
                # known RPCs by name; anything else under one label (bounded cardinality)
                rpc = method.rsplit("/", 1)[-1] if method in METHOD_SCOPES else "other"
                requests_counter.labels(rpc, code.name).inc()

        return [TokenAuthInterceptor(self.tokens, on_denied=count)]

    def describe(self) -> str:
        """E.g. ``mutual TLS, 3 tokens`` or ``plaintext, no authentication``."""
        if self.credentials is None:
            tls = "plaintext"
        elif self.client_certs == "required":
            tls = "mutual TLS"
        elif self.client_certs == "optional":
            tls = "TLS, client certificates verified when sent"
        else:
            tls = "TLS"
        auth = "no authentication" if self.tokens is None else f"{len(self.tokens)} token(s)"
        return f"{tls}, {auth}"

    def warnings(self, sc: ServerConfig) -> list[str]:
        return exposure_warnings(sc, tls=self.credentials is not None, auth=self.tokens is not None)
