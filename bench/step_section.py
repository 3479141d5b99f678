"""The step section of a record (`step.<model>`): every step variant on one model's parameter shapes,
measured round-robin in one group, with the byte floor, bandwidth, ratios over the fused op and counts of
operators, launches and host syncs; and the same op against the reference and the official-style step on
bfloat16 operands (`step.<model>.bf16`)."""
from __future__ import annotations

import dataclasses
import gc
import time
from typing import Dict, Optional

import torch

from . import counting, shapes, timing
from .settings import Settings, log
from .variants import StepConfig, floor_bytes, make_variants

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
# The bf16 section: the op and the two steps it replaces (the rest are fp32 questions).
BF16_VARIANTS = ("fused", "reference", "official")


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def step_benchmark(model: str, st: Settings, copy_gbps: float, bf16: bool) -> dict:
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

    if bf16:
        rec["bf16"] = bf16_section(sets, cfg, st, model)
    del sets, variants, ovar
    gc.collect()
    return rec


def bf16_section(fp32_sets, cfg: StepConfig, st: Settings, model: str) -> dict:
    """Fused vs reference vs official-style with every operand in bfloat16 (a pure-bf16 model): the fp32
    sets rounded, which costs less than generating new ones (WRN-34-10: seconds per set on the host)."""
    sets = [shapes.StepInputs(*([t.to(torch.bfloat16) for t in getattr(s, f.name)] for f in dataclasses.fields(s)))
            for s in fp32_sets]
    variants = make_variants(sets, cfg)
    errors: Dict[str, str] = {}
    results = timing.measure_group({n: timing.Entry(variants[n]) for n in BF16_VARIANTS}, st.n_sets, st.device,
                                   st.scaled(0.5 if model == "resnet18" else 1.0), errors=errors)
    rec: dict = {"dtype": "bfloat16"}
    for name in BF16_VARIANTS:
        rec[STEP_KEYS[name]] = results[name].median_ms if name in results else None
    rec["ratios"] = {name: ratio(rec[STEP_KEYS[name]], rec["fused_ms"]) for name in BF16_VARIANTS[1:]}
    if errors:
        rec["errors"] = errors
    log(f"  [{model}] bf16: " + ", ".join(f"{n} {rec[STEP_KEYS[n]]:.3f} ms" for n in BF16_VARIANTS
                                          if rec[STEP_KEYS[n]] is not None))
    del sets, variants
    gc.collect()
    return rec
