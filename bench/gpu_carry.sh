#!/usr/bin/env bash
# Fills .gpu_carry/ (git-ignored) with what the GPU machine lacks and cannot fetch (no network there):
# the AutoAttack sources (pyautoattack's modules, and fra31's `autoattack` if installed) as plain Python
# files under .gpu_carry/site, which bench/gpu_check.sh puts on PYTHONPATH. Everything else is on that
# machine's image (torch, numpy, scipy, pytest, ninja, cmake, ...) or made by gpu_check.sh itself (the
# synthetic CIFAR batches). Name .gpu_carry in the device call's carry list.
#
#   bash bench/gpu_carry.sh [--extension FILE] [--fashion-mnist]
#
# --extension FILE: the extension.tar.gz a device call returned (bench/gpu_check.sh's build step: the
# cure_ext/_C*.so built there and its cure_ext/_build_info.py), copied as .gpu_carry/extension.tar.gz;
# gpu_check.sh and fashion_mnist_study.sh unpack it into cure_ext/ instead of building, when it was built
# against that machine's torch.
# --fashion-mnist also copies the Fashion-MNIST IDX files (30 MB, Debian's dataset-fashion-mnist) into
# .gpu_carry/fashion-mnist, for bench/fashion_mnist_study.sh.
set -euo pipefail
fmnist=0
extension=""
while [ $# -gt 0 ]; do
  case "$1" in
    --fashion-mnist) fmnist=1; shift ;;
    --extension)
      [ $# -ge 2 ] && [ -f "$2" ] || { echo "gpu_carry: --extension needs the returned extension.tar.gz" >&2; exit 2; }
      members=$(tar -tzf "$2") || { echo "gpu_carry: --extension $2 is no .tar.gz" >&2; exit 2; }
      grep -qx '_build_info.py' <<< "$members" || { echo "gpu_carry: --extension $2 holds no _build_info.py" >&2; exit 2; }
      extension=$(mktemp)  # a copy: the folder it may lie in (.gpu_carry) is emptied below
      cp "$2" "$extension"; chmod 644 "$extension"; shift 2 ;;
    *) echo "gpu_carry: unknown option $1" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
dest=.gpu_carry
rm -rf "$dest"
mkdir -p "$dest/site"
python3 - "$dest/site" <<'EOF_PY'
import importlib.util
import shutil
import sys
from pathlib import Path

site = Path(sys.argv[1])
for name in ("pyautoattack", "autoattack"):
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        print(f"{name}: not installed here, not carried")
        continue
    src = Path(list(spec.submodule_search_locations)[0])
    files = sorted(src.glob("*.py"))  # the package's modules; examples, caches and data stay behind
    (site / name).mkdir()
    for f in files:
        shutil.copy2(f, site / name / f.name)
    print(f"{name}: {len(files)} modules from {src}")
EOF_PY
if [ $fmnist = 1 ]; then
  src=/usr/share/datasets/fashion-mnist
  [ -f "$src/train-images-idx3-ubyte.gz" ] || { echo "no Fashion-MNIST in $src: apt-get install dataset-fashion-mnist" >&2; exit 1; }
  mkdir -p "$dest/fashion-mnist"
  cp "$src"/*-ubyte.gz "$dest/fashion-mnist/"
  echo "fashion-mnist: $(ls "$dest/fashion-mnist" | wc -l) files from $src"
fi
if [ -n "$extension" ]; then
  mv "$extension" "$dest/extension.tar.gz"
  echo "extension: $(tar -tzf "$dest/extension.tar.gz" | tr '\n' ' ')in $dest/extension.tar.gz"
fi
size=$(du -sk "$dest" | cut -f1)
echo "$dest: ${size} KiB (the device call carries at most 64 MiB with the working tree)"
