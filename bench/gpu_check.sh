#!/usr/bin/env bash
# The prepared GPU run of the CUDA backend (docs/cuda.md), one script for a lent GPU machine:
#   1. installs what that machine lacks from carried wheels (.whl/: cmeel-eigen, scipy-openblas32),
#   2. builds rnnkit with RNNKIT_CUDA=1 (ptxas' register/spill report kept in build.log),
#   3. runs the `cuda` tests against the CPU backend,
#   4. runs compute-sanitizer (memcheck, racecheck) on a short subset of them,
#   5. benchmarks against torch.nn on cuDNN in the same process (bench/gpu_bench.py),
# writing logs, a table and JSON under $OUT (default ./gpu_check_out). It must finish in under 8
# minutes on an H200.
#
#   bash bench/gpu_check.sh            the GPU run
#   bash bench/gpu_check.sh --dry-run  its logic end to end against the installed build (CI runs it
#                                      on the emulation build): no install or build step, tiny
#                                      shapes, compute-sanitizer only if present
#
# Carrying the wheels (on the development machine, from the repo root; see the device README):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl cmeel-eigen cmeel scipy-openblas32
# and name .whl in the run's carry list.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; fi
OUT=${OUT:-$ROOT/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
START=$(date +%s)
stage() { echo; echo "=== [$(( $(date +%s) - START ))s] $*"; }
FAILED=0

if [ "$DRY" = 0 ]; then
  stage "carried wheels"
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "no .whl folder: assuming cmeel-eigen and scipy-openblas32 are installed"
  fi
  stage "build: RNNKIT_CUDA=1 (nvcc $(nvcc --version | tail -n 1))"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt" || true
  RNNKIT_CUDA=1 $PY -m pip install -v --no-build-isolation --no-deps --target /tmp/rnnkit-site . \
    -C build-dir=/tmp/rnnkit-build >"$OUT/build.log" 2>&1 || { tail -n 60 "$OUT/build.log"; exit 1; }
  export PYTHONPATH=/tmp/rnnkit-site${PYTHONPATH:+:$PYTHONPATH}
  $PY bench/ptxas_report.py "$OUT/build.log" | tee "$OUT/ptxas.txt" || FAILED=1
fi

stage "the backend"
(cd "$OUT" && $PY -c "import rnnkit; print(rnnkit.__file__); print(rnnkit.cuda.status())") | tee "$OUT/status.txt"
(cd "$OUT" && $PY -c "import rnnkit, sys; sys.exit(not rnnkit.cuda.is_available())") \
  || { echo "gpu_check: the CUDA backend is unavailable here"; exit 1; }

stage "cuda tests against the CPU backend"
(cd "$OUT" && $PY -m pytest "$ROOT/tests" -m cuda -q -p no:cacheprovider -o addopts="-ra" 2>&1) \
  | tee "$OUT/tests.log" | tail -n 5 || true
grep -Eq "[0-9]+ passed" "$OUT/tests.log" && ! grep -Eq "[0-9]+ (failed|error)" "$OUT/tests.log" || FAILED=1

stage "compute-sanitizer on a subset (memcheck, racecheck)"
# Every cell on both forward paths (the persistent kernel and the LayerNorm row kernels share memory
# between threads: racecheck's subject), and the persistent kernel over several blocks.
# The bf16 path's rounding kernels and cublasGemmEx calls: LSTM and GRU, every option ("[lstm-"
# is the start of a test id: not ln_lstm or minlstm).
SUBSET=("$ROOT/tests/test_cuda_backend.py" "$ROOT/tests/test_cuda_bf16.py" -k "(training_forward_and_backward and (plain or everything or projection) and float32) or (several_blocks and float32) or (graphed_loops and float32) or side_stream or (at_bf16 and ([lstm- or [gru-))")
if command -v compute-sanitizer >/dev/null 2>&1 && [ "$DRY" = 0 ]; then
  for tool in memcheck racecheck; do
    (cd "$OUT" && compute-sanitizer --tool "$tool" --error-exitcode 9 $PY -m pytest "${SUBSET[@]}" -q \
      -p no:cacheprovider -o addopts="" 2>&1) >"$OUT/sanitizer-$tool.log" || FAILED=1
    tail -n 3 "$OUT/sanitizer-$tool.log"
  done
else
  echo "SKIPPED: compute-sanitizer $( [ "$DRY" = 1 ] && echo "(dry run: emulation build, no GPU)" || echo "not installed")"
  (cd "$OUT" && $PY -m pytest "${SUBSET[@]}" -q -p no:cacheprovider -o addopts="" 2>&1 | tail -n 1) || FAILED=1
fi

stage "benchmark against torch.nn (cuDNN)"
(cd "$OUT" && $PY "$ROOT/bench/gpu_bench.py" --out "$OUT" $( [ "$DRY" = 1 ] && echo --dry-run )) \
  >"$OUT/bench.log" 2>&1 || { FAILED=1; tail -n 20 "$OUT/bench.log"; }
cat "$OUT/gpu_bench.md" 2>/dev/null || true

stage "done (failed=$FAILED); files in $OUT"
ls "$OUT"
exit $FAILED
