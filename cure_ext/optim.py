"""`CURESGD`: a torch.optim.Optimizer over the fused selective step.

One call of the op per param group and step. The optimizer owns what the op leaves to its caller
(SPEC §2 step 5): the Bernoulli(revision_rate) draw from its own seeded generator, and the warm-up decay
min(1 - 1/(t+1), revision_decay) with t the 1-based step count.
"""
from __future__ import annotations

import copy
import operator
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
        _check_options(defaults, "CURESGD")  # as torch.optim does, before any group is built
        super().__init__(params, defaults)  # each group checked by add_param_group
        self._step_fn = _STEPS[implementation]
        self._generator = torch.Generator().manual_seed(seed)
        self._step_count = 0
        self.last_kept: Optional[torch.Tensor] = None
        self._plans: list = []  # per param group, the tensor lists of its last step (_GroupPlan)
        all_params = self._all_params()
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

    def add_param_group(self, param_group: dict) -> None:
        """torch.optim's, once the group's options (its own and the defaults it takes) are checked."""
        if isinstance(param_group, dict) and "params" in param_group:
            params = param_group["params"]
            if not isinstance(params, set):  # torch.optim refuses sets with its own message
                param_group = dict(param_group, params=[params] if isinstance(params, torch.Tensor) else list(params))
                group = {**self.defaults, **param_group}
                _check_options(group, f"CURESGD: param group {len(self.param_groups)}")
                self._selective_flags(group)
        super().add_param_group(param_group)

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
        """One step of every group. Everything is checked before anything is written: the first group's
        call checks its own tensors before writing (and a refusal restores the revision draw); every later
        group is checked here first (in Python, a few µs per tensor: the price of several groups)."""
        if closure is not None:
            raise ValueError("CURESGD.step takes no closure: pass the score gradients instead")
        total = sum(len(group["params"]) for group in self.param_groups)
        if nat_grads is None or adv_grads is None:
            self._refuse_missing_score_grads()
        nat_grads = list(nat_grads) if nat_grads is not None else [None] * total
        adv_grads = list(adv_grads) if adv_grads is not None else [None] * total
        for name, values in (("nat_grads", nat_grads), ("adv_grads", adv_grads)):
            if len(values) != total:
                raise ValueError(f"CURESGD.step: {name} has {len(values)} entries, "
                                 f"the optimizer has {total} parameters")
        if len(self._plans) != len(self.param_groups):
            self._plans = [None] * len(self.param_groups)
        calls, offset = [], 0
        for g, group in enumerate(self.param_groups):
            grads = [p.grad for p in group["params"]]
            plan = self._plans[g]
            if plan is None or not plan.fits(self, group, grads):
                plan = self._plans[g] = _GroupPlan(self, group, grads)
            calls.append((g, plan, plan.arguments(offset, grads, nat_grads, adv_grads)))
            offset += len(group["params"])
        writers = [call for call in calls if call[1].params]
        for g, plan, args in writers[1:]:
            _check_options(plan.group, f"CURESGD: param group {g}")
            plan.check(*args)
        t = self._step_count + 1
        draws_before = self._generator.get_state()
        draw = torch.rand((), generator=self._generator).item()
        kept_parts = []
        for g, plan, (index, grads, nat, adv) in calls:
            group, kept = plan.group, None
            if plan.params:
                try:
                    kept = self._step_fn(
                        plan.params, grads, nat, adv, plan.buffers, plan.revisions, lr=group["lr"],
                        momentum=group["momentum"], dampening=group["dampening"],
                        weight_decay=group["weight_decay"], nesterov=group["nesterov"],
                        percentile=group["percentile"], alpha=group["alpha"], score=group["score"],
                        conserve=group["conserve"], selective=plan.flags, revise=draw < group["revision_rate"],
                        revision_decay=min(1.0 - 1.0 / (t + 1), group["revision_decay"]))
                except Exception as refusal:  # refused before writing: nothing of this step stays
                    self._generator.set_state(draws_before)
                    self._plans[g] = None
                    _reword(plan, (index, grads, nat, adv), refusal)
                plan.commit()
            if plan.chosen is not None or kept is None:  # skipped parameters count 0 kept entries
                group_kept = torch.zeros(len(plan.all_params), dtype=torch.int64,
                                         device=kept.device if kept is not None else None)
                if kept is not None:
                    group_kept[plan.chosen] = kept
                kept = group_kept
            kept_parts.append(kept)
        self._step_count = t
        # torch.optim refuses an optimizer without parameters: there is at least one group.
        self.last_kept = kept_parts[0] if len(kept_parts) == 1 else torch.cat(kept_parts)
        return self.last_kept

    def _refuse_missing_score_grads(self) -> None:
        """step() called like plain SGD while a parameter with a gradient is selective."""
        index = 0
        for group in self.param_groups:
            for p, flag in zip(group["params"], self._selective_flags(group)):
                if flag and p.grad is not None:
                    raise ValueError(
                        f"CURESGD.step: parameter {index} is selective, so the step needs the score gradients: "
                        "call opt.step(nat_grads, adv_grads), one entry per parameter in the optimizer's order "
                        "(None where not selective), or make its group non-selective (selective=False) for "
                        "a plain SGD step")
                index += 1

    def _revision(self, p: torch.Tensor) -> torch.Tensor:
        # Parameters of groups added after construction start their revision copy here.
        state = self.state[p]
        if "revision" not in state:
            state["revision"] = p.detach().clone()
        return state["revision"]

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
        # Checked before anything is written: torch's loader replaces the state as soon as it is called.
        saved = state_dict.get("state", {})
        for i, p in enumerate(self._all_params()):
            revision = saved.get(i, {}).get("revision")
            if not isinstance(revision, torch.Tensor) or revision.shape != p.shape:
                raise ValueError(f"CURESGD.load_state_dict: parameter {i} has no revision tensor of its shape "
                                 f"{tuple(p.shape)}")
        try:
            step = int(cure["step"])
            torch.Generator(self._generator.device).set_state(cure["generator"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"CURESGD.load_state_dict: the 'cure' entry's step or generator is not valid ({e})") from None
        external = self.revision_tensors() if self._external_revision else None
        super().load_state_dict(state_dict)
        for i, p in enumerate(self._all_params()):
            loaded = self.state[p]["revision"]
            if external is not None:
                # The revision model's own tensors must stay the ones the caller holds.
                external[i].copy_(loaded)
                self.state[p]["revision"] = external[i]
        self._step_count = step
        self._generator.set_state(cure["generator"])


def _check_options(group: dict, who: str) -> None:
    """A group's options (or the defaults), as the op would check them, and the revision rate."""
    ops.check_options(who, **{k: group[k] for k in _OPTIONS})
    ops.check_float(group["revision_rate"], "revision_rate", 0.0, 1.0, who=who)
    flags = group["selective"]
    if not isinstance(flags, bool) and (isinstance(flags, (str, torch.Tensor)) or not isinstance(flags, Sequence)):
        raise ValueError(f"{who}: selective must be a bool or one bool per parameter, got {type(flags).__name__}")


def _reword(plan: "_GroupPlan", args: tuple, refusal: Exception) -> None:
    """Raise the op's refusal as the error of the user's index (the op counts within the call's lists)."""
    try:
        plan.check(*args)
    except (TypeError, ValueError) as worded:
        raise worded from None
    raise refusal


_OPTIONS = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "percentile", "alpha", "score", "conserve",
            "revision_decay")


