#!/usr/bin/env bash
# Download, where PyPI is reachable, what scripts/gpu-check.sh installs on an offline GPU
# machine (Linux x86-64, CPython 3.12 by default):
#
#   bash scripts/gpu-wheels.sh DIR [--ort-version 1.31.1] [--python-version 3.12] [--part-size 60M]
#
#   DIR/onnxruntime-gpu/<wheel>.part-*   the onnxruntime-gpu wheel (CUDA 12 or 13, by version:
#                                        1.31.1 is built for CUDA 13 and cuDNN 9), split into
#                                        parts that each fit a transfer (default 60 MB)
#   DIR/wheelhouse/*.whl                 explorank's runtime dependencies that a CUDA/PyTorch
#                                        image usually lacks or has too old (grpcio >= 1.85.1,
#                                        protobuf >= 7.35.1, pydantic, pydantic-settings,
#                                        grpcio-health-checking/-reflection) and setuptools to
#                                        build explorank there
#
# Then, on the GPU machine: bash scripts/gpu-check.sh --wheel 'DIR/onnxruntime-gpu/*.part-*'
#   --wheelhouse DIR/wheelhouse --out OUT
# The CUDA and cuDNN libraries come from the machine (e.g. PyTorch's nvidia-* packages);
# they are not downloaded.
set -euo pipefail

[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
DIR=$1; shift
ORT=1.31.1; PYV=3.12; PART=60M
while [ $# -gt 0 ]; do
  case "$1" in
    --ort-version) ORT=$2; shift 2 ;;
    --python-version) PYV=$2; shift 2 ;;
    --part-size) PART=$2; shift 2 ;;
    *) echo "gpu-wheels: unknown argument $1" >&2; exit 2 ;;
  esac
done
PY=${PY:-python3}
PLAT=(--only-binary=:all: --python-version "$PYV" --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
mkdir -p "$DIR/onnxruntime-gpu" "$DIR/wheelhouse"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

"$PY" -m pip download -q --no-deps "${PLAT[@]}" -d "$tmp" "onnxruntime-gpu==$ORT"
whl=$(ls "$tmp"/onnxruntime_gpu-*.whl)
rm -f "$DIR/onnxruntime-gpu/"*.part-*
split -b "$PART" -a 2 "$whl" "$DIR/onnxruntime-gpu/$(basename "$whl").part-"
(cd "$tmp" && sha256sum "$(basename "$whl")") > "$DIR/onnxruntime-gpu/SHA256SUMS"

"$PY" -m pip download -q "${PLAT[@]}" -d "$DIR/wheelhouse" \
  "grpcio>=1.85.1" "grpcio-health-checking>=1.85" "grpcio-reflection>=1.85" \
  "protobuf>=7.35.1" "pydantic>=2.5" "pydantic-settings>=2.4,<3" "setuptools>=77"

echo "onnxruntime-gpu $ORT: $(ls "$DIR/onnxruntime-gpu/" | grep -c part-) parts of at most $PART"
du -sh "$DIR/onnxruntime-gpu" "$DIR/wheelhouse"
ls "$DIR/wheelhouse"
