#!/usr/bin/env bash
# CI's protobuf-6 step (.ci/run, after `make test`): the same checkout on protobuf 6, the
# range that tritonclient[grpc] and many other libraries pin (protobuf >= 6.30, < 7), while
# `make test` ran everything on protobuf 7.
#   1. protobuf 6 (latest) + tritonclient[grpc] + the pinned stub generator, in the project's
#      venv: the stale-stub check, the Open Inference Protocol tests, tritonclient against a
#      real server;
#   2. protobuf 6.30.0 itself, the oldest release the stubs accept (with health/reflection
#      1.72.1, the releases for it): the stubs import and the server module loads.
# The venv is put back on protobuf 7 at the end, whatever happened.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
PIP="$PY -m pip"
EXTRAS=${EXTRAS:-export,demo,redis,dev}  # what `make install-dev` installed

restore() {
  echo "[protobuf-6] restoring protobuf 7 in $VENV"
  $PIP uninstall -q -y tritonclient grpcio-tools >/dev/null 2>&1 || true
  $PIP install -q -e ".[$EXTRAS]" "protobuf>=7.35.1,<8"
}
trap restore EXIT

echo "[protobuf-6] installing protobuf<7, tritonclient[grpc] and the stub generator"
$PIP install -q -e ".[$EXTRAS,proto]" "protobuf>=6.30,<7" "tritonclient[grpc]"
$PY -c 'import google.protobuf as p, tritonclient, grpc_health; print("[protobuf-6] protobuf", p.__version__)'
$PY -m pytest -q -p no:cacheprovider tests/test_proto_stubs.py tests/test_oip.py tests/test_oip_tritonclient.py

echo "[protobuf-6] protobuf 6.30.0, the oldest release the stubs accept"
$PIP install -q "protobuf==6.30.0" "grpcio-health-checking==1.72.1" "grpcio-reflection==1.72.1"
$PY -c 'import google.protobuf as p; assert p.__version__ == "6.30.0", p.__version__'
$PY -m pytest -q -p no:cacheprovider tests/test_proto_stubs.py \
  -k "runtime_accepts or descriptor or oip_service or default_pool"
$PY -c 'import explorank.engine.server, explorank.engine.client, explorank.oip; print("[protobuf-6] 6.30.0: stubs and server import")'
