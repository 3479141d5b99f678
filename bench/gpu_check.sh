#!/usr/bin/env bash
# One command for a GPU machine with PyTorch but no network (issues 12 and 14): builds the extension in
# place, runs ctest with the CUDA tests, the CUDA pytest tests, compute-sanitizer memcheck and racecheck on
# a small program that reaches every kernel, short CURE / TRADES / bf16 / torchrun training runs on
# synthetic CIFAR-shaped data, and `python -m bench` on the GPU (last: the longest). Each step is time-boxed inside one overall budget;
# the first failure stops the run and prints the end of its log. Without a GPU every CUDA part reports
# "skipped" and the rest runs on the CPU (a dry run; CI keeps one).
#
#   bench/gpu_check.sh [--out DIR] [--only STEP,...] [--budget SECONDS] [--no-gpu] [--list]
#
# DIR (default $OUT, else ./gpu_check_out) receives at most 8 files, one folder deep: summary.txt,
# record.json (SPEC §5's benchmark record) and one log per step. Build trees go to build/ (git-ignored),
# data and training runs to a scratch folder under $TMPDIR. A carried .gpu_carry/site (bench/gpu_carry.sh) joins PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

STEPS=(build ctest pytest sanitize train bench)  # the benchmark last: the longest, and only timing
declare -A BOX=([build]=300 [ctest]=150 [pytest]=200 [sanitize]=180 [bench]=240 [train]=200)
OUTDIR=${OUT:-$ROOT/gpu_check_out}
ONLY=""
BUDGET=470  # seconds for the whole call: the device call that runs it allows 8 minutes
FORCE_NO_GPU=0

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUTDIR=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --no-gpu) FORCE_NO_GPU=1; shift ;;
    --list) printf '%s\n' "${STEPS[@]}"; exit 0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$ONLY" ]; then
  for s in ${ONLY//,/ }; do
    [[ " ${STEPS[*]} " == *" $s "* ]] || { echo "gpu_check: --only: unknown step '$s' (steps: ${STEPS[*]})" >&2; exit 2; }
  done
fi
[[ "$BUDGET" =~ ^[0-9]+$ ]] || { echo "gpu_check: --budget must be a whole number of seconds" >&2; exit 2; }
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
[ -d "$ROOT/.gpu_carry/site" ] && export PYTHONPATH="$ROOT/.gpu_carry/site${PYTHONPATH:+:$PYTHONPATH}"
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
fi

SUMMARY=()
note() { SUMMARY+=("$(printf '%-9s %-8s %5s  %s' "$1" "$2" "$3" "$4")"); }
finish() {
  {
    echo "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname): ${GPU_NAME:-no GPU (dry run)}, $NPROC cores, torch $("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda or "cpu")' 2>/dev/null)"
    printf '%-9s %-8s %5s  %s\n' step status secs log
    printf '%s\n' "${SUMMARY[@]}"
    echo "total ${1}s of ${BUDGET}s budget; outputs in $OUTDIR"
  } > "$OUTDIR/summary.txt"
  rm -rf "$WORK"
  echo
  cat "$OUTDIR/summary.txt"
}

selected() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# Runs step $1's function, time-boxed by the smaller of its box and what is left of the budget,
# logging to $OUTDIR/$1.log. Status: ok, skipped (the function returns 77), cpu-only (78: its CPU part
# passed, its CUDA part skipped), FAILED, TIMEOUT.
run_step() {
  local step=$1 log="$OUTDIR/$1.log" t0=$SECONDS rc left box
  left=$((BUDGET - (SECONDS - START)))
  box=${BOX[$step]}
  [ "$left" -lt "$box" ] && box=$left
  if [ "$box" -le 5 ]; then
    note "$step" TIMEOUT 0 "budget spent before the step"
    echo "== $step: no budget left" >&2
    finish $((SECONDS - START)); exit 1
  fi
  echo "== $step (at most ${box}s)"
  STEP_DEADLINE=$((SECONDS + box))
  ( "step_$step" ) > "$log" 2>&1
  rc=$?
  local secs=$((SECONDS - t0))
  case $rc in
    0) note "$step" ok "$secs" "$(basename "$log")" ;;
    77) note "$step" skipped "$secs" "$(tail -n 1 "$log")" ;;
    78) note "$step" cpu-only "$secs" "$(tail -n 1 "$log")" ;;
    *)
      local what=FAILED
      [ $rc = 124 ] || [ $rc = 137 ] && what=TIMEOUT
      note "$step" "$what" "$secs" "$(basename "$log") (exit $rc)"
      echo "== $step $what (exit $rc); end of $log:"
      tail -n 60 "$log"
      finish $((SECONDS - START)); exit 1 ;;
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

