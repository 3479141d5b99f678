"""`cure_ext.selective_step`: argument validation, the fake kernel, and the call into the C++ op.

The wrapper checks the arguments that are not tensors; the op checks every tensor while it builds its
slots, before writing any, so a bad call leaves every tensor untouched (SPEC §2). When the op refuses a
call, the wrapper's own per-tensor checks find the argument and index to name.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

SCORES = ("abs", "signed")
CONSERVES = ("grad", "freeze")
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_tensor(t, name: str, i: int, ref: Optional[torch.Tensor], who: str = "selective_step") -> None:
    where = f"{name}[{i}]"
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{who}: {where} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{who}: {where} must be a dense (strided) tensor, got layout {t.layout}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{who}: {where} has dtype {t.dtype}; supported: float32, float64, float16, bfloat16")
    if ref is None:
        return
    if t.shape != ref.shape:
        raise ValueError(f"{who}: {where} has shape {tuple(t.shape)}, params[{i}] has {tuple(ref.shape)}")
    if t.dtype != ref.dtype:
        raise ValueError(f"{who}: {where} has dtype {t.dtype}, params[{i}] has {ref.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{who}: {where} is on {t.device}, params[{i}] is on {ref.device}")


def _check_list(values, name: str, n: Optional[int] = None) -> list:
    if type(values) is not list:  # the common case first: isinstance(x, Sequence) costs microseconds
        if isinstance(values, (torch.Tensor, str)) or not isinstance(values, Sequence):
            raise TypeError(f"selective_step: {name} must be a list, got {type(values).__name__}")
        values = list(values)
    if n is not None and len(values) != n:
        raise ValueError(f"selective_step: {name} has {len(values)} entries, params has {n}")
    return values


def check_float(value, name: str, low: Optional[float] = None, high: Optional[float] = None,
                 who: str = "selective_step") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{who}: {name} must be a float, got {type(value).__name__}")
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        bounds = f"in [{low}, {high}]" if high is not None else (f">= {low}" if low is not None else "finite")
        raise ValueError(f"{who}: {name} must be {bounds}, got {value}")
    return float(value)


def check_options(who: str, *, lr, momentum, dampening, weight_decay, nesterov, percentile, alpha, score, conserve,
                  revision_decay) -> dict:
    """The step's scalar options (SPEC §2), normalised to floats; errors start with `who` (the op, or
    CURESGD checking them at construction)."""
    options = dict(lr=check_float(lr, "lr", 0.0, who=who),
                   momentum=check_float(momentum, "momentum", 0.0, who=who),
                   dampening=check_float(dampening, "dampening", who=who),
                   weight_decay=check_float(weight_decay, "weight_decay", 0.0, who=who),
                   percentile=check_float(percentile, "percentile", 0.0, 1.0, who=who),
                   alpha=check_float(alpha, "alpha", 0.0, 1.0, who=who),
                   revision_decay=check_float(revision_decay, "revision_decay", 0.0, 1.0, who=who))
    if not isinstance(nesterov, bool):
        raise TypeError(f"{who}: nesterov must be a bool")
    if nesterov and (options["momentum"] <= 0.0 or options["dampening"] != 0.0):
        raise ValueError(f"{who}: nesterov requires momentum > 0 and dampening == 0")
    if score not in SCORES:
        raise ValueError(f"{who}: score must be one of {SCORES}, got {score!r}")
    if conserve not in CONSERVES:
        raise ValueError(f"{who}: conserve must be one of {CONSERVES}, got {conserve!r}")
    return dict(options, nesterov=nesterov, score=score, conserve=conserve)


def check_arguments(params, grads, nat_grads, adv_grads, momentum_buffers, revision_params, *, lr, momentum,
                    dampening, weight_decay, nesterov, percentile, alpha, score, conserve, selective, revise,
                    revision_decay):
    """Every check of SPEC §2 that does not look inside a list's tensors (the C++ op checks those while
    it builds its slots, before writing anything); returns the normalised list arguments."""
    params = _check_list(params, "params")
    n = len(params)
    grads = _check_list(grads, "grads", n)
    nat_grads = _check_list(nat_grads, "nat_grads", n)
    adv_grads = _check_list(adv_grads, "adv_grads", n)
    if selective is None:
        selective = [True] * n
    selective = _check_list(selective, "selective", n)
    if not set(map(type, selective)) <= {bool}:
        i, flag = next((i, f) for i, f in enumerate(selective) if type(f) is not bool)
        raise TypeError(f"selective_step: selective[{i}] must be a bool, got {type(flag).__name__}")

    options = check_options("selective_step", lr=lr, momentum=momentum, dampening=dampening,
                            weight_decay=weight_decay, nesterov=nesterov, percentile=percentile, alpha=alpha,
                            score=score, conserve=conserve, revision_decay=revision_decay)
    if not isinstance(revise, bool):
        raise TypeError("selective_step: revise must be a bool")

    if momentum_buffers is None:
        if options["momentum"] > 0.0:
            raise ValueError("selective_step: momentum_buffers are required when momentum > 0")
        momentum_buffers = []
    else:
        momentum_buffers = _check_list(momentum_buffers, "momentum_buffers", n)
    if revision_params is None:
        if revise:
            raise ValueError("selective_step: revision_params are required when revise=True")
        revision_params = []
    else:
        revision_params = _check_list(revision_params, "revision_params", n)
    return (params, grads, nat_grads, adv_grads, momentum_buffers, revision_params,
            dict(options, selective=selective, revise=revise))


def check_tensors(params, grads, nat_grads, adv_grads, momentum_buffers, revision_params, selective,
                  who: str = "selective_step", index: Optional[Sequence[int]] = None) -> None:
    """The per-tensor checks of SPEC §2 on normalised lists (momentum_buffers/revision_params may be empty).
    index: the number each list position is called by in errors (default the position)."""
    shown = range(len(params)) if index is None else index
    for i, p in enumerate(params):
        _check_tensor(p, "params", shown[i], None, who)
        if p.device != params[0].device:
            raise ValueError(f"{who}: params[{shown[i]}] is on {p.device}, params[{shown[0]}] is on {params[0].device}")
    for i, p in enumerate(params):
        k = shown[i]
        _check_tensor(grads[i], "grads", k, p, who)
        for name, values in (("nat_grads", nat_grads), ("adv_grads", adv_grads)):
            if values[i] is None:
                if selective[i]:
                    raise ValueError(f"{who}: {name}[{k}] is None but params[{k}] is selective")
            else:
                _check_tensor(values[i], name, k, p, who)
        for name, values in (("momentum_buffers", momentum_buffers), ("revision_params", revision_params)):
            if values:
                _check_tensor(values[i], name, k, p, who)


def validate(params, grads, nat_grads, adv_grads, momentum_buffers, revision_params, **options):
    """Checks a call against SPEC §2 and returns the normalised list arguments."""
    checked = check_arguments(params, grads, nat_grads, adv_grads, momentum_buffers, revision_params, **options)
    check_tensors(*checked[:6], checked[6]["selective"])
    return checked


def selective_step(params, grads, nat_grads, adv_grads, momentum_buffers=None, revision_params=None, *, lr,
                   momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, percentile=0.3, alpha=0.1,
                   score="abs", conserve="grad", selective=None, revise=False, revision_decay=0.999):
    """Fused CURE step (SPEC §2) over all tensors at once; updates params, momentum_buffers and
    revision_params in place and returns `kept`, the int64 count of updated entries per tensor."""
    checked = check_arguments(
        params, grads, nat_grads, adv_grads, momentum_buffers, revision_params, lr=lr, momentum=momentum,
        dampening=dampening, weight_decay=weight_decay, nesterov=nesterov, percentile=percentile, alpha=alpha,
        score=score, conserve=conserve, selective=selective, revise=revise, revision_decay=revision_decay)
    params, grads, nat_grads, adv_grads, momentum_buffers, revision_params, opts = checked
    if not params:  # no tensor to dispatch on
        return torch.zeros(0, dtype=torch.int64)
    try:
        with torch.no_grad():
            return torch.ops.cure_ext.selective_step(
                params, grads, nat_grads, adv_grads, momentum_buffers, revision_params, opts["lr"],
                opts["momentum"], opts["dampening"], opts["weight_decay"], opts["nesterov"], opts["percentile"],
                opts["alpha"], opts["score"], opts["conserve"], opts["selective"], opts["revise"],
                opts["revision_decay"])
    except Exception as err:  # the op (or the dispatcher) refused the tensors before writing any
        failure = err
    # Word the SPEC's error, naming the argument and index; a call that passes every check failed
    # for another reason, which is raised as it came.
    check_tensors(*checked[:6], opts["selective"])
    raise failure


@torch.library.register_fake("cure_ext::selective_step")
def _selective_step_fake(params, grads, nat_grads, adv_grads, momentum_buffers, revision_params, lr, momentum,
                         dampening, weight_decay, nesterov, percentile, alpha, score, conserve, selective, revise,
                         revision_decay):
    # Tensors on the meta device among real ones dispatch here: the same per-tensor checks as the op's.
    check_tensors(params, grads, nat_grads, adv_grads, momentum_buffers, revision_params, selective)
    device = params[0].device if len(params) else torch.device("cpu")
    return torch.empty(len(params), dtype=torch.int64, device=device)
