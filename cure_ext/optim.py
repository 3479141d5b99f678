"""`CURESGD`: a torch.optim.Optimizer over the fused selective step.

One call of the op per param group and step. The optimizer owns what the op leaves to its caller
(SPEC §2 step 5): the Bernoulli(revision_rate) draw from its own seeded generator, and the warm-up decay
min(1 - 1/(t+1), revision_decay) with t the 1-based step count.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import ops, reference

_STEPS = {"fused": ops.selective_step, "reference": reference.selective_step}


class CURESGD(torch.optim.Optimizer):
    """SGD with momentum whose update is masked by gradient prominence, plus a stochastic EMA
    revision model.

    `step(nat_grads, adv_grads)` takes the score gradients as sequences aligned with every parameter
    of every group, in construction order (None for non-selective ones); `p.grad` is the gradient that
    updates `p`. Parameters whose `.grad` is None are skipped. A group's `selective` is a bool or one
    bool per parameter. `revision_params`, when given, are the tensors of the revision model (e.g.
    `list(ema_model.parameters())`), updated in place; otherwise the optimizer keeps its own copies.
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, percentile: float = 0.3, alpha: float = 0.1,
                 score: str = "abs", conserve: str = "grad", selective=True, revision_rate: float = 0.2,
                 revision_decay: float = 0.999, revision_params: Optional[Sequence[torch.Tensor]] = None,
                 seed: int = 0, implementation: str = "fused"):
        if implementation not in _STEPS:
            raise ValueError(f"CURESGD: implementation must be one of {tuple(_STEPS)}, got {implementation!r}")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, percentile=percentile, alpha=alpha, score=score, conserve=conserve,
                        selective=selective, revision_rate=revision_rate, revision_decay=revision_decay)
        super().__init__(params, defaults)
        self._step_fn = _STEPS[implementation]
        self._generator = torch.Generator().manual_seed(seed)
        self._step_count = 0
        self.last_kept: Optional[torch.Tensor] = None
        all_params = self._all_params()
        for group in self.param_groups:
            self._selective_flags(group)  # validates the flag list early
            if not 0.0 <= group["revision_rate"] <= 1.0:
                raise ValueError(f"CURESGD: revision_rate must be in [0, 1], got {group['revision_rate']}")
        self._external_revision = revision_params is not None
        if revision_params is not None:
            revision_params = list(revision_params)
            if len(revision_params) != len(all_params):
                raise ValueError(f"CURESGD: revision_params has {len(revision_params)} entries, "
                                 f"the optimizer has {len(all_params)} parameters")
            for i, (p, r) in enumerate(zip(all_params, revision_params)):
                if r.shape != p.shape or r.dtype != p.dtype or r.device != p.device:
                    raise ValueError(f"CURESGD: revision_params[{i}] does not match parameter {i} "
                                     "in shape, dtype or device")
        for i, p in enumerate(all_params):
            rev = revision_params[i] if revision_params is not None else p.detach().clone()
            self.state[p]["revision"] = rev

    def _all_params(self) -> list:
        return [p for group in self.param_groups for p in group["params"]]

    @staticmethod
    def _selective_flags(group) -> list:
        flags = group["selective"]
        n = len(group["params"])
        if isinstance(flags, bool):
            return [flags] * n
        flags = list(flags)
        if len(flags) != n or not all(isinstance(f, bool) for f in flags):
            raise ValueError(f"CURESGD: a group's selective must be a bool or {n} bools (one per parameter)")
        return flags

    def revision_tensors(self) -> list:
        """The revision model's tensors, aligned with the parameters."""
        return [self._revision(p) for p in self._all_params()]

    @torch.no_grad()
    def step(self, nat_grads: Optional[Sequence] = None, adv_grads: Optional[Sequence] = None, closure=None):
        if closure is not None:
            raise ValueError("CURESGD.step takes no closure: pass the score gradients instead")
        all_params = self._all_params()
        nat_grads = list(nat_grads) if nat_grads is not None else [None] * len(all_params)
        adv_grads = list(adv_grads) if adv_grads is not None else [None] * len(all_params)
        for name, values in (("nat_grads", nat_grads), ("adv_grads", adv_grads)):
            if len(values) != len(all_params):
                raise ValueError(f"CURESGD.step: {name} has {len(values)} entries, "
                                 f"the optimizer has {len(all_params)} parameters")
        t = self._step_count + 1
        draw = torch.rand((), generator=self._generator).item()
        kept_parts, index = [], 0
        for group in self.param_groups:
            flags = self._selective_flags(group)
            group_kept = torch.zeros(len(group["params"]), dtype=torch.int64)
            chosen = [j for j, p in enumerate(group["params"]) if p.grad is not None]
            if chosen:
                params = [group["params"][j] for j in chosen]
                buffers = None
                if group["momentum"] > 0:
                    buffers = [self._momentum_buffer(p) for p in params]
                revise = draw < group["revision_rate"]
                kept = self._step_fn(
                    params, [p.grad for p in params], [nat_grads[index + j] for j in chosen],
                    [adv_grads[index + j] for j in chosen], buffers, [self._revision(p) for p in params],
                    lr=group["lr"], momentum=group["momentum"], dampening=group["dampening"],
                    weight_decay=group["weight_decay"], nesterov=group["nesterov"],
                    percentile=group["percentile"], alpha=group["alpha"], score=group["score"],
                    conserve=group["conserve"], selective=[flags[j] for j in chosen], revise=revise,
                    revision_decay=min(1.0 - 1.0 / (t + 1), group["revision_decay"]))
                group_kept = group_kept.to(kept.device)
                group_kept[chosen] = kept
            kept_parts.append(group_kept)
            index += len(group["params"])
        self._step_count = t
        self.last_kept = torch.cat(kept_parts) if kept_parts else torch.zeros(0, dtype=torch.int64)
        return self.last_kept

    def _revision(self, p: torch.Tensor) -> torch.Tensor:
        # Parameters of groups added after construction start their revision copy here.
        state = self.state[p]
        if "revision" not in state:
            state["revision"] = p.detach().clone()
        return state["revision"]

    def _momentum_buffer(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state["momentum_buffer"]

    def state_dict(self):
        sd = super().state_dict()
        sd["cure"] = {"step": self._step_count, "generator": self._generator.get_state()}
        return sd

    @torch.no_grad()
    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        cure = state_dict.pop("cure", None)
        if cure is None:
            raise ValueError("CURESGD.load_state_dict: the state dict has no 'cure' entry (step count, generator)")
        external = self.revision_tensors() if self._external_revision else None
        super().load_state_dict(state_dict)
        for i, p in enumerate(self._all_params()):
            loaded = self.state[p].get("revision")
            if loaded is None:
                raise ValueError(f"CURESGD.load_state_dict: parameter {i} has no revision tensor")
            if external is not None:
                # The revision model's own tensors must stay the ones the caller holds.
                external[i].copy_(loaded)
                self.state[p]["revision"] = external[i]
        self._step_count = int(cure["step"])
        self._generator.set_state(cure["generator"])
