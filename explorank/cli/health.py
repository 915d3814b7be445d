"""``explorank health``: the grpc.health.v1 status of a running server (exit 0 when SERVING).

For container health checks (deploy/Dockerfile's HEALTHCHECK, compose.yaml) where no
grpc-health-probe binary is installed; Kubernetes uses its native gRPC probes instead."""

from __future__ import annotations

import argparse

from explorank.cli.connect import add_connection_arguments, connect


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_connection_arguments(p)
    p.add_argument(
        "--service", default="", help="service to check (default: the server as a whole)"
    )


def run(args: argparse.Namespace) -> int:
    with connect(args) as client:
        status = client.health(args.service)
    print(status)
    return 0 if status == "SERVING" else 1
