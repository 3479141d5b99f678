"""The scaling section of a record: the fused step's time against the number of tensors at a fixed total,
and against the total at a fixed count (constant launches in the tensor count, time linear in bytes)."""
from __future__ import annotations

import gc

from . import counting, shapes, timing
from .settings import Settings, log
from .variants import StepConfig, floor_bytes, make_variants


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
