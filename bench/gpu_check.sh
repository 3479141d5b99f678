#!/usr/bin/env bash
# One command for a GPU machine with PyTorch but no network (issues 12, 14 and 20), sized to a device lease:
# builds the extension in place (sm_90, ninja on every core), runs ctest with the CUDA tests, EVERY CUDA
# pytest test (no -x: the summary names each failing test), compute-sanitizer memcheck, racecheck, synccheck
# and initcheck on a small program that reaches every kernel, one short training run (CURE, bf16, torchrun)
# on synthetic CIFAR-shaped data, and the quick benchmark writing record.json. Each step is time-boxed; a
# failing step does not stop the later ones, and the exit status is 1 when any step failed. Without a GPU
# every CUDA part reports "skipped" and the rest runs on the CPU (a dry run; CI keeps one).
#
#   bench/gpu_check.sh [--out DIR] [--only STEP,...] [--budget SECONDS] [--no-gpu] [--list]
#
# Default call: build,ctest,pytest,sanitize,train,bench inside 460 s (the device call: timeout_s 540).
# Rerun of what failed, with the returned extension carried: --only pytest,sanitize (etc.), at most 4 minutes.
# Full benchmark, a call of its own: --only bench-full (timeout_s 600; builds first unless carried).
# DIR (default $OUT, else ./gpu_check_out) receives at most 8 files: summary.txt, record.json,
# extension.tar.gz (the built cure_ext/_C*.so and cure_ext/_build_info.py) and the logs build.log, cxx.log
# (ctest and sanitize), pytest.log, train.log, bench.log. Temporary files, build trees and training runs
# stay outside DIR. A carried .gpu_carry/ (bench/gpu_carry.sh) joins PYTHONPATH, and its
# extension.tar.gz, when built against this machine's torch, replaces the build.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

STEPS=(build ctest pytest sanitize train bench bench-full)
DEFAULT_STEPS=(build ctest pytest sanitize train bench)
# Seconds per step. Measured here (2 busy cores, no GPU): the extension for sm_90 alone in 29 s (50 s of
# CPU over 9 sources), the CMake tree with the CUDA tests in 15 s.
# build 70: on 16 cores the slowest source bounds the extension (~15-20 s), the CMake tree builds beside it,
#   then one import and op call per device (CUDA start ~5 s); a carried extension: ~5 s.
# ctest 40: the CMake tree is up to date after build (on a rerun ~15 s to rebuild it, as measured here),
#   then the CPU core, planner and CUDA step tests (small, one process each).
# pytest 120: 300 CUDA test cases (the cuda ids of the device-parameterised tests and test_cuda.py: 183
#   selective-step, 76 validation, 26 CUDA-only, 12 opcheck, 3 API/optim), one process, no -x.
# sanitize 85: the CMake tree (up to date, or ~15 s), then cuda_step_test --small under each tool: its own
#   box below (racecheck instruments shared memory: the slowest); synccheck and initcheck run where time is left.
# train 40: one run of ResNet-18 on 256 images, 2-step PGD, one epoch, under torchrun (process group start,
#   CUDA start and cuDNN autotuning dominate).
# bench 105: python -m bench --quick on the GPU: two input sets per model in fp32 and bf16 (WRN-34-10: 46M
#   parameters, generated on the host), 1-3 rounds per variant, the profiler counts, scaling, overhead
#   and two quick ResNet-18 iteration benchmarks.
# bench-full 540: python -m bench (8 s per variant group, 20 s per iteration benchmark, larger scaling):
#   minutes, so a call of its own (10 minutes at most); the build, if not carried, is inside its box.
declare -A BOX=([build]=70 [ctest]=40 [pytest]=120 [sanitize]=85 [train]=40 [bench]=105 [bench-full]=540)
declare -A SANITIZER_BOX=([memcheck]=20 [racecheck]=30 [synccheck]=12 [initcheck]=12)
declare -A LOG=([build]=build [ctest]=cxx [sanitize]=cxx [pytest]=pytest [train]=train [bench]=bench
                [bench-full]=bench)
