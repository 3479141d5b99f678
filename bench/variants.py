"""The step variants compared by the benchmark, each a callable `fn(set_index)` over pre-generated input
sets (bench.shapes.StepInputs) that performs one full optimizer step on the tensors of that set.

- fused:              cure_ext.selective_step (one call for all tensors)
- reference:          cure_ext.reference.selective_step (the pure-PyTorch oracle, sort per tensor)
- torch_step:         a plain per-tensor torch step: score with elementwise ops, torch.kthvalue threshold,
                      masked SGD-momentum + EMA with elementwise in-place ops, tensor by tensor
- torch_foreach_step: the same selection per tensor, then the update and EMA with torch._foreach_* ops
- official:           the authors' code's way: per tensor the score is copied to the host and thresholded
                      with numpy.percentile, the gradient is zeroed by a boolean index (`g[s < thr] = 0`),
                      then torch.optim.SGD.step() (default implementation), then the EMA loop
                      `r.mul_(d).add_(p, alpha=1 - d)`
- sgd_fused / sgd_foreach: torch.optim.SGD(fused=True / foreach=True) with no selection and no EMA, the
                      floor of a plain optimizer step
- kthvalue / topk:    threshold-only selection (score + per-tensor torch.kthvalue / torch.topk), no update

All variants use the same hyper-parameters, score and selective tensors. The SGD optimizers are given the
sets' momentum buffers as their state, so no variant allocates a second copy of the model state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List

import numpy as np
import torch

import cure_ext
from cure_ext import reference

from .shapes import StepInputs


@dataclass
class StepConfig:
    selective: List[bool]
    percentile: float = 0.3
    alpha: float = 0.1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    score: str = "abs"
    conserve: str = "grad"
    revise: bool = True
    revision_decay: float = 0.999

    def op_kwargs(self, **override) -> dict:
        kw = dict(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, percentile=self.percentile,
                  alpha=self.alpha, score=self.score, conserve=self.conserve, selective=self.selective,
                  revise=self.revise, revision_decay=self.revision_decay)
        kw.update(override)
        return kw


def _score(nat: torch.Tensor, adv: torch.Tensor, cfg: StepConfig) -> torch.Tensor:
    if cfg.score == "abs":
        return torch.abs(nat).mul_(cfg.alpha).add_(torch.abs(adv), alpha=1.0 - cfg.alpha)
    return torch.mul(nat, cfg.alpha).add_(adv, alpha=1.0 - cfg.alpha)


def _k(n: int, cfg: StepConfig) -> int:
    return math.floor(cfg.percentile * n)


def _masked_grads(inp: StepInputs, cfg: StepConfig) -> List[torch.Tensor]:
    """Per tensor: score, torch.kthvalue threshold (rank k, 0-based), gradient zeroed where score < t."""
    out = []
    for j, g in enumerate(inp.grads):
        n = g.numel()
        k = _k(n, cfg)
        if not cfg.selective[j] or k == 0:
            out.append(g)
        elif k == n:
            out.append(torch.zeros_like(g))
        else:
            s = _score(inp.nat_grads[j], inp.adv_grads[j], cfg)
            t = torch.kthvalue(s.view(-1), k + 1).values
            out.append(torch.where(s >= t, g, 0.0))
    return out


def make_variants(sets: List[StepInputs], cfg: StepConfig) -> Dict[str, Callable[[int], object]]:
    decay = cfg.revision_decay

    def op_call(step_fn, **overrides):
        # One call of the op (fused or reference) over input set i.
        def call(i):
            s = sets[i]
            return step_fn(s.params, s.grads, s.nat_grads, s.adv_grads, s.momentum_buffers, s.revision_params,
                           **cfg.op_kwargs(**overrides))
        return call

    fused = op_call(cure_ext.selective_step)
    fused_norevise = op_call(cure_ext.selective_step, revise=False)
    ref = op_call(reference.selective_step)

    def torch_step(i):
        s = sets[i]
        with torch.no_grad():
            for j, g in enumerate(_masked_grads(s, cfg)):
                p, m = s.params[j], s.momentum_buffers[j]
                d = torch.add(g, p, alpha=cfg.weight_decay)
                m.mul_(cfg.momentum).add_(d)
                p.add_(m, alpha=-cfg.lr)
                if cfg.revise:
                    s.revision_params[j].mul_(decay).add_(p, alpha=1.0 - decay)

    def torch_foreach_step(i):
        s = sets[i]
        with torch.no_grad():
            d = torch._foreach_add(_masked_grads(s, cfg), s.params, alpha=cfg.weight_decay)
            torch._foreach_mul_(s.momentum_buffers, cfg.momentum)
            torch._foreach_add_(s.momentum_buffers, d)
            torch._foreach_add_(s.params, s.momentum_buffers, alpha=-cfg.lr)
            if cfg.revise:
                torch._foreach_mul_(s.revision_params, decay)
                torch._foreach_add_(s.revision_params, s.params, alpha=1.0 - decay)

    def sgd(**flags):
        opts = []
        for s in sets:
            for p, g in zip(s.params, s.grads):
                p.grad = g
            opt = torch.optim.SGD(s.params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **flags)
            for p, m in zip(s.params, s.momentum_buffers):
                opt.state[p]["momentum_buffer"] = m
            opts.append(opt)
        return opts

    sgd_fused_opts, sgd_foreach_opts, official_opts = sgd(fused=True), sgd(foreach=True), sgd()

    def official(i):
        s = sets[i]
        with torch.no_grad():
            for j, g in enumerate(s.grads):
                if cfg.selective[j]:
                    score = _score(s.nat_grads[j], s.adv_grads[j], cfg)
                    thr = np.percentile(score.float().cpu().numpy(), 100.0 * cfg.percentile)  # numpy has no bf16
                    g[score < thr] = 0  # boolean-index assignment, as in the authors' RGP.fuse_grads
        official_opts[i].step()
        with torch.no_grad():
            if cfg.revise:
                for r, p in zip(s.revision_params, s.params):
                    r.mul_(decay).add_(p, alpha=1.0 - decay)

    def thresholds(kind):
        def run(i):
            s = sets[i]
            out = []
            for j, nat in enumerate(s.nat_grads):
                n, k = nat.numel(), _k(nat.numel(), cfg)
                if not cfg.selective[j] or k == 0 or k == n:
                    continue
                sc = _score(nat, s.adv_grads[j], cfg).view(-1)
                if kind == "kthvalue":
                    out.append(torch.kthvalue(sc, k + 1).values)
                else:
                    out.append(torch.topk(sc, k + 1, largest=False, sorted=False).values.max())
            return out
        return run

    return {
        "fused": fused,
        "fused_norevise": fused_norevise,
        "reference": ref,
        "torch_step": torch_step,
        "torch_foreach_step": torch_foreach_step,
        "official": official,
        "sgd_fused": lambda i: sgd_fused_opts[i].step(),
        "sgd_foreach": lambda i: sgd_foreach_opts[i].step(),
        "kthvalue": thresholds("kthvalue"),
        "topk": thresholds("topk"),
    }


def floor_bytes(sets_item: StepInputs, cfg: StepConfig) -> int:
    """SPEC §6 byte floor of one step: per element read θ, g, m (+ g_nat, g_adv when selective), write θ, m,
    at least one selection pass over the score inputs (8 B, selective tensors) and, when revising,
    read + write θ_rev (8 B). Bytes scale with the element size of each tensor."""
    total = 0
    for j, p in enumerate(sets_item.params):
        e = p.element_size()
        per = 3 + 2  # read θ, g, m; write θ, m
        if cfg.selective[j] and 0 < _k(p.numel(), cfg) < p.numel():
            per += 2 + 2  # read g_nat, g_adv in the update pass + one selection pass over them
        elif cfg.selective[j]:
            per += 0  # k == 0 or k == n: no score is needed
        if cfg.revise:
            per += 2
        total += per * e * p.numel()
    return total
