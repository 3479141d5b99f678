#!/usr/bin/env bash
# Fashion-MNIST at full budget on one GPU (issue 15): CURE against standard training, PGD-AT, TRADES (β = 1
# and 6), CURE with the official selection, CURE with β = 5 (the authors' code) and CURE's two ablations,
# 3 seeds each, every method starting from the same natural pre-training per seed. A small CNN leaves an
# H200 nearly idle, so the runs go side by side as processes (`cure-compare --jobs`), inside a deadline;
# cure-compare rewrites its table as each run finishes, so a study cut short keeps what it finished.
#
#   bash bench/fashion_mnist_study.sh [--out DIR] [--data-dir DIR] [--budget S] [--epochs N]
#        [--pretrain-epochs N] [--jobs N] [--device D] [--dry-run]
#
# --budget: seconds for the whole study (default 500; the runs get it less 40 s for the report).
# --dry-run: a tiny version of the same command on the CPU (small limits, 2 seeds), to check the plumbing.
# Out (at most 8 files, for the device tool's $OUT): table.txt, compare.json, compare.csv, tradeoff.png,
# update_fraction.png (one CURE run's per-layer "% updated"), study.md (commands, device, date), study.log.
set -uo pipefail
cd "$(dirname "$0")/.."

out=${OUT:-runs/fashion-mnist-study}
data_dir=""
budget=500
epochs=20
pretrain_epochs=5
jobs=30
device=cuda
dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --data-dir) data_dir=$2; shift 2 ;;
    --budget) budget=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --pretrain-epochs) pretrain_epochs=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --dry-run) dry=1; shift ;;
    *) echo "fashion_mnist_study: unknown option $1" >&2; exit 2 ;;
  esac
done
# The device machine has no network: the data and the AutoAttack provider travel in .gpu_carry
# (bench/gpu_carry.sh fills it).
[ -d .gpu_carry/site ] && export PYTHONPATH="$PWD/.gpu_carry/site${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "$data_dir" ]; then
  data_dir=/usr/share/datasets/fashion-mnist
  [ -d .gpu_carry/fashion-mnist ] && data_dir=.gpu_carry/fashion-mnist
fi
mkdir -p "$out"
runs=$(mktemp -d)  # the runs' folders (checkpoints): too many and too large to come back whole
log="$out/study.log"

protocol=(--dataset fashion-mnist --data-dir "$data_dir" --model cnn --eps 0.1 --attack-steps 10
          --attack-step-size 0.025 --batch-size 128 --pretrain-epochs "$pretrain_epochs" --epochs "$epochs")
seeds=(--seeds 0 1 2)
if [ "$dry" = 1 ]; then
  device=cpu; jobs=2
  protocol=(--dataset fashion-mnist --data-dir "$data_dir" --model cnn --eps 0.1 --attack-steps 2
            --pretrain-epochs 1 --epochs 1 --train-limit 300 --test-limit 100 --val-size 60)
  seeds=(--seeds 0 1)
fi
rows=(--methods standard pgd-at trades cure --ablations
      --variant "trades-beta6=trades:beta=6"
      --variant "cure-official-select=cure:select=official"
      --variant "cure-beta5=cure:beta=5")
autoattack=()  # AutoAttack where a provider is there (carried); not in the dry run (CPU minutes, tested elsewhere)
if [ "$dry" = 0 ] && { python3 -c "import pyautoattack" 2>/dev/null || python3 -c "import autoattack" 2>/dev/null; }; then
  autoattack=(--autoattack)
fi
# A bare device machine: gpu_check's build step, in this call; it unpacks a carried
# .gpu_carry/extension.tar.gz (bench/gpu_carry.sh --extension) instead of building, where one is there.
if [ "$device" = cuda ]; then
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  python3 -c "import cure_ext" 2>/dev/null || bash bench/gpu_check.sh --only build --out "$runs/build" >/dev/null \
    || { echo "fashion_mnist_study: the build failed ($runs/build)" >&2; exit 1; }
fi
# Python code run from here (the checkout) starts without the current folder on sys.path, which `python3 -c`
# puts first: after a non-editable install, the source folder cure_ext/ would shadow the installed package.
pyc() { python3 -c "import sys
if sys.path[0] == '': del sys.path[0]
$1" "${@:2}"; }
compare=(pyc "from cure_ext.train.cli import compare_main; sys.exit(compare_main())")
args=("${rows[@]}" "${seeds[@]}" "${protocol[@]}" --device "$device" "${autoattack[@]}" --jobs "$jobs"
      --deadline $((budget - 40)) --out "$runs/study")

started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
echo "== cure-compare ${args[*]}" | tee "$log"
"${compare[@]}" "${args[@]}" >> "$log" 2>&1  # each run's end as it comes, then the table
status=$?
for f in compare.json compare.csv tradeoff.png; do
  [ -f "$runs/study/$f" ] && cp "$runs/study/$f" "$out/"
done
[ -f "$out/compare.json" ] && pyc "
import json
from cure_ext.train.compare import compare_table
result = json.load(open(sys.argv[1]))
print(compare_table(result))
for run in result.get('unfinished', []):
    print(f\"not finished: {run['run']} ({run['reason']})\")" "$out/compare.json" > "$out/table.txt"
# the per-layer "% updated" of one CURE run (the first seed that finished)
for s in 0 1 2; do
  if [ -f "$runs/study/cure/seed$s/update_fraction.png" ]; then
    cp "$runs/study/cure/seed$s/update_fraction.png" "$out/update_fraction.png"; break
  fi
done
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
{
  echo "# Fashion-MNIST study"
  echo
  echo "- started: $started; finished: $(date -u +%Y-%m-%dT%H:%M:%SZ); exit status of cure-compare: $status"
  echo "- device: ${gpu:-$device (no GPU)}; torch $(python3 -c 'import torch; print(torch.__version__)')"
  echo "- command: \`cure-compare ${args[*]}\` (runs under a scratch folder; this folder keeps the results)"
  echo
  echo '```'
  cat "$out/table.txt" 2>/dev/null
  echo '```'
} > "$out/study.md"
rm -rf "$runs"
tail -n 3 "$log"
cat "$out/table.txt" 2>/dev/null
exit $status