# ---- build trees shared by steps (each step builds what it needs, so --only works on a bare machine)
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
ensure_ext() {
  "$PY" -c "import torch, cure_ext, sys; sys.exit(0 if not torch.cuda.is_available() or torch._C._dispatch_has_kernel_for_dispatch_key('cure_ext::selective_step', 'CUDA') else 1)" 2>/dev/null \
    && return 0
  ext_build
}
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
  # The C++ tree (ctest, sanitizer program) builds beside the extension, so later steps do not wait.
  cmake_build > "$WORK/cmake.log" 2>&1 &
  local cmake_pid=$! ext_rc cmake_rc
  ext_build
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
  # test_cuda.py, and every device-parameterised test's cuda cases.
  boxed "$PY" -m pytest -x -q -p no:cacheprovider -k cuda python_tests
}

step_sanitize() {
  [ $GPU = 1 ] || skip "no GPU: compute-sanitizer needs one"
  command -v compute-sanitizer >/dev/null || { echo "compute-sanitizer not on PATH"; return 1; }
  cmake_build || return
  local tool
  for tool in memcheck racecheck; do
    echo "-- compute-sanitizer --tool $tool cuda_step_test --small"
    boxed compute-sanitizer --tool "$tool" --error-exitcode 1 "$CMAKE_DIR/cuda_step_test" --small || return
  done
}

step_bench() {
  [ $GPU = 1 ] || skip "no GPU: python -m bench --devices cuda needs one"
  ensure_ext || return
  boxed "$PY" -m bench --devices cuda --out "$OUTDIR/record.json"
}

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

step_train() {
  ensure_ext || return
  write_cifar "$WORK/data" || return
  local device=cpu model=cnn limit=64
  if [ $GPU = 1 ]; then device=cuda model=resnet18 limit=256; fi
  local common=(--dataset cifar10 --data-dir "$WORK/data" --model "$model" --pretrain-epochs 0 --epochs 1
                --batch-size 64 --train-limit "$limit" --val-size 64 --test-limit 64 --eval-limit 64 --attack-steps 2
                --eval-steps 2 --quiet)
  local name args
  for name in cure trades cure-bf16 torchrun; do
    args=(--device "$device" --out "$WORK/runs/$name")
    case $name in
      cure) args+=(--method cure) ;;
      trades) args+=(--method trades) ;;
      cure-bf16) [ $GPU = 1 ] || { echo "-- $name: skipped (bf16 autocast is CUDA-only)"; continue; }
                 args+=(--method cure --bf16) ;;
      torchrun) args+=(--method cure) ;;
    esac
    echo "-- $name ($device, $model)"
    if [ $name = torchrun ]; then
      # One process: on a GPU the nccl group's path (issue 14); here gloo.
      boxed "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m cure_ext.train "${common[@]}" "${args[@]}" \
        || return
    else
      boxed "$PY" -m cure_ext.train "${common[@]}" "${args[@]}" || return
    fi
  done
  [ $GPU = 1 ] || cpu_only "no GPU: CURE, TRADES and torchrun (gloo) ran on the CPU (cnn), bf16 not"
}

[ $GPU = 1 ] && echo "gpu_check: $GPU_NAME, $NPROC cores, budget ${BUDGET}s" || echo "gpu_check: no GPU: dry run, CUDA parts skipped"
for s in "${STEPS[@]}"; do
  if selected "$s"; then run_step "$s"; else note "$s" "-" 0 "not selected"; fi
done
finish $((SECONDS - START))