# The default call's budget: the device's 8 minutes less ~10 s outside the boxes (the GPU check, the summary)
# and ~10 s for the transfers. Other selections get the sum of their boxes, at most 570 s (a 10-minute call).
DEFAULT_BUDGET=460
MAX_BUDGET=570
EXTENSION_MAX_BYTES=$((16 << 20))  # what one file from $OUT may hold
OUTDIR=${OUT:-$ROOT/gpu_check_out}
ONLY=""
BUDGET=""
FORCE_NO_GPU=0

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUTDIR=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --no-gpu) FORCE_NO_GPU=1; shift ;;
    --list)
      for s in "${STEPS[@]}"; do
        kind=separate
        [[ " ${DEFAULT_STEPS[*]} " == *" $s "* ]] && kind=default
        echo "$s ${BOX[$s]} $kind"
      done
      exit 0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
SELECTED=("${DEFAULT_STEPS[@]}")
if [ -n "$ONLY" ]; then
  SELECTED=()
  for s in ${ONLY//,/ }; do
    [[ " ${STEPS[*]} " == *" $s "* ]] || { echo "gpu_check: --only: unknown step '$s' (steps: ${STEPS[*]})" >&2; exit 2; }
    SELECTED+=("$s")
  done
fi
[ -z "$BUDGET" ] || [[ "$BUDGET" =~ ^[0-9]+$ ]] || { echo "gpu_check: --budget must be a whole number of seconds" >&2; exit 2; }
mkdir -p "$OUTDIR" || exit 2
OUTDIR=$(cd "$OUTDIR" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
START=$SECONDS
NPROC=$(nproc)
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
# nvcc (CMake's CUDA compiler) and compute-sanitizer, where the image keeps them off the PATH.
for d in "${CUDA_HOME:-/usr/local/cuda}/bin" "${CUDA_HOME:-/usr/local/cuda}/compute-sanitizer"; do
  [ -d "$d" ] && PATH="$PATH:$d"
done
export PATH
CARRY=$ROOT/.gpu_carry
[ -d "$CARRY/site" ] && export PYTHONPATH="$CARRY/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

GPU=0
if [ $FORCE_NO_GPU = 0 ] && "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  GPU=1
fi
if [ $GPU = 1 ]; then
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-$NPROC}
  GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
  [ -n "$GPU_NAME" ] || GPU_NAME=$("$PY" -c "import torch; print(torch.cuda.get_device_name())" 2>/dev/null)
else
  export CURE_EXT_CUDA=0
  # A dry run spends no lease, and a CPU-only CI machine compiles and trains slower: three times the boxes.
  for s in "${STEPS[@]}"; do BOX[$s]=$((3 * BOX[$s])); done
  DEFAULT_BUDGET=$((3 * DEFAULT_BUDGET)) MAX_BUDGET=$((3 * MAX_BUDGET))
fi
if [ -z "$BUDGET" ]; then
  BUDGET=0
  for s in "${SELECTED[@]}"; do BUDGET=$((BUDGET + BOX[$s])); done
  [ -z "$ONLY" ] && BUDGET=$DEFAULT_BUDGET
  [ "$BUDGET" -gt $MAX_BUDGET ] && BUDGET=$MAX_BUDGET
fi

SUMMARY=()
DETAILS=()  # per-step lines under the table: failing test ids, sanitizer tools, what came back
FAILED=0
note() { SUMMARY+=("$(printf '%-10s %-11s %5s  %s' "$1" "$2" "$3" "$4")"); }
detail() { echo "$*" >> "$WORK/details"; }
finish() {
  [ -f "$WORK/details" ] && mapfile -t DETAILS < "$WORK/details"
  {
    echo "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname): ${GPU_NAME:-no GPU (dry run)}, $NPROC cores, torch $("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda or "cpu")' 2>/dev/null)"
    printf '%-10s %-11s %5s  %s\n' step status secs log
    printf '%s\n' "${SUMMARY[@]}"
    [ ${#DETAILS[@]} = 0 ] || printf '%s\n' "" "${DETAILS[@]}"
    echo "total $((SECONDS - START))s of ${BUDGET}s budget; $(ls "$OUTDIR" | wc -l) files in $OUTDIR"
  } > "$OUTDIR/summary.txt"
  rm -rf "$WORK"
  echo
  cat "$OUTDIR/summary.txt"
}

# Runs step $1's function, time-boxed by the smaller of its box and what is left of the budget, appending
# to its log in $OUTDIR. Status: ok, skipped (the function returns 77), cpu-only (78: its CPU part passed,
# its CUDA part skipped), unavailable (79: the tool refuses this device), carried (80: the carried
# extension replaced the build), FAILED, TIMEOUT. A failure is noted and the next step runs.
run_step() {
  local step=$1 log="$OUTDIR/${LOG[$1]}.log" t0=$SECONDS rc left box
  left=$((BUDGET - (SECONDS - START)))
  box=${BOX[$step]}
  [ "$left" -lt "$box" ] && box=$left
  if [ "$box" -le 5 ]; then
    note "$step" TIMEOUT 0 "budget spent before the step"
    echo "== $step: no budget left" >&2
    FAILED=1
    return
  fi
  echo "== $step (at most ${box}s)"
  STEP_DEADLINE=$((SECONDS + box))
  echo "== $step (at most ${box}s)" >> "$log"
  ( "step_$step" ) >> "$log" 2>&1
  rc=$?
  local secs=$((SECONDS - t0))
  case $rc in
    0) note "$step" ok "$secs" "$(basename "$log")" ;;
    77) note "$step" skipped "$secs" "$(tail -n 1 "$log")" ;;
    78) note "$step" cpu-only "$secs" "$(tail -n 1 "$log")" ;;
    79) note "$step" unavailable "$secs" "$(tail -n 1 "$log")" ;;
    80) note "$step" carried "$secs" "$(tail -n 1 "$log")" ;;
    *)
      local what=FAILED
      [ $rc = 124 ] || [ $rc = 137 ] && what=TIMEOUT
      note "$step" "$what" "$secs" "$(basename "$log") (exit $rc)"
      FAILED=1
      echo "== $step $what (exit $rc); end of $log:"
      tail -n 40 "$log" ;;
  esac
}

