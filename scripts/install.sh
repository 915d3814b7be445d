#!/usr/bin/env bash
# Installs explorank into a virtual environment: the one install path of `make install`,
# `make install-dev` (so of CI) and the container images (deploy/Dockerfile, Dockerfile.cuda).
#
#   scripts/install.sh VENV EXTRAS [--editable] [--gpu]
#
# VENV      the virtual environment (created when missing)
# EXTRAS    comma-separated extras, e.g. "export,demo,redis" ("" for none)
# --editable  install this checkout in development mode (make); images install it as a package
# --gpu     the CUDA build of ONNX Runtime instead of the CPU one (they share one module, so
#           only one may be installed: README, "Quickstart")
# EXPLORANK_INSTALL_DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 VENV EXTRAS [--editable] [--gpu]" >&2
  exit 2
fi
venv=$1 extras=$2
shift 2
editable="" gpu=""
for arg in "$@"; do
  case "$arg" in
    --editable) editable="-e" ;;
    --gpu) gpu=1 ;;
    *) echo "$0: unknown option $arg" >&2; exit 2 ;;
  esac
done
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
run() {
  if [ "${EXPLORANK_INSTALL_DRY_RUN:-}" = 1 ]; then echo "$*"; else "$@"; fi
}
if [ ! -x "$venv/bin/python" ]; then
  run "$python" -m venv "$venv"
  run "$venv/bin/python" -m pip install -q --upgrade pip
fi
spec="$root"
[ -n "$extras" ] && spec="$root[$extras]"
run "$venv/bin/python" -m pip install -q ${PIP_EXTRA_ARGS:-} $editable "$spec"
if [ -n "$gpu" ]; then
  run "$venv/bin/python" -m pip uninstall -q -y onnxruntime onnxruntime-gpu
  run "$venv/bin/python" -m pip install -q ${PIP_EXTRA_ARGS:-} "onnxruntime-gpu>=1.18"
fi
