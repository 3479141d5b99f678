"""`python -m bench`: every benchmark for the available devices in one run, a JSON record per device under
bench/results/ (SPEC §5) and a short table of ratios printed last."""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from . import counting, overhead, shapes, timing
from .variants import StepConfig, floor_bytes, make_variants

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MODELS = ("resnet18", "wrn34_10")
# Variants of the step benchmark and the record key each one's median lands in.
STEP_KEYS = {
    "fused": "fused_ms",
    "fused_norevise": "fused_norevise_ms",
    "reference": "reference_ms",
    "official": "official_ms",
    "torch_step": "torch_step_ms",
    "torch_foreach_step": "torch_foreach_step_ms",
    "sgd_fused": "torch_fused_sgd_ms",
    "sgd_foreach": "torch_foreach_sgd_ms",
    "kthvalue": "kthvalue_ms",
    "topk": "topk_ms",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- devices
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


@contextlib.contextmanager
def num_threads(n: Optional[int]):
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _loadavg() -> Optional[list]:
    """1/5/15-minute load averages: CPU timings of a run under load are not comparable to a quiet one."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except Exception:
        return None


# ------------------------------------------------------------------------------------------------ settings
class Settings:
    def __init__(self, device: torch.device, quick: bool, tiny: bool):
        self.device, self.quick, self.tiny = device, quick, tiny
        gpu = device.type == "cuda"
        if quick:
            self.group = timing.GroupBudget.quick()
        elif gpu:
            self.group = timing.GroupBudget(min_rounds=10, max_rounds=200, seconds=8.0, round_share_s=0.02,
                                            max_reps=20, warmup=3)
        else:
            self.group = timing.GroupBudget(min_rounds=3, max_rounds=30, seconds=15.0, round_share_s=0.1,
                                            max_reps=10, warmup=1)
        self.copy_budget = timing.Budget(min_runs=10, max_runs=100, seconds=1.0, warmup=2, warmup_s=0.1)
        # Input sets rotated between calls so that no variant runs out of a warm cache.
        self.n_sets = 4 if gpu and not (quick or tiny) else (1 if quick and not gpu else 2)
        self.width_divisor = 16 if tiny else 1
        mib = 1 << 20
        self.copy_bytes = 4 * mib if tiny else (1024 if gpu else 256) * mib // (4 if quick else 1)

    def scaled(self, factor: float) -> timing.GroupBudget:
        """The group budget with its time limit scaled (bigger models get more time)."""
        g = self.group
        return timing.GroupBudget(g.min_rounds, g.max_rounds, g.seconds * factor, g.round_share_s, g.max_reps,
                                  g.warmup)


# -------------------------------------------------------------------------------------------------- step
def step_benchmark(model: str, st: Settings, copy_gbps: float) -> dict:
    specs = shapes.model_specs(model, st.width_divisor)
    hyper = shapes.HYPER[model]
    cfg = StepConfig(selective=shapes.selective_flags(specs, model, "paper"), **hyper)
    t0 = time.perf_counter()
    sets = [shapes.make_inputs(specs, st.device, seed=s) for s in range(st.n_sets)]
    log(f"  [{model}] {len(specs)} tensors, {sets[0].numel:,} params, {st.n_sets} input sets "
        f"({time.perf_counter() - t0:.1f}s to generate)")
    variants = make_variants(sets, cfg)
    ocfg = StepConfig(selective=shapes.selective_flags(specs, model, "official"), score="signed", **hyper)
    ovar = make_variants(sets, ocfg)
    rec: dict = {"num_tensors": len(specs), "numel": sets[0].numel, "dtype": "float32",
                 "percentile": cfg.percentile, "alpha": cfg.alpha, "score": cfg.score, "conserve": cfg.conserve,
                 "revise": cfg.revise, "selective_tensors": sum(cfg.selective), "input_sets": st.n_sets}

    # Every variant in one interleaved group: each round runs all of them in turn.
    entries = {name: timing.Entry(fn) for name, fn in variants.items()}
    entries["official_preset.fused"] = timing.Entry(ovar["fused"])
    entries["official_preset.official"] = timing.Entry(ovar["official"])
    cpu = st.device.type == "cpu"
    default_threads = torch.get_num_threads()
    thread_counts = (1, 2) if cpu else ()
    for n in thread_counts:  # the issue-2 comparison: fused vs the per-tensor torch step, threads explicit
        if n != default_threads:
            entries[f"threads{n}.fused"] = timing.Entry(variants["fused"], threads=n)
            entries[f"threads{n}.torch_step"] = timing.Entry(variants["torch_step"], threads=n)
    t0 = time.perf_counter()
    errors: Dict[str, str] = {}
    results = timing.measure_group(entries, st.n_sets, st.device, st.scaled(1.0 if model == "resnet18" else 2.5),
                                   errors=errors)
    log(f"  [{model}] measured {len(entries)} variants in {time.perf_counter() - t0:.0f}s")
    for name, msg in errors.items():
        log(f"  [{model}] {name:<26s} FAILED: {msg}")
    if errors:
        rec["errors"] = errors
    runs = {}
    for name, t in results.items():
        runs[name] = t.as_dict()
        log(f"  [{model}] {name:<26s} {t.median_ms:10.3f} ms  (min {t.min_ms:.3f}, {t.runs} runs)")
    rec["runs"] = runs

    def med(name: str) -> Optional[float]:
        return results[name].median_ms if name in results else None

    def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return a / b if a is not None and b else None

    for name, key in STEP_KEYS.items():
        rec[key] = med(name)
    if cpu:
        rec["threads"] = {}
        for n in thread_counts:
            key = "" if n == default_threads else f"threads{n}."
            f, p = med(key + "fused"), med(key + "torch_step")
            rec["threads"][str(n)] = {"fused_ms": f, "torch_step_ms": p, "torch_step_over_fused": ratio(p, f)}
    f, o = med("official_preset.fused"), med("official_preset.official")
    rec["official_preset"] = {"score": "signed", "selective_tensors": sum(ocfg.selective), "fused_ms": f,
                              "official_ms": o, "official_over_fused": ratio(o, f)}

    # Bandwidth (SPEC §6): byte floor of the step against the copy bandwidth measured in this run.
    fb = floor_bytes(sets[0], cfg)
    rec["floor_bytes"] = fb
    rec["floor_bytes_per_param"] = fb / sets[0].numel
    rec["copy_gbps"] = copy_gbps
    rec["floor_ms"] = fb / (copy_gbps * 1e9) * 1e3
    rec["achieved_gbps"] = ratio(fb / 1e9, rec["fused_ms"] and rec["fused_ms"] * 1e-3)
    rec["bandwidth_fraction"] = ratio(rec["achieved_gbps"], copy_gbps)
    fb_norev = floor_bytes(sets[0], StepConfig(**{**cfg.__dict__, "revise": False}))
    rec["achieved_gbps_norevise"] = ratio(fb_norev / 1e9, rec["fused_norevise_ms"] and rec["fused_norevise_ms"] * 1e-3)

    # Ratios: each variant's time over the fused op's.
    rec["ratios"] = {name: ratio(rec[STEP_KEYS[name]], rec["fused_ms"]) for name in variants if name != "fused"}
    # The same from the fastest run of each variant: on a busy shared CPU the minimum is the less disturbed figure.
    fmin = results["fused"].min_ms if "fused" in results else None
    rec["ratios_min"] = {name: ratio(results[name].min_ms, fmin) for name in variants
                         if name != "fused" and name in results}

    # Launches / syncs (CUDA) and dispatched operators (both) for one step.
    rec["counts"] = {}
    for name in ("fused", "reference", "torch_step", "official"):
        if name in errors:
            continue
        fn = variants[name]
        c = counting.count_ops(lambda: fn(0))
        if st.device.type == "cuda":
            c.update(counting.count_cuda(lambda: fn(0), st.device))
        rec["counts"][name] = c
    log(f"  [{model}] counts: " + ", ".join(f"{k}: {v.get('ops')} ops" + (
        f"/{v.get('kernel_launches')} launches/{v.get('host_syncs')} syncs" if "host_syncs" in v else "")
        for k, v in rec["counts"].items()))

    del sets, variants, ovar
    gc.collect()
    return rec


# ----------------------------------------------------------------------------------------------- scaling
def scaling_benchmark(st: Settings, copy_gbps: float) -> dict:
    """Fused step time vs the number of tensors at a fixed total, and vs the total at a fixed count."""
    unit = 1 << 20
    if st.tiny:
        total, counts, sizes, fixed = unit // 16, [1, 8, 64], [unit // 64, unit // 16], 8
    elif st.quick:
        total, counts, sizes, fixed = 2 * unit, [1, 8, 64, 512], [unit, 4 * unit], 64
    else:
        total, counts, sizes, fixed = 8 * unit, [1, 8, 64, 512], [unit, 2 * unit, 4 * unit, 8 * unit, 16 * unit], 64
    out = {"by_tensors": [], "by_size": []}

    def point(n_tensors: int, numel: int, with_torch: bool) -> dict:
        specs = shapes.synthetic_specs(n_tensors, numel)
        sets = [shapes.make_inputs(specs, st.device, seed=s) for s in range(2)]
        cfg = StepConfig(selective=[True] * n_tensors, percentile=0.3, alpha=0.1)
        var = make_variants(sets, cfg)
        entries = {"fused": timing.Entry(var["fused"])}
        if with_torch:
            entries["torch_step"] = timing.Entry(var["torch_step"])
        res = timing.measure_group(entries, 2, st.device, st.scaled(0.15))
        fused = res["fused"].median_ms
        rec = {"tensors": n_tensors, "numel": numel, "fused_ms": fused,
               "achieved_gbps": floor_bytes(sets[0], cfg) / (fused * 1e-3) / 1e9}
        rec["bandwidth_fraction"] = rec["achieved_gbps"] / copy_gbps
        if with_torch:
            rec["torch_step_ms"] = res["torch_step"].median_ms
        rec["fused_ops"] = counting.count_ops(lambda: var["fused"](0))["ops"]
        if st.device.type == "cuda":
            c = counting.count_cuda(lambda: var["fused"](0), st.device)
            rec["fused_kernel_launches"] = c.get("kernel_launches")
            rec["fused_host_syncs"] = c.get("host_syncs")
        log(f"  [scaling] {n_tensors:4d} tensors, {numel / unit:5.2f}M: fused {fused:.3f} ms "
            f"({rec['achieved_gbps']:.1f} GB/s)" + (f", torch_step {rec['torch_step_ms']:.3f} ms" if with_torch else ""))
        return rec

    def safe_point(n_tensors: int, numel: int, with_torch: bool) -> dict:
        try:
            return point(n_tensors, numel, with_torch)
        except Exception as exc:  # e.g. no kernel for this device yet: keep the rest of the run
            log(f"  [scaling] {n_tensors} tensors, {numel} elements FAILED: {type(exc).__name__}: {exc}")
            return {"tensors": n_tensors, "numel": numel, "error": f"{type(exc).__name__}: {exc}"}

    for n in counts:
        out["by_tensors"].append(safe_point(n, total, with_torch=True))
    for size in sizes:
        out["by_size"].append(safe_point(fixed, size, with_torch=False))
    gc.collect()
    return out


# ------------------------------------------------------------------------------------------------ driver
def run_device(device: torch.device, models: List[str], args) -> dict:
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
        "loadavg_start": _loadavg(),
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
            record["step"][model] = step_benchmark(model, st, bw["gbps"])
        except Exception as exc:  # e.g. out of memory: keep the other parts of the run
            log(f"  [{model}] FAILED: {type(exc).__name__}: {exc}")
            record["step"][model] = {"error": f"{type(exc).__name__}: {exc}"}
            gc.collect()
        elapsed[f"step.{model}"] = round(time.perf_counter() - t0, 1)
    if "scaling" not in args.skip:
        t0 = time.perf_counter()
        record["scaling"] = scaling_benchmark(st, bw["gbps"])
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
    record["loadavg_end"] = _loadavg()
    log("  elapsed: " + ", ".join(f"{k} {v:.0f}s" for k, v in elapsed.items())
        + f"; load average {record['loadavg_start']} -> {record['loadavg_end']} on {os.cpu_count()} CPUs")
    return record


def write_record(record: dict, out: Optional[str]) -> Path:
    name = f"{slug(record['device'])}-{record['date']}" + ("-quick" if record["quick"] else "") + ".json"
    if out and out.endswith(".json"):
        path = Path(out)
    else:
        path = (Path(out) if out else RESULTS_DIR) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def _fmt(x, spec=".2f", suffix="") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:{spec}}{suffix}"


def summary_table(record: dict) -> str:
    """The short table printed last: times, ratios (variant / fused), bandwidth, iteration."""
    models = list(record["step"])
    w = 12
    lines = [f"{record['device']} ({record['device_type']}, {record['threads']} threads), torch {record['torch']}, "
             f"{record['date']}" + (" [quick]" if record["quick"] else "") + (" [tiny shapes]" if record["tiny_shapes"] else "")
             + (f", load average {record['loadavg_start'][0]} -> {record['loadavg_end'][0]}"
                if record.get("loadavg_start") and record.get("loadavg_end") else "")]
    head = f"{'':<34s}" + "".join(f"{m:>{w}s}" for m in models)
    lines.append(head)
    lines.append("-" * len(head))

    def row(label, fn):
        vals = []
        for m in models:
            try:
                vals.append(fn(record["step"][m]))
            except (KeyError, TypeError, ZeroDivisionError):
                vals.append("-")
        lines.append(f"{label:<34s}" + "".join(f"{v:>{w}s}" for v in vals))

    row("fused step (ms)", lambda r: _fmt(r["fused_ms"], ".3f"))
    row("byte floor at copy bw (ms)", lambda r: _fmt(r["floor_ms"], ".3f"))
    for name, label in (("reference", "reference / fused"), ("official", "official-style / fused"),
                        ("torch_step", "per-tensor torch step / fused"),
                        ("torch_foreach_step", "torch kthvalue+foreach / fused"),
                        ("kthvalue", "kthvalue threshold only / fused"), ("topk", "topk threshold only / fused"),
                        ("sgd_fused", "SGD(fused=True) / fused"), ("sgd_foreach", "SGD(foreach=True) / fused")):
        row(label, lambda r, n=name: _fmt(r["ratios"][n], ".2f", "x"))
    if record["device_type"] == "cpu":
        row("torch step / fused, 2 threads", lambda r: _fmt(r["threads"]["2"]["torch_step_over_fused"], ".2f", "x"))
    row("official preset: official / fused", lambda r: _fmt(r["official_preset"]["official_over_fused"], ".2f", "x"))
    row("achieved GB/s (floor bytes)", lambda r: _fmt(r["achieved_gbps"], ".1f"))
    row("bandwidth fraction of copy", lambda r: _fmt(100 * r["bandwidth_fraction"], ".1f", "%"))
    if record["device_type"] == "cuda":
        row("launches fused / reference", lambda r: f"{r['counts']['fused'].get('kernel_launches')}/"
                                                     f"{r['counts']['reference'].get('kernel_launches')}")
        row("host syncs fused / reference", lambda r: f"{r['counts']['fused'].get('host_syncs')}/"
                                                       f"{r['counts']['reference'].get('host_syncs')}")
    else:
        row("ops dispatched fused / reference", lambda r: f"{r['counts']['fused']['ops']}/{r['counts']['reference']['ops']}")
    lines.append(f"copy bandwidth: {record['copy_bandwidth']['gbps']:.1f} GB/s")
    if record.get("overhead"):
        lines += overhead.summary_lines(record["overhead"])
    it = record.get("iteration")
    if it:
        if it.get("error"):
            lines.append(f"iteration: not measured ({it['error']})")
        else:
            for key, label in (("fp32", "fp32"), ("bf16", "bf16 autocast"), ("cpu_epoch", "epoch")):
                sub = it.get(key)
                if isinstance(sub, dict) and "cure_ms" in sub:
                    lines.append(f"iteration {label} ({sub.get('workload', '')}): CURE {sub['cure_ms']:.1f} ms, "
                                 f"TRADES {sub['trades_ms']:.1f} ms, PGD-AT {_fmt(sub.get('pgd_at_ms'), '.1f')} ms, "
                                 f"CURE/TRADES {sub['cure_over_trades']:.3f}")
    return "\n".join(lines)


def markdown_table(record: dict) -> str:
    """The README's results table for one record: one column per model."""
    models = list(record["step"])

    def cell(fn):
        out = []
        for m in models:
            try:
                out.append(fn(record["step"][m]))
            except (KeyError, TypeError, ZeroDivisionError):
                out.append("-")
        return out

    ms = lambda key: (lambda r: _fmt(r[key], ".1f" if r[key] >= 10 else ".3f"))  # noqa: E731
    x = lambda fn: (lambda r: _fmt(fn(r), ".1f", "×"))  # noqa: E731
    rows = [
        ("fused step, ms", ms("fused_ms")),
        ("fused step without revision, ms", ms("fused_norevise_ms")),
        ("reference, ms", ms("reference_ms")),
        ("official-style, ms", ms("official_ms")),
        ("per-tensor torch step, ms", ms("torch_step_ms")),
        ("SGD(fused=True), no selection, ms", ms("torch_fused_sgd_ms")),
        ("byte floor at copy bandwidth, ms", ms("floor_ms")),
        ("reference / fused", x(lambda r: r["ratios"]["reference"])),
        ("official-style / fused", x(lambda r: r["ratios"]["official"])),
        ("per-tensor torch step / fused", x(lambda r: r["ratios"]["torch_step"])),
        ("torch kthvalue + foreach / fused", x(lambda r: r["ratios"]["torch_foreach_step"])),
        ("kthvalue threshold only / fused", x(lambda r: r["ratios"]["kthvalue"])),
        ("SGD(fused=True) / fused", x(lambda r: r["ratios"]["sgd_fused"])),
        ("official preset: official-style / fused", x(lambda r: r["official_preset"]["official_over_fused"])),
        ("achieved GB/s (floor bytes / fused time)", lambda r: _fmt(r["achieved_gbps"], ".1f")),
        ("fraction of copy bandwidth", lambda r: _fmt(100 * r["bandwidth_fraction"], ".1f", " %")),
    ]
    if record["device_type"] == "cpu":
        for n in ("2", "1"):
            rows.insert(1, (f"fused step, {n} thread{'s' if n != '1' else ''}, ms",
                            lambda r, n=n: _fmt(r["threads"][n]["fused_ms"], ".1f")))
        rows.append(("per-tensor torch step / fused, 1 thread",
                     x(lambda r: r["threads"]["1"]["torch_step_over_fused"])))
        rows.append(("per-tensor torch step / fused, 2 threads",
                     x(lambda r: r["threads"]["2"]["torch_step_over_fused"])))
        rows.append(("operators dispatched per step, fused / reference",
                     lambda r: f"{r['counts']['fused']['ops']} / {r['counts']['reference']['ops']}"))
    else:
        rows.append(("kernel launches per step, fused / reference",
                     lambda r: f"{r['counts']['fused']['kernel_launches']} / {r['counts']['reference']['kernel_launches']}"))
        rows.append(("host syncs per step, fused / reference / official-style",
                     lambda r: f"{r['counts']['fused']['host_syncs']} / {r['counts']['reference']['host_syncs']} / "
                               f"{r['counts']['official']['host_syncs']}"))
    lines = [f"{record['device']} ({record['device_type']}, {record['threads']} threads), torch {record['torch']}, "
             f"{record['date']}" + (", --quick" if record.get("quick") else ""), "",
             "| | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for label, fn in rows:
        lines.append(f"| {label} | " + " | ".join(cell(fn)) + " |")
    lines.append(f"\nCopy bandwidth {record['copy_bandwidth']['gbps']:.1f} GB/s"
                 + (f"; load average {record['loadavg_start'][0]} at the start, {record['loadavg_end'][0]} at the end "
                    f"on {record.get('cpu_count')} CPUs" if record.get("loadavg_start") and record.get("loadavg_end")
                    else "") + ".")
    sc = record.get("scaling")
    if sc:
        lines += ["", "Scaling of the fused step (same total split into more tensors; more elements in 64 tensors):", "",
                  "| tensors | elements | fused ms | GB/s (floor) | per-tensor torch step ms |", "|---:|---:|---:|---:|---:|"]
        for p in sc["by_tensors"] + sc["by_size"]:
            if "error" in p:
                lines.append(f"| {p['tensors']} | {p['numel'] / 2**20:.0f}M | {p['error']} | | |")
                continue
            lines.append(f"| {p['tensors']} | {p['numel'] / 2**20:.0f}M | {p['fused_ms']:.1f} | {p['achieved_gbps']:.1f} | "
                         f"{_fmt(p.get('torch_step_ms'), '.1f')} |")
    oh = record.get("overhead")
    if oh:
        names = list(overhead.VARIANTS)
        lines += ["", f"Fixed cost per call, tensors of {oh['numel']} elements"
                  + (f", {oh['threads']} thread" if oh.get("threads") else "") + " (µs; ratio over SGD(fused=True)):",
                  "", "| tensors | " + " | ".join(overhead.VARIANTS[n] for n in names) + " |",
                  "|---:|" + "---:|" * len(names)]
        for p in oh["points"]:
            lines.append(f"| {p['tensors']} | " + " | ".join(
                f"{p['us'][n]:.0f} ({p['over_sgd_fused'][n]:.2f}×)" if n in p["us"] and p["over_sgd_fused"] else "-"
                for n in names) + " |")
    it = record.get("iteration") or {}
    if "cure_ms" in it:
        lines.append(f"Training iteration ({it['workload']}): CURE {it['cure_ms']:.0f} ms, TRADES {it['trades_ms']:.0f} ms, "
                     f"PGD-AT {it['pgd_at_ms']:.0f} ms; CURE / TRADES = {it['cure_over_trades']:.2f}.")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small repeat counts and scaling sizes (CI smoke, CPU)")
    p.add_argument("--devices", default=None,
                   help="comma-separated: cpu,cuda (default: cpu, plus cuda when available)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    p.add_argument("--out", default=None,
                   help="directory for the JSON records (default bench/results/), or a .json path for one device")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: overhead,step,scaling,iteration")
    p.add_argument("--table", metavar="RECORD.json", default=None,
                   help="print the README's markdown table of an existing record and exit (no benchmark)")
    p.add_argument("--tiny", action="store_true",
                   help="testing only: the same architectures with every width divided by 16")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in args.models:
        if m not in MODELS:
            p.error(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    if args.devices is None:
        args.devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        args.devices = [d.strip() for d in args.devices.split(",") if d.strip()]
        for d in args.devices:
            if d not in ("cpu", "cuda"):
                p.error(f"unknown device {d!r}; choose cpu or cuda")
            if d == "cuda" and not torch.cuda.is_available():
                p.error("--devices cuda: torch.cuda.is_available() is False on this machine")
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = args.skip - {"overhead", "step", "scaling", "iteration"}
    if unknown:
        p.error(f"unknown --skip part(s): {', '.join(sorted(unknown))}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table:
        try:
            record = json.loads(Path(args.table).read_text())
        except (OSError, ValueError) as exc:
            print(f"python -m bench --table: cannot read {args.table}: {exc}", file=sys.stderr)
            return 2
        print(markdown_table(record))
        return 0
    t0 = time.perf_counter()
    records = []
    for d in args.devices:
        record = run_device(torch.device(d), args.models, args)
        out = args.out
        if out and out.endswith(".json") and len(args.devices) > 1:  # one file per device
            out = f"{out[:-5]}-{d}.json"
        path = write_record(record, out)
        log(f"  wrote {path}")
        records.append(record)
    log(f"total {time.perf_counter() - t0:.0f}s")
    print()
    for record in records:
        print(summary_table(record))
        print()
    return 0
