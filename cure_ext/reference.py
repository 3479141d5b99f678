"""Pure-PyTorch reference of `cure_ext.selective_step` (SPEC §2), written for clarity, one tensor at a
time: the oracle of the tests and the baseline of the benchmarks. Same signature and semantics."""
from __future__ import annotations

import math

import torch

from .ops import validate


def score_dtype(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic type of SPEC §2: float64 for float64 tensors, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def prominence(nat: torch.Tensor, adv: torch.Tensor, alpha: float, score: str) -> torch.Tensor:
    """The score, with each product and the sum rounded separately (separate ops: no FMA)."""
    dt = score_dtype(nat.dtype)
    a, b = nat.to(dt), adv.to(dt)
    if score == "abs":
        a, b = a.abs(), b.abs()
    c_nat = torch.tensor(alpha, dtype=dt, device=a.device)
    c_adv = torch.tensor(1.0 - alpha, dtype=dt, device=a.device)  # subtraction in double, then rounded
    return torch.add(torch.mul(a, c_nat), torch.mul(b, c_adv))


def keep_mask(s: torch.Tensor, percentile: float) -> torch.Tensor:
    """True where the entry is updated: score >= the element of rank k = floor(percentile * n)."""
    n = s.numel()
    k = math.floor(percentile * n)
    if k == 0:
        return torch.ones_like(s, dtype=torch.bool)
    if k == n:
        return torch.zeros_like(s, dtype=torch.bool)
    # torch.sort orders NaN after +inf and -0 equal to +0, which is the order of SPEC §2.
    t = torch.sort(s.flatten()).values[k]
    # s >= NaN is False, and NaN entries rank at or above any threshold: keep them explicitly.
    return (s >= t) | torch.isnan(s)


def selective_step(params, grads, nat_grads, adv_grads, momentum_buffers=None, revision_params=None, *, lr,
                   momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, percentile=0.3, alpha=0.1,
                   score="abs", conserve="grad", selective=None, revise=False, revision_decay=0.999):
    params, grads, nat_grads, adv_grads, momentum_buffers, revision_params, o = validate(
        params, grads, nat_grads, adv_grads, momentum_buffers, revision_params, lr=lr, momentum=momentum,
        dampening=dampening, weight_decay=weight_decay, nesterov=nesterov, percentile=percentile, alpha=alpha,
        score=score, conserve=conserve, selective=selective, revise=revise, revision_decay=revision_decay)
    device = params[0].device if params else torch.device("cpu")
    kept = torch.zeros(len(params), dtype=torch.int64, device=device)
    with torch.no_grad():
        for i, p in enumerate(params):
            dt = score_dtype(p.dtype)
            if o["selective"][i]:
                mask = keep_mask(prominence(nat_grads[i], adv_grads[i], o["alpha"], o["score"]), o["percentile"])
            else:
                mask = torch.ones_like(p, dtype=torch.bool)
            kept[i] = mask.sum()

            theta = p.to(dt)
            g = torch.where(mask, grads[i].to(dt), torch.zeros((), dtype=dt, device=p.device))
            d = g + o["weight_decay"] * theta
            if o["momentum"] > 0:
                m = o["momentum"] * momentum_buffers[i].to(dt) + (1.0 - o["dampening"]) * d
                d = d + o["momentum"] * m if o["nesterov"] else m
                new_m = m
            new_theta = theta - o["lr"] * d
            if o["conserve"] == "freeze":
                new_theta = torch.where(mask, new_theta, theta)
                if o["momentum"] > 0:
                    new_m = torch.where(mask, new_m, momentum_buffers[i].to(dt))
            p.copy_(new_theta)
            if o["momentum"] > 0:
                momentum_buffers[i].copy_(new_m)
            if o["revise"]:
                rev = revision_params[i]
                rev.copy_(o["revision_decay"] * rev.to(dt) + (1.0 - o["revision_decay"]) * p.to(dt))
    return kept