# A command bounded by the current step's deadline (kills its whole process group at the end).
boxed() {
  local left=$((STEP_DEADLINE - SECONDS))
  [ "$left" -gt 0 ] || return 124
  timeout --kill-after=10 "$left" "$@"
}
skip() { echo "skipped: $*"; exit 77; }
cpu_only() { echo "CUDA part skipped: $*"; exit 78; }

# ---- the extension: built in place, or taken from the carried .gpu_carry/extension.tar.gz
has_ext() {  # the extension imports, and on a GPU machine it has the CUDA kernel
  "$PY" -c "import torch, cure_ext, sys; sys.exit(0 if not torch.cuda.is_available() or torch._C._dispatch_has_kernel_for_dispatch_key('cure_ext::selective_step', 'CUDA') else 1)" 2>/dev/null
}
use_carried_ext() {  # 0 when the carried extension was unpacked and imports (cure_ext checks its torch)
  [ $GPU = 1 ] && [ -f "$CARRY/extension.tar.gz" ] || return 1
  tar -xzf "$CARRY/extension.tar.gz" -C "$ROOT/cure_ext" || return 1
  has_ext && return 0
  echo "-- the carried extension does not import here (another torch?): building instead"
  (cd "$ROOT/cure_ext" && rm -f $(tar -tzf "$CARRY/extension.tar.gz"))
  return 1
}
ext_build() {
  echo "-- extension: python setup.py build_ext --inplace -j $NPROC (TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-none}, CURE_EXT_CUDA=${CURE_EXT_CUDA:-auto})"
  boxed "$PY" setup.py build_ext --inplace -j "$NPROC" || return
  boxed "$PY" - <<'EOF'
import torch, cure_ext
x = torch.ones(4)
kept = cure_ext.selective_step([x.clone()], [x.clone()], [x.clone()], [x.clone()], lr=0.1, percentile=0.5)
print("cpu op ok:", kept.tolist())
if torch.cuda.is_available():
    y = torch.ones(4, device="cuda")
    kept = cure_ext.selective_step([y.clone()], [y.clone()], [y.clone()], [y.clone()], lr=0.1, percentile=0.5)
    print("cuda op ok:", kept.tolist(), "on", torch.cuda.get_device_name())
EOF
}
# The built extension back in $OUTDIR, packed outside it first (a kill never leaves a partial file there).
return_ext() {
  [ $GPU = 1 ] || return 0
  (cd "$ROOT/cure_ext" && tar -czf "$WORK/extension.tar.gz" _C*.so _build_info.py) || return
  local bytes
  bytes=$(stat -c %s "$WORK/extension.tar.gz")
  if [ "$bytes" -gt $EXTENSION_MAX_BYTES ]; then
    echo "-- extension.tar.gz is $bytes bytes, over the $EXTENSION_MAX_BYTES a returned file may hold: not returned"
    detail "build: extension.tar.gz ($bytes bytes) too large to come back"
    return 0
  fi
  cp "$WORK/extension.tar.gz" "$OUTDIR/extension.tar.gz"
  detail "build: extension.tar.gz ($bytes bytes) returned; carry it: bash bench/gpu_carry.sh --extension <it>"
}
ensure_ext() { has_ext || use_carried_ext || ext_build; }

