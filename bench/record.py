"""One device's record (SPEC §5): every section measured in turn, with the facts of the machine, and its
atomic write."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import time
from pathlib import Path
from typing import List, Optional

import torch

from cure_ext.train.report import write_json_atomic

from . import overhead, scaling, timing
from .machine import device_name, git_commit, loadavg, slug
from .settings import Settings, log
from .step_section import step_benchmark

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def measure_device(device: torch.device, models: List[str], args) -> dict:
    st = Settings(device, args.quick, args.tiny)
    name = device_name(device)
    log(f"== {name} ({device.type}), torch {torch.__version__}, {torch.get_num_threads()} threads"
        + (" [quick]" if args.quick else "") + (" [tiny shapes]" if args.tiny else ""))
    record: dict = {
        "device": name,
        "device_type": device.type,
        "date": _dt.date.today().isoformat(),
        "timestamp": _dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "commit": git_commit(),
        "quick": bool(args.quick),
        "tiny_shapes": bool(args.tiny),
        "cpu_count": os.cpu_count(),
        "loadavg_start": loadavg(),
    }
    bw = timing.copy_bandwidth(device, st.copy_bytes, st.copy_budget)
    record["copy_bandwidth"] = bw
    log(f"  copy bandwidth: {bw['gbps']:.1f} GB/s ({bw['bytes'] / 2**20:.0f} MiB moved per copy)")

    elapsed = record["elapsed_s"] = {}
    if "overhead" not in args.skip:
        t0 = time.perf_counter()
        record["overhead"] = overhead.overhead_benchmark(device, quick=args.quick, log=log)
        elapsed["overhead"] = round(time.perf_counter() - t0, 1)
    record["step"] = {}
    for model in ([] if "step" in args.skip else models):
        t0 = time.perf_counter()
        try:
            record["step"][model] = step_benchmark(model, st, bw["gbps"], bf16="bf16" not in args.skip)
        except Exception as exc:  # e.g. out of memory: keep the other parts of the run
            log(f"  [{model}] FAILED: {type(exc).__name__}: {exc}")
            record["step"][model] = {"error": f"{type(exc).__name__}: {exc}"}
            gc.collect()
        elapsed[f"step.{model}"] = round(time.perf_counter() - t0, 1)
    if "scaling" not in args.skip:
        t0 = time.perf_counter()
        record["scaling"] = scaling.scaling_benchmark(st, bw["gbps"])
        elapsed["scaling"] = round(time.perf_counter() - t0, 1)
    if "iteration" not in args.skip:
        from . import iteration
        t0 = time.perf_counter()
        record["iteration"] = iteration.iteration_benchmark(device, quick=args.quick, tiny=args.tiny)
        elapsed["iteration"] = round(time.perf_counter() - t0, 1)
        it = record["iteration"]
        log("  [iteration] " + (it["error"] if "error" in it else
                                f"{it['workload']}: CURE {it['cure_ms']:.1f} ms, TRADES {it['trades_ms']:.1f} ms, "
                                f"PGD-AT {it['pgd_at_ms']:.1f} ms"))
    record["loadavg_end"] = loadavg()
    log("  elapsed: " + ", ".join(f"{k} {v:.0f}s" for k, v in elapsed.items())
        + f"; load average {record['loadavg_start']} -> {record['loadavg_end']} on {os.cpu_count()} CPUs")
    return record


def write_record(record: dict, out: Optional[str]) -> Path:
    """The record as JSON at `out` (a .json path), in the folder `out` or in bench/results/, named
    <device>-<date>[-quick].json; written atomically (a temporary file beside it, renamed over it)."""
    name = f"{slug(record['device'])}-{record['date']}" + ("-quick" if record["quick"] else "") + ".json"
    if out and out.endswith(".json"):
        path = Path(out)
    else:
        path = (Path(out) if out else RESULTS_DIR) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, str(path))
    return path