class _GroupPlan:
    """The lists one param group hands to the op, kept across steps: building them costs a state lookup
    per tensor (a Python-level hash each), more than the fused step of small tensors. Rebuilt when
    anything they come from changes: the group dict or its params list (by identity, entry by entry),
    which params have a gradient, momentum on/off, the selective flags, or the optimizer's state dict
    (load_state_dict installs a new one). State tensors it has to create (momentum buffers, revision
    copies of added groups) enter the optimizer's state only once its first step went through."""

    def __init__(self, opt: CURESGD, group: dict, grads: list):
        self.group, self.state, self.all_params = group, opt.state, list(group["params"])
        self.has_grad = [g is not None for g in grads]
        self.use_momentum = group["momentum"] > 0
        self.selective = copy.copy(group["selective"])
        flags = opt._selective_flags(group)
        self.chosen = None if all(self.has_grad) else [j for j, has in enumerate(self.has_grad) if has]
        chosen = range(len(self.all_params)) if self.chosen is None else self.chosen
        self.params = [self.all_params[j] for j in chosen]
        self.flags = [flags[j] for j in chosen]
        self.new_state: list = []  # (param, key, tensor) not in the optimizer's state yet
        self.buffers = [self._own(p, "momentum_buffer") for p in self.params] if self.use_momentum else None
        self.revisions = [self._own(p, "revision") for p in self.params]

    def _own(self, p: torch.Tensor, key: str) -> torch.Tensor:
        held = self.state[p].get(key) if p in self.state else None
        if held is None:
            held = p.detach().clone() if key == "revision" else torch.zeros_like(p, memory_format=torch.preserve_format)
            self.new_state.append((p, key, held))
        return held

    def commit(self) -> None:
        for p, key, tensor in self.new_state:
            self.state[p][key] = tensor
        self.new_state = []

    def arguments(self, offset: int, grads: list, nat_grads: list, adv_grads: list) -> tuple:
        """(the user's index of each stepped parameter, grads, nat, adv) for this step's call."""
        n = len(self.all_params)
        if self.chosen is None:  # every parameter has a gradient
            return (range(offset, offset + n), grads, nat_grads[offset:offset + n], adv_grads[offset:offset + n])
        index = [offset + j for j in self.chosen]
        return index, [grads[j] for j in self.chosen], [nat_grads[i] for i in index], [adv_grads[i] for i in index]

    def check(self, index, grads: list, nat: list, adv: list) -> None:
        ops.check_tensors(self.params, grads, nat, adv, self.buffers or [], self.revisions, self.flags,
                          who="CURESGD.step", index=index)

    def fits(self, opt: CURESGD, group: dict, grads: list) -> bool:
        params = group["params"]
        return (group is self.group and opt.state is self.state and len(params) == len(self.all_params)
                and all(map(operator.is_, params, self.all_params))
                and [g is not None for g in grads] == self.has_grad
                and (group["momentum"] > 0) == self.use_momentum and group["selective"] == self.selective)