CMAKE_DIR=$ROOT/build/gpu_check_cmake
cmake_build() {
  local cuda=OFF
  [ $GPU = 1 ] && cuda=ON
  echo "-- cmake -DCURE_EXT_CUDA=$cuda (CUDA architectures 90 on a GPU)"
  boxed cmake -S "$ROOT" -B "$CMAKE_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCURE_EXT_CUDA=$cuda \
    -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null || boxed cmake -S "$ROOT" -B "$CMAKE_DIR" -DCMAKE_BUILD_TYPE=Release \
    -DCURE_EXT_CUDA=$cuda -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null || return
  boxed cmake --build "$CMAKE_DIR" -j "$NPROC"
}

# ---- the steps
step_build() {
  if use_carried_ext; then
    echo "carried: $(cd "$ROOT/cure_ext" && ls _C*.so) from .gpu_carry/extension.tar.gz, no build"
    exit 80
  fi
  # The C++ tree (ctest, sanitizer program) builds beside the extension, so later steps do not wait.
  cmake_build > "$WORK/cmake.log" 2>&1 &
  local cmake_pid=$! ext_rc cmake_rc
  ext_build && return_ext
  ext_rc=$?
  wait $cmake_pid
  cmake_rc=$?
  cat "$WORK/cmake.log"
  [ $ext_rc = 0 ] && [ $cmake_rc = 0 ]
}

step_ctest() {
  cmake_build || return
  boxed ctest --test-dir "$CMAKE_DIR" --output-on-failure || return
  [ $GPU = 1 ] || cpu_only "no GPU: C++ CPU tests passed, CUDA tests not built"
}

step_pytest() {
  [ $GPU = 1 ] || skip "no GPU: the CUDA pytest tests need one (here they are collected and skip)"
  ensure_ext || return
  # test_cuda.py, and every device-parameterised test's cuda cases; -rfE lists every failure and error.
  boxed "$PY" -m pytest -q -rfE -p no:cacheprovider -k cuda python_tests > "$WORK/pytest.out" 2>&1
  local rc=$?
  cat "$WORK/pytest.out"
  grep -E '^(FAILED|ERROR) ' "$WORK/pytest.out" | cut -c1-200 | sed 's/^/pytest: /' >> "$WORK/details"
  [ $rc = 0 ] || detail "pytest: $(tail -n 1 "$WORK/pytest.out")"
  return $rc
}

