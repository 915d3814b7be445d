#!/usr/bin/env bash
# Verify explorank's GPU path on a machine with an NVIDIA GPU, offline, in one run of under
# 10 minutes, and write a report where the caller says. Run it from the repository root:
#
#   bash scripts/gpu-check.sh --wheel PATH [--wheelhouse DIR] [--out DIR] [--work DIR]
#                             [--python PY] [--budget SECONDS] [--dry-run]
#
#   --wheel PATH      the onnxruntime-gpu wheel (env ORT_GPU_WHEEL). PATH may also be a glob of
#                     its parts ('ort_gpu.whl.part-*', quoted), or a wheel name whose parts lie
#                     beside it as PATH.part-*: they are joined in name order, checked, and
#                     installed under the wheel's own file name. Without it, onnxruntime-gpu must
#                     already be importable (the step says so if it is not).
#   --wheelhouse DIR  wheels of explorank's dependencies the machine lacks (env
#                     EXPLORANK_WHEELHOUSE), all installed with --no-deps --no-index;
#                     scripts/gpu-wheels.sh downloads both where PyPI is reachable.
#   --out DIR         where the report goes (env OUT; default ./gpu-out): gpu-check.md and
#                     gpu-check.json (nvidia-smi, versions, every step, figures), gpu-check.log,
#                     gpu-tests.xml, probe.json, encoder-report.json, serve-report.json.
#   --work DIR        scratch space (default /tmp/explorank-gpu-check): the installed packages,
#                     the exported bundle, full benchmark reports and per-step logs.
#   --python PY       the interpreter (env PY; default python3); it must see torch,
#                     transformers and onnx (the bundle is exported on the machine).
#   --budget SECONDS  the whole run's limit (env GPU_CHECK_BUDGET_S; default 570); each step
#                     runs under its own cap within what is left, and a step that no longer
#                     fits is recorded as not run.
#   --dry-run         check the arguments (and join and check the wheel's parts), print the
#                     plan and exit: no GPU needed.
#
# Steps: install (wheel, wheelhouse, explorank) -> environment (nvidia-smi, versions) -> the
# GPU-path tests (those marked gpu/tensorrt, and the CPU ones beside them) -> export the packaged MiniLM with fp32+fp16 (+ the TensorRT plan
# when tensorrt is importable) -> probe (fp16 load-time check, CUDA-graph memory and latency
# with the default serving plan) -> bench encoder --provider cuda at a few shapes -> bench serve
# --quick. Exit 0 when every step passed, 1 when one failed or did not fit, 2 on bad arguments.
set -uo pipefail

usage() { sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "gpu-check: $*" >&2; exit 2; }

