"""Fixed cost per call (`overhead` in the record): many tiny tensors, so that the time is what a call costs
before any real work (argument checks, dispatch, per-tensor set-up), next to torch's own fused SGD step
measured round-robin in the same run. On a GPU the same cost is what a ResNet-18 step mostly pays."""
from __future__ import annotations

from typing import Dict, Optional

import torch

import cure_ext

from . import host_plan, timing

COUNTS = (62, 512)  # ResNet-18's tensor count, and a large model's
NUMEL = 16
THREADS = 1  # the host cost of one thread; the pool's wake-ups would only add noise
# Record key of each variant; ratios are taken over `sgd_fused`.
VARIANTS = {
    "selective_step": "cure_ext.selective_step",
    "torch_ops": "torch.ops.cure_ext.selective_step (no Python checks)",
    "curesgd_step": "CURESGD.step",
    "sgd_fused": "torch.optim.SGD(fused=True).step",
    "foreach_add": "torch._foreach_add_ (a floor: one foreach op)",
}
HYPER = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)


def _variants(n: int, device: torch.device) -> Dict[str, timing.Entry]:
    """The calls of one point, each the CURE case of the issue: momentum, revision, every tensor selective."""
    gen = torch.Generator().manual_seed(n)

    def rand():
        return torch.randn(NUMEL, generator=gen).to(device)

    params = [torch.nn.Parameter(rand()) for _ in range(n)]
    for p in params:
        p.grad = rand()
    nat, adv = [rand() for _ in range(n)], [rand() for _ in range(n)]
    plain = [p.detach().clone() for p in params]
    grads = [p.grad.clone() for p in params]
    buffers, revisions = [torch.zeros_like(p) for p in plain], [p.clone() for p in plain]
    selective = [True] * n
    op = torch.ops.cure_ext.selective_step.default
    sgd = torch.optim.SGD([torch.nn.Parameter(p.detach().clone()) for p in params], fused=True, **HYPER)
    for q, p in zip(sgd.param_groups[0]["params"], params):
        q.grad = p.grad.clone()
    cure = cure_ext.CURESGD(params, revision_rate=1.0, **HYPER)
    fns = {
        "selective_step": lambda i: cure_ext.selective_step(plain, grads, nat, adv, buffers, revisions, revise=True,
                                                            selective=selective, **HYPER),
        "torch_ops": lambda i: op(plain, grads, nat, adv, buffers, revisions, HYPER["lr"], HYPER["momentum"], 0.0,
                                  HYPER["weight_decay"], False, 0.3, 0.1, "abs", "grad", selective, True, 0.999),
        "curesgd_step": lambda i: cure.step(nat, adv),
        "sgd_fused": lambda i: sgd.step(),
        "foreach_add": lambda i: torch._foreach_add_(plain, grads),
    }
    return {name: timing.Entry(fn, threads=THREADS) for name, fn in fns.items()}


def overhead_benchmark(device: torch.device, quick: bool = False, log=None) -> dict:
    """Per tensor count: the median µs per call of every variant and its ratio over SGD(fused=True)."""
    if quick:
        budget = timing.GroupBudget(min_rounds=2, max_rounds=4, seconds=0.5, round_share_s=0.005, max_reps=20,
                                    warmup=3)
    else:
        budget = timing.GroupBudget(min_rounds=10, max_rounds=60, seconds=8.0, round_share_s=0.03, max_reps=300,
                                    warmup=30)
    out: dict = {"numel": NUMEL, "threads": THREADS if device.type == "cpu" else None, "variants": VARIANTS,
                 "points": []}
    for n in COUNTS:
        errors: Dict[str, str] = {}
        res = timing.measure_group(_variants(n, device), 1, device, budget, errors)
        point: dict = {"tensors": n, "us": {k: t.median_ms * 1e3 for k, t in res.items()},
                       "min_us": {k: t.min_ms * 1e3 for k, t in res.items()}}
        base: Optional[float] = point["us"].get("sgd_fused")
        point["over_sgd_fused"] = {k: v / base for k, v in point["us"].items()} if base else {}
        # The CUDA host path's planner, timed on the CPU (it is host code): a changed list vs an unchanged one.
        point["cuda_plan_us"] = host_plan.plan_cost_us(n, NUMEL, 200 if quick else 5000)
        if errors:
            point["errors"] = errors
        out["points"].append(point)
        if log:
            log(f"  [overhead] {n} tensors of {NUMEL}: " + ", ".join(
                f"{k} {v:.0f} us" for k, v in point["us"].items()))
    return out


def summary_lines(overhead: dict) -> list:
    """Lines of the printed table: µs per call and the ratio over SGD(fused=True)."""
    threads = f", {overhead['threads']} thread" if overhead.get("threads") else ""
    lines = [f"fixed cost per call (tensors of {overhead['numel']} elements{threads}), us and / SGD(fused=True):"]
    for p in overhead["points"]:
        ratios = p["over_sgd_fused"]
        cells = [f"{k} {v:.0f}" + (f" ({ratios[k]:.2f}x)" if k in ratios and k != "sgd_fused" else "")
                 for k, v in p["us"].items()]
        lines.append(f"  {p['tensors']:4d} tensors: " + ", ".join(cells))
        plan = p["cuda_plan_us"]
        lines.append(f"        CUDA planner (host): {plan['first_us']:.1f} us when the list changed, "
                     f"{plan['cached_us']:.2f} us when unchanged (plan and upload reused)")
    return lines