# Each tool gets its own box (SANITIZER_BOX) within the step's; one that no longer fits is reported, not run.
step_sanitize() {
  [ $GPU = 1 ] || skip "no GPU: compute-sanitizer needs one"
  command -v compute-sanitizer >/dev/null || { echo "compute-sanitizer not on PATH"; return 1; }
  cmake_build || return
  local tool rc failed=0 refused=0 results=()
  for tool in memcheck racecheck synccheck initcheck; do
    if [ $((STEP_DEADLINE - SECONDS)) -lt "${SANITIZER_BOX[$tool]}" ]; then
      results+=("$tool not run (no time left)"); continue
    fi
    echo "-- compute-sanitizer --tool $tool cuda_step_test --small"
    timeout --kill-after=5 "${SANITIZER_BOX[$tool]}" compute-sanitizer --tool "$tool" --error-exitcode 1 \
      "$CMAKE_DIR/cuda_step_test" --small > "$WORK/$tool.out" 2>&1
    rc=$?
    cat "$WORK/$tool.out"
    if grep -q "Device not supported" "$WORK/$tool.out"; then
      results+=("$tool unavailable"); refused=$((refused + 1))
    elif [ $rc = 0 ]; then
      results+=("$tool ok")
    else
      results+=("$tool FAILED (exit $rc)"); failed=1
    fi
  done
  detail "sanitize: $(IFS=,; echo "${results[*]}" | sed 's/,/, /g')"
  echo "${results[*]}"
  [ $failed = 0 ] || return 1
  [ $refused = 0 ] || { echo "compute-sanitizer: Device not supported ($refused tools)"; exit 79; }
}

bench_step() {  # $@: options of python -m bench; the record is written outside $OUTDIR, then copied
  [ $GPU = 1 ] || skip "no GPU: python -m bench --devices cuda needs one"
  ensure_ext || return
  boxed "$PY" -m bench --devices cuda --out "$WORK/record.json" "$@" || return
  cp "$WORK/record.json" "$OUTDIR/record.json"
}
step_bench() { bench_step --quick; }
step_bench-full() { bench_step; }

# Tiny CIFAR-10 batches in the data set's own pickle format (python_tests/test_train_data.py's writer).
write_cifar() {
  "$PY" - "$1" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "python_tests")
from test_train_data import cifar_rows, write_pickle
root = Path(sys.argv[1]) / "cifar-10-batches-py"
root.mkdir(parents=True, exist_ok=True)
for i in range(1, 6):
    write_pickle(root / f"data_batch_{i}", {b"batch_label": b"synthetic", b"labels": [(i + j) % 10 for j in range(64)],
                                            b"data": cifar_rows(64, i)})
write_pickle(root / "test_batch", {b"labels": [j % 10 for j in range(64)], b"data": cifar_rows(64, 99)})
print("synthetic CIFAR-10 (320 train, 64 test images) in", root)
EOF
}

# One short run through every layer a GPU run adds: torchrun's process group (nccl on a GPU, gloo here),
# the CUDA kernels under bf16 autocast.
step_train() {
  ensure_ext || return
  write_cifar "$WORK/data" || return
  local args=(--dataset cifar10 --data-dir "$WORK/data" --method cure --pretrain-epochs 0 --epochs 1
              --batch-size 64 --val-size 64 --test-limit 64 --eval-limit 64 --attack-steps 2 --eval-steps 2
              --quiet --out "$WORK/run")
  if [ $GPU = 1 ]; then
    args+=(--device cuda --model resnet18 --train-limit 256 --bf16)
  else
    args+=(--device cpu --model cnn --train-limit 64)
  fi
  echo "-- torchrun, 1 process: cure-train ${args[*]}"
  boxed "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m cure_ext.train "${args[@]}" || return
  [ $GPU = 1 ] || cpu_only "no GPU: CURE under torchrun (gloo) ran on the CPU (cnn, fp32)"
}

[ $GPU = 1 ] && echo "gpu_check: $GPU_NAME, $NPROC cores, budget ${BUDGET}s" || echo "gpu_check: no GPU: dry run, CUDA parts skipped"
for s in "${STEPS[@]}"; do
  if [[ " ${SELECTED[*]} " == *" $s "* ]]; then run_step "$s"; else note "$s" "-" 0 "not selected"; fi
done
finish
exit $FAILED
