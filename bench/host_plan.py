"""Host cost per call of the CUDA step's planner, measured on the CPU (the planner is plain C++, so no
GPU is needed): a call whose tensor list changed (plan built and cached) against one whose list is
unchanged (cache hit). Builds bench/plan_timing.cpp with the planner's sources (g++, or $CXX) once
per source version into a temporary folder."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Dict

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "bench" / "plan_timing.cpp", ROOT / "csrc" / "cuda" / "plan.cpp"]
HEADERS = ["csrc/cuda/plan.h", "csrc/cuda/plan_cache.h", "csrc/cuda/meta.h", "csrc/step_args.h", "csrc/cure_math.h"]


def _program() -> Path:
    """The timing program, built if its sources changed since the last build."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise RuntimeError("bench.host_plan needs a C++ compiler (g++ or $CXX) to build the planner's timing program")
    digest = hashlib.sha256(compiler.encode())
    for path in SOURCES + [ROOT / h for h in HEADERS]:
        digest.update(path.read_bytes())
    folder = Path(tempfile.gettempdir()) / f"cure_ext_plan_timing_{digest.hexdigest()[:16]}"
    exe = folder / "plan_timing"
    if not exe.exists():
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f"plan_timing.{os.getpid()}"  # renamed into place: concurrent builds never see half a file
        subprocess.run([compiler, "-O2", "-std=c++17", "-ffp-contract=off", "-I", str(ROOT / "csrc"),
                        *map(str, SOURCES), "-o", str(partial)], check=True, capture_output=True, text=True)
        os.replace(partial, exe)
    return exe


def plan_cost_us(n_tensors: int, numel: int, calls: int) -> Dict[str, float]:
    """Microseconds per call of the CUDA host path's planning for n_tensors float32 tensors of numel
    elements: first_us when the list changed (plan built, cached), cached_us when it is unchanged."""
    for name, value, least in (("n_tensors", n_tensors, 0), ("numel", numel, 0), ("calls", calls, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    out = subprocess.run([str(_program()), str(n_tensors), str(numel), str(calls)], check=True,
                         capture_output=True, text=True).stdout
    record = json.loads(out)
    return {"first_us": record["first_us"], "cached_us": record["cached_us"]}


if __name__ == "__main__":
    for tensors in (62, 512):
        print(f"{tensors} tensors:", plan_cost_us(tensors, 16, 2000))
