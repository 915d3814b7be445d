"""How the client commands (``rank``, ``reward``, ``info``) reach a server: address, deadline,
TLS (``--tls-ca``, ``--tls-cert``, ``--tls-key``) and a bearer token, read from
``--token-file`` or ``$EXPLORANK_TOKEN`` (never from a flag's value: command lines are visible
to other users in ``ps`` and kept in shell histories)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from explorank.errors import ConfigError

if TYPE_CHECKING:
    from explorank.engine.client import RankerClient

TOKEN_ENV = "EXPLORANK_TOKEN"


class RefuseSecretFlag(argparse.Action):
    """A flag that must not exist (``--token VALUE``): refuse it, without echoing the value,
    and keep argparse from taking it as an abbreviation of ``--token-file``."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"{option_string} is not accepted: a secret on the command line shows in ps and in "
            "shell histories; put it in a file (mode 0600) and pass the file's path"
        )


def add_connection_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address", default="localhost:50051", help="server HOST:PORT (default localhost:50051)"
    )
    p.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    g = p.add_argument_group("TLS and authentication (docs/operations.md, Security)")
    g.add_argument(
        "--tls", action="store_true", help="use TLS, verifying the server with the system's CAs"
    )
    g.add_argument("--tls-ca", type=Path, help="PEM CA certificate that verifies the server (TLS)")
    g.add_argument("--tls-cert", type=Path, help="PEM client certificate, for mutual TLS")
    g.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    g.add_argument(
        "--tls-server-name", help="name to check the server's certificate against (default: host)"
    )
    g.add_argument(
        "--token-file",
        type=Path,
        help=f"file holding the bearer token (default: ${TOKEN_ENV} when set)",
    )
    g.add_argument("--token", action=RefuseSecretFlag)


def read_token(token_file: Path | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The bearer token from ``token_file``, else ``$EXPLORANK_TOKEN``, else None."""
    if token_file is not None:
        path = token_file.expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read {path} (--token-file): {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path} (--token-file) is not a text file") from None
        if not token:
            raise ConfigError(f"{path} (--token-file) is empty")
        if "\n" in token:
            raise ConfigError(f"{path} (--token-file) must hold one token on one line")
        return token
    env = os.environ if environ is None else environ
    return env.get(TOKEN_ENV, "").strip() or None


def connect(args: argparse.Namespace) -> RankerClient:
    """A client for the command's connection flags."""
    from explorank.engine.client import RankerClient

    return RankerClient(
        args.address,
        timeout=args.timeout,
        tls=args.tls,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_server_name=args.tls_server_name,
        token=read_token(args.token_file),
    )
