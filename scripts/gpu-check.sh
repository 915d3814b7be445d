#!/usr/bin/env bash
# One prepared run for a lent GPU machine (see /work/.library/device/README.md):
# GPU-marked tests + a short encoder benchmark over the CUDA / TensorRT backends,
# everything written under $OUT. Run from the repository root on the device machine:
#   bash scripts/gpu-check.sh            (OUT defaults to ./gpu-out)
# Needs the onnxruntime-gpu wheel already installed there (it does not ship on that
# machine) and, for the native TensorRT path, the tensorrt package.
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1
export HF_HUB_OFFLINE=1 EXPLORANK_CACHE_DIR="$OUT/cache"
PY=${PY:-python3}
date; nvidia-smi || true
$PY -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
$PY -c "import tensorrt as t; print('tensorrt', t.__version__)" || echo "tensorrt: not installed"
$PY -m pip install -q --no-deps -e . || true
# 1. the GPU-marked tests (they skip with a reason where something is missing)
$PY -m pytest -q -m "gpu or tensorrt" -rs --junitxml="$OUT/gpu-tests.xml" tests || true
# 2. a bundle with a TensorRT plan where TensorRT is present (auto = skip otherwise)
$PY -m explorank export --out "$OUT/bundle" --tensorrt auto --no-progress || true
# 3. a short encoder benchmark on the GPU backends next to the CPU ones
$PY -m explorank bench encoder --bundle "$OUT/bundle" --quick \
  --backends pytorch,ort-fp32,ort-cuda,ort-trt,tensorrt --out "$OUT/bench-encoder" || true
date