WHEEL=${ORT_GPU_WHEEL:-}
WHEELHOUSE=${EXPLORANK_WHEELHOUSE:-}
OUT_DIR=${OUT:-$PWD/gpu-out}
WORK=/tmp/explorank-gpu-check
PY=${PY:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-570}
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --wheel) [ $# -ge 2 ] || die "--wheel needs a path"; WHEEL=$2; shift 2 ;;
    --wheelhouse) [ $# -ge 2 ] || die "--wheelhouse needs a directory"; WHEELHOUSE=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; OUT_DIR=$2; shift 2 ;;
    --work) [ $# -ge 2 ] || die "--work needs a directory"; WORK=$2; shift 2 ;;
    --python) [ $# -ge 2 ] || die "--python needs an interpreter"; PY=$2; shift 2 ;;
    --budget) [ $# -ge 2 ] || die "--budget needs seconds"; BUDGET=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

[ -f pyproject.toml ] && [ -d engine ] && [ -f scripts/gpu_check.py ] \
  || die "run it from the explorank repository root (no pyproject.toml/engine/ here: $PWD)"
case "$BUDGET" in ''|*[!0-9]*) die "--budget must be whole seconds, got '$BUDGET'" ;; esac
[ "$BUDGET" -ge 120 ] || die "--budget $BUDGET is too short (at least 120 s)"
PY=$(command -v "$PY") || die "python not found (use --python)"
case "$PY" in /*) ;; *) PY=$PWD/$PY ;; esac  # absolute, symlinks kept (a venv's python is one)
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "$PY is older than Python 3.10"
if [ -n "$WHEELHOUSE" ]; then
  [ -d "$WHEELHOUSE" ] || die "--wheelhouse $WHEELHOUSE is not a directory"
  ls "$WHEELHOUSE"/*.whl >/dev/null 2>&1 || die "--wheelhouse $WHEELHOUSE holds no .whl"
fi
ROOT=$PWD
mkdir -p "$WORK" "$OUT_DIR" || die "cannot create $WORK or $OUT_DIR"
WORK=$(cd "$WORK" && pwd); OUT_DIR=$(cd "$OUT_DIR" && pwd)

RESOLVED_WHEEL=""
if [ -n "$WHEEL" ]; then
  RESOLVED_WHEEL=$("$PY" scripts/gpu_check.py wheel "$WHEEL" "$WORK/wheel") || die "bad --wheel $WHEEL"
fi

# ------------------------------------------------------------------------------- the plan
SITE=$WORK/site
BUNDLE=$WORK/bundle
LOGS=$WORK/logs
declare -a NAMES CAPS CMDS
add() { NAMES+=("$1"); CAPS+=("$2"); CMDS+=("$3"); }
install_cmd="rm -rf '$SITE' && mkdir -p '$SITE'"
[ -n "$RESOLVED_WHEEL" ] && install_cmd+=" && '$PY' -m pip install -q --no-deps --no-index --no-compile --target '$SITE' '$RESOLVED_WHEEL'"
[ -n "$WHEELHOUSE" ] && install_cmd+=" && '$PY' -m pip install -q --no-deps --no-index --no-compile --target '$SITE' '$WHEELHOUSE'/*.whl"
install_cmd+=" && '$PY' -m pip install -q --no-deps --no-index --no-build-isolation --target '$SITE' . && '$PY' -c 'import explorank.engine.backends, onnxruntime as o; print(o.__version__, o.get_available_providers()); assert \"CUDAExecutionProvider\" in o.get_available_providers(), \"onnxruntime has no CUDA EP: give --wheel\"'"
env_cmd="nvidia-smi && nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap,clocks.max.sm,pcie.link.gen.max --format=csv,noheader > '$WORK/nvidia-smi.csv' && '$PY' scripts/gpu_check.py versions > '$WORK/versions.json' && cat '$WORK/versions.json'"
tests="tests/test_gpu_path.py tests/test_cuda_graphs.py tests/test_fp16.py tests/test_backends.py tests/test_export.py::test_tensorrt_plan_parity"
add install 150 "$install_cmd"
add environment 30 "$env_cmd"
add gpu-tests 180 "'$PY' -m pytest -q -rs -m 'not slow' -p no:cacheprovider --junitxml='$WORK/gpu-tests.xml' $tests"
add export 240 "rm -rf '$BUNDLE' && '$PY' -m explorank export --out '$BUNDLE' --precision fp32,fp16 --tensorrt auto --no-progress"
add probe 150 "'$PY' scripts/gpu_check.py probe --bundle '$BUNDLE' --out '$WORK/probe.json'"
add bench-encoder 180 "'$PY' -m explorank bench encoder --bundle '$BUNDLE' --provider cuda --batch-sizes 1,8,32 --seq-lens 16,64,128 --repeats 20 --warmup 2 --shape-budget 6 --out '$WORK/bench-encoder' && cp '$WORK/bench-encoder/report.json' '$WORK/encoder-report.json'"
add bench-serve 240 "'$PY' -m explorank bench serve --bundle '$BUNDLE' --quick --out '$WORK/bench-serve' && cp '$WORK/bench-serve/report.json' '$WORK/serve-report.json'"

echo "gpu-check plan (budget ${BUDGET}s; out $OUT_DIR; work $WORK; python $PY):"
echo "  wheel: ${RESOLVED_WHEEL:-none given (onnxruntime-gpu must already be importable)}"
echo "  wheelhouse: ${WHEELHOUSE:-none}"
for i in "${!NAMES[@]}"; do
  printf '  %d. %-13s (at most %3ss): %s\n' "$((i + 1))" "${NAMES[$i]}" "${CAPS[$i]}" "${CMDS[$i]}"
done
if [ "$DRY" = 1 ]; then
  echo "dry run: nothing executed"
  exit 0
fi

# -------------------------------------------------------------------------------- the run
mkdir -p "$LOGS"
: > "$WORK/steps.tsv"
exec > >(tee "$OUT_DIR/gpu-check.log") 2>&1
START=$(date +%s)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export EXPLORANK_CACHE_DIR=$WORK/cache XDG_CACHE_HOME=$WORK/xdg-cache EXPLORANK_STATE_DIR=$WORK/state
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
# CUDA/cuDNN from the nvidia-* pip packages next to torch, for onnxruntime-gpu to load
NV_LIBS=$("$PY" - <<'PYEOF' 2>/dev/null
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit(0)
dirs = []
for base in nvidia.__path__:
    for d in sorted(glob.glob(os.path.join(base, "**", "lib"), recursive=True)):
        if glob.glob(os.path.join(d, "lib*.so*")):
            dirs.append(d)
print(":".join(dict.fromkeys(dirs)))
PYEOF
)
[ -n "$NV_LIBS" ] && export LD_LIBRARY_PATH=$NV_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
date
FAILED=0
for i in "${!NAMES[@]}"; do
  name=${NAMES[$i]}; cap=${CAPS[$i]}
  left=$(( BUDGET - ($(date +%s) - START) - 20 ))  # 20 s kept for the report
  limit=$(( cap < left ? cap : left ))
  if [ "$limit" -lt 20 ]; then
    printf '%s\tnot-run\t0\t0\tno time left in the %ss budget\n' "$name" "$BUDGET" >> "$WORK/steps.tsv"
    echo "== $name: not run (no time left)"; FAILED=1; continue
  fi
  echo "== $name (at most ${limit}s)"
  t0=$(date +%s)
  ( cd "$ROOT" && timeout -s INT -k 15 "$limit" bash -c "${CMDS[$i]}" ) 2>&1 | tee "$LOGS/$name.log"
  rc=${PIPESTATUS[0]}
  dt=$(( $(date +%s) - t0 ))
  if [ "$rc" = 0 ]; then status=ok; note=""
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status=timeout; note="stopped after ${limit}s"; FAILED=1
  else status=failed; note="exit $rc; see $LOGS/$name.log"; FAILED=1
  fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$dt" "$note" >> "$WORK/steps.tsv"
  echo "== $name: $status (${dt}s)"
  if [ "$name" = install ] && [ "$status" != ok ]; then
    echo "== install failed: the other steps need it; stopping"
    for rest in "${NAMES[@]:$((i + 1))}"; do
      printf '%s\tnot-run\t0\t0\tinstall failed\n' "$rest" >> "$WORK/steps.tsv"
    done
    break
  fi
done
for f in gpu-tests.xml probe.json encoder-report.json serve-report.json; do
  [ -f "$WORK/$f" ] && cp "$WORK/$f" "$OUT_DIR/$f"
done
"$PY" scripts/gpu_check.py report --work "$WORK" --out "$OUT_DIR" || FAILED=1
echo "gpu-check: $([ "$FAILED" = 0 ] && echo PASSED || echo FAILED) in $(( $(date +%s) - START ))s; report in $OUT_DIR"
exit "$FAILED"
