"""`CURE`: CURE's training step for any classifier, in the user's own loop, and the step machinery that
the trainer's CURE and TRADES steps run too (one implementation).

One step on a batch: the TRADES inner maximisation (model in eval mode), the CURE loss
CE(x) + β·KL(p(x)‖p(x_adv)) + γ·[KL(p_rev(x)‖p(x)) + KL(p_rev(x_adv)‖p(x_adv))] over forwards in train mode,
the score gradients (∇CE(x), and ∇CE(x_adv) or the official preset's ∇KL) for the selective tensors only,
∇L, a finiteness check (one host sync), then one fused `CURESGD` step (SPEC §1, §3).

The machinery takes any object with the attributes of `StepParts` (the trainer passes its StepSetup).
Under DistributedDataParallel (`forward` is the wrapper) the update gradients are averaged by DDP in the
backward pass, the score gradients by `ranks` before the step, and the finiteness verdict is shared, so
every rank makes the same update; `weight` scales a rank's loss by its share of the global batch.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional, Sequence, Union

import torch
from torch import nn
import torch.nn.functional as F

from .optim import CURESGD
from .attacks import eval_mode, trades_adversary
from .losses import CureLoss, cure_loss
from .presets import PRESETS
from .ranks import SINGLE, Ranks, current
from .rng import OwnStream, cuda_indices
from .selection import selective_flags


@dataclass
class StepResult:
    loss: torch.Tensor  # detached scalar
    logits: torch.Tensor  # detached logits of the natural inputs
    kept: Optional[torch.Tensor] = None  # CURE: entries updated per parameter tensor
    finite: bool = True  # False: the loss or a gradient was inf/NaN and no update was made


@dataclass
class StepParts:
    """What one CURE step uses. The trainer's StepSetup has the same attributes."""
    model: nn.Module  # the classifier itself (attacks run it in eval mode)
    forward: nn.Module  # the module of the training forwards: the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    params: list  # the trainable parameters, in the optimizer's order
    selective: list  # one flag per parameter
    revision_model: Optional[nn.Module]
    generator: torch.Generator  # attack random starts
    eps: float
    step_size: float
    steps: int
    beta: float
    gamma: float
    score_loss: str  # adversarial score gradient: "ce" = ∇CE(x_adv), "kl" = ∇KL_rob
    autocast: Callable[[], ContextManager] = contextlib.nullcontext
    ranks: Ranks = SINGLE


def all_finite(loss: torch.Tensor, *grad_lists) -> bool:
    """Whether the loss and every gradient are finite; one reduction and one host sync for all of them."""
    grads = [g for gl in grad_lists for g in gl if g is not None]
    norms = torch._foreach_norm(grads) if grads else []  # a norm is non-finite iff some entry is
    return bool(torch.isfinite(torch.stack([loss.detach().float(), *[n.float() for n in norms]])).all())


def backward(s, loss: torch.Tensor, weight: float) -> None:
    """The update gradients into p.grad (averaged over ranks by DDP)."""
    s.optimizer.zero_grad(set_to_none=True)
    (loss if weight == 1.0 else loss * weight).backward()


def finite_everywhere(s, loss: torch.Tensor, *grad_lists) -> bool:
    return s.ranks.all_true(all_finite(loss, *grad_lists), loss.device)


def cure_forward(s, x: torch.Tensor, y: torch.Tensor) -> tuple[CureLoss, torch.Tensor, torch.Tensor]:
    """The TRADES adversary, then the CURE loss over train-mode forwards (γ = 0: the TRADES loss)."""
    x_adv = trades_adversary(s.model, x, s.eps, s.step_size, s.steps, s.generator, s.autocast)
    s.model.train()
    with s.autocast():
        logits_nat, logits_adv = s.forward(x), s.forward(x_adv)
        rev_nat = rev_adv = None
        if s.gamma != 0:
            with torch.no_grad():
                rev_nat, rev_adv = s.revision_model(x), s.revision_model(x_adv)
        loss = cure_loss(logits_nat, logits_adv, y, s.beta, s.gamma, rev_nat, rev_adv)
    return loss, logits_nat, logits_adv


def cure_update(s, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> StepResult:
    """One CURE step: the full loss's gradient updates, the score gradients select.

    Backward passes, each over only the graph it needs: ∇CE(x) over the natural forward, the adversarial
    score gradient over the adversarial forward (paper) or both (official, ∇KL), and ∇L over both; the
    score passes only for the selective tensors. The revision model gives targets, never gradients."""
    loss, logits_nat, logits_adv = cure_forward(s, x, y)
    selected = [p for p, f in zip(s.params, s.selective) if f]
    nat_grads, adv_grads = [None] * len(s.params), [None] * len(s.params)
    if selected:
        adv_score = loss.kl_rob if s.score_loss == "kl" else F.cross_entropy(logits_adv.float(), y)
        g_nat = iter(torch.autograd.grad(loss.ce_nat, selected, retain_graph=True))
        g_adv = iter(torch.autograd.grad(adv_score, selected, retain_graph=True))
        nat_grads = [next(g_nat) if f else None for f in s.selective]
        adv_grads = [next(g_adv) if f else None for f in s.selective]
        s.ranks.average_([g for g in nat_grads + adv_grads if g is not None], weight)
    backward(s, loss.total, weight)
    grads = [p.grad for p in s.params]
    if not finite_everywhere(s, loss.total, grads, nat_grads, adv_grads):  # score gradients choose the masks
        return StepResult(loss.total.detach(), logits_nat.detach(), finite=False)
    kept = s.optimizer.step(nat_grads, adv_grads)
    return StepResult(loss.total.detach(), logits_nat.detach(), kept)


# ---- the user-facing object -------------------------------------------------------------------------------

Selective = Union[Callable[[str], bool], Sequence[bool]]


def _check_range(name: str, value, low: float, high: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        bounds = f"in [{low}, {high}]" if high != math.inf else f">= {low}"
        raise ValueError(f"CURE: {name} must be a number {bounds}, got {value!r}")


def _plain(name: str) -> str:
    """A parameter, buffer or module name without the `_orig_mod.` parts torch.compile's wrapper adds."""
    return ".".join(part for part in name.split(".") if part != "_orig_mod")


def _find_head(model: nn.Module, head) -> set:
    """The ids of the head's parameters: the last nn.Linear, a named module, or a list of parameters."""
    if head is None:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("CURE: cannot find the model's head (it has no nn.Linear): pass head= (the name of "
                             "the classifier module, or a list of its parameters), or selective=")
        module = linears[-1]
    elif isinstance(head, str):
        modules = {_plain(n): m for n, m in model.named_modules() if _plain(n)}
        module = modules.get(_plain(head))
        if module is None:
            close = difflib.get_close_matches(head, list(modules), n=5, cutoff=0.5)
            top = [n for n in modules if "." not in n]
            hint = (f"the closest: {', '.join(close)}" if close else
                    f"its top-level modules: {', '.join(top[:8])}{', ...' if len(top) > 8 else ''}")
            raise ValueError(f"CURE: head={head!r} names no module of the model ({hint})")
    else:
        try:
            params = list(head)
        except TypeError:
            params = None
        if not params or not all(isinstance(p, nn.Parameter) for p in params):
            raise ValueError("CURE: head must be None, a module name, or a non-empty list of the model's parameters")
        ids = {id(p) for p in params}
        if not ids <= {id(p) for p in model.parameters()}:
            raise ValueError("CURE: head lists a parameter that is not one of the model's")
        return ids
    ids = {id(p) for p in module.parameters()}
    if not ids:
        raise ValueError(f"CURE: head={head!r} has no parameters" if head is not None else
                         "CURE: the model's last nn.Linear has no parameters: pass head=")
    return ids


class CURE:
    """CURE for your own training loop: `out = cure.step(x, y)` attacks the batch, computes the CURE loss and
    its score gradients and makes one fused CURESGD step.

    model: any classifier (logits [batch, classes]) taking inputs in [0, 1], on the CPU or CUDA, or its
    DistributedDataParallel wrapper (score gradients then averaged across ranks). The trainable
    parameters (requires_grad) are the optimizer's, in named_parameters() order.
    preset: "paper" (score |∇CE(x)|, |∇CE(x_adv)|; every tensor selective except the head's; β 1) or
    "official" (the authors' code: signed ∇CE(x), ∇KL score; only block `*.conv1.weight` tensors selective;
    β 5). head: the classifier's module name, or a list of its parameters (default: the last nn.Linear).
    selective: a predicate on the parameter name, or one bool per trainable parameter; overrides both.
    beta: default the preset's. seed: the attack generator's seed (the optimizer's revision draws use seed + 1).

    Under torch.autocast the forwards (attack and training) run in the autocast dtype and the backward passes
    and the step in full precision, as the trainer's --bf16 does. The forwards draw their randomness (Dropout)
    from CURE's own stream, seeded seed + 2 (see rng.OwnStream): torch's global generators are left as they
    were. `state_dict()` holds the optimizer (momentum, revision tensors, revision draws' generator, step
    count), the revision model, the attack generator and that stream; save the model's own state beside it.
    """

    def __init__(self, model: nn.Module, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4,
                 eps: float = 8 / 255, step_size: float = 2 / 255, steps: int = 10, percentile: float = 0.3,
                 alpha: float = 0.1, beta: Optional[float] = None, gamma: float = 1.0, revision_rate: float = 0.2,
                 revision_decay: float = 0.999, preset: str = "paper", head=None,
                 selective: Optional[Selective] = None, seed: int = 0):
        if not isinstance(model, nn.Module):
            raise TypeError(f"CURE: model must be an nn.Module, got {type(model).__name__}")
        if preset not in PRESETS:
            raise ValueError(f"CURE: preset must be one of {tuple(PRESETS)}, got {preset!r}")
        beta = PRESETS[preset]["beta"] if beta is None else beta
        for name, value, low, high in (("lr", lr, 0, math.inf), ("momentum", momentum, 0, math.inf),
                                       ("weight_decay", weight_decay, 0, math.inf), ("eps", eps, 0, math.inf),
                                       ("step_size", step_size, 0, math.inf), ("percentile", percentile, 0, 1),
                                       ("alpha", alpha, 0, 1), ("beta", beta, 0, math.inf),
                                       ("gamma", gamma, 0, math.inf), ("revision_rate", revision_rate, 0, 1),
                                       ("revision_decay", revision_decay, 0, 1)):
            _check_range(name, value, low, high)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"CURE: steps must be an int >= 0, got {steps!r}")
        if eps >= 1:  # the ball would hold every input: eps on the 0-255 scale, most likely
            raise ValueError(f"CURE: eps={eps!r} is at or above the input range [0, 1] (inputs are in [0, 1]); "
                             f"for {eps!r}/255 pass eps={eps!r}/255 (= {eps / 255:.6g})")
        ddp = isinstance(model, nn.parallel.DistributedDataParallel)
        inner = model.module if ddp else model
        named = [(n, p) for n, p in inner.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("CURE: model has no trainable parameters")
        tensors = [t for _, t in named] + list(inner.buffers())
        if any(t.is_meta for t in tensors):
            raise ValueError("CURE: the model's parameters are on the meta device (they hold no values): "
                             "materialise them first (model.to_empty(device=...), then load its weights)")
        names, params = [n for n, _ in named], [p for _, p in named]
        flags = self._selective(inner, names, params, preset, head, selective)
        # Everything is checked: now build.
        revision_model = copy.deepcopy(inner).requires_grad_(False).train()
        rev_params = dict(revision_model.named_parameters())
        score = PRESETS[preset]["score"]
        optimizer = CURESGD([{"params": params, "selective": flags}], lr=lr, momentum=momentum,
                            weight_decay=weight_decay, percentile=percentile, alpha=alpha, score=score,
                            revision_rate=revision_rate, revision_decay=revision_decay,
                            revision_params=[rev_params[n] for n in names], seed=seed + 1)
        ranks = current() if ddp else SINGLE
        generator = torch.Generator(params[0].device).manual_seed(seed)
        self._devices = {t.device for t in tensors}
        self._stream = OwnStream(seed + 2, self._devices)
        self.names = names
        self._parts = StepParts(inner, model, optimizer, params, flags, revision_model, generator, eps, step_size,
                                steps, beta, gamma, "kl" if preset == "official" else "ce", ranks=ranks)
        self._checked = False

    @staticmethod
    def _selective(model: nn.Module, names: list, params: list, preset: str, head, selective) -> list:
        if selective is not None:
            if callable(selective):
                return [bool(selective(n)) for n in names]
            flags = list(selective) if isinstance(selective, (list, tuple)) else None
            if flags is None or len(flags) != len(names) or not all(isinstance(f, bool) for f in flags):
                raise ValueError(f"CURE: selective must be a predicate on the parameter name or a list of "
                                 f"{len(names)} bools (one per trainable parameter, in named_parameters() order)")
            return flags
        if preset == "official":
            return selective_flags(names, "official", lambda n: False)
        head_ids = _find_head(model, head)
        by_name = {n: id(p) for n, p in zip(names, params)}
        return selective_flags(names, "paper", lambda n: by_name[n] in head_ids)

    # The model, its optimizer and revision model, and the attack generator.
    model = property(lambda self: self._parts.model)
    optimizer = property(lambda self: self._parts.optimizer)
    revision_model = property(lambda self: self._parts.revision_model)
    generator = property(lambda self: self._parts.generator)
    selective = property(lambda self: list(self._parts.selective))

    def step(self, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        """One CURE step on the batch (x in [0, 1], y class indices). out.loss: the loss (detached);
        out.kept: entries updated per parameter tensor; out.finite False: the loss or a gradient was not
        finite and nothing was updated."""
        devices = [*self._devices, x.device] if isinstance(x, torch.Tensor) else list(self._devices)
        if not self._checked:
            with torch.random.fork_rng(devices=cuda_indices(devices)):  # the check's draws are discarded
                self._check_batch(x, y)
            self._checked = True
        with self._stream.active(devices):
            return self._update(x, y)

    def _update(self, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        parts, device = self._parts, x.device.type
        if not torch.is_autocast_enabled(device):
            return cure_update(parts, x, y)
        dtype = torch.get_autocast_dtype(device)
        parts = dataclasses.replace(parts, autocast=lambda: torch.autocast(device, dtype=dtype))
        try:
            with torch.autocast(device, enabled=False):
                return cure_update(parts, x, y)
        finally:
            # The enclosing autocast caches its casts of the weights until it exits: they are stale now.
            torch.clear_autocast_cache()

    def _check_batch(self, x, y) -> None:
        """The first batch, and the model's outputs on it in eval mode (the attack's) and in train mode (the
        training forwards'), checked without changing anything: the train-mode forward runs on copies of
        the buffers, so no BatchNorm statistics move."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
            raise ValueError("CURE.step: x must be a floating-point batch of inputs [batch, ...]")
        if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.dtype != torch.int64 \
                or len(y) != len(x):
            raise ValueError(f"CURE.step: y must hold one int64 class index per input ({len(x)}), "
                             f"got {getattr(y, 'dtype', type(y).__name__)} of shape {tuple(getattr(y, 'shape', ()))}")
        device = self._parts.params[0].device
        if x.is_meta or y.is_meta:
            raise ValueError("CURE.step: x and y must hold values, got tensors on the meta device")
        if x.device != device or y.device != device:
            raise ValueError(f"CURE.step: x and y must be on the model's device ({device}), "
                             f"got x on {x.device}, y on {y.device}")
        low, high = float(x.min()), float(x.max())
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"CURE.step: x must hold inputs in [0, 1] (the attack clips to that range), "
                             f"got values in [{low:.4g}, {high:.4g}]")
        model = self.model
        with eval_mode(model), torch.no_grad():
            out = model(x)
        wrong = _not_logits(out, len(x))
        if wrong:
            raise ValueError(f"CURE: model must return class logits [batch, classes >= 2], got {wrong}")
        was_training = model.training
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        try:
            model.train()
            with torch.no_grad():
                trained = torch.func.functional_call(model, buffers, (x,))
        finally:
            model.train(was_training)
        wrong = _not_logits(trained, len(x))
        if wrong or trained.shape != out.shape:
            raise ValueError(f"CURE: model must return class logits {tuple(out.shape)} in train mode too (as in "
                             f"eval mode), got {wrong or tuple(trained.shape)}: build a model with auxiliary "
                             "outputs without them (GoogLeNet, Inception: aux_logits=False) or wrap it to "
                             "return the logits alone")
        if int(y.min()) < 0 or int(y.max()) >= out.shape[1]:
            raise ValueError(f"CURE.step: y must hold class indices in [0, {out.shape[1]}), "
                             f"got values in [{int(y.min())}, {int(y.max())}]")

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "revision_model": self.revision_model.state_dict(),
                "attack_generator": self.generator.get_state(), "forward_rng": self._stream.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Checks the whole state, then loads it. The revision model's entries are matched by name without
        torch.compile's `_orig_mod.` parts: the state of a compiled model loads into a CURE of the same
        model uncompiled, and the other way round."""
        missing = [k for k in ("optimizer", "revision_model", "attack_generator", "forward_rng")
                   if k not in state_dict]
        if missing:
            raise ValueError(f"CURE.load_state_dict: state_dict lacks {', '.join(missing)}")
        given = self._fit_revision_state(state_dict["revision_model"])
        try:
            torch.Generator(self.generator.device).set_state(state_dict["attack_generator"])
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"CURE.load_state_dict: attack_generator is not a generator state "
                             f"({str(e).splitlines()[0][:200]})") from None
        self._stream.check(state_dict["forward_rng"], "CURE.load_state_dict")
        self.optimizer.load_state_dict(state_dict["optimizer"])  # checks before it writes
        self.revision_model.load_state_dict(given)
        self.generator.set_state(state_dict["attack_generator"])
        self._stream.load_state_dict(state_dict["forward_rng"])

    def _fit_revision_state(self, given: dict) -> dict:
        """The saved revision model's state under this revision model's names, or a ValueError saying why
        it does not fit."""
        own = self.revision_model.state_dict()
        by_plain = {_plain(k): k for k in own}
        saved = {_plain(k): v for k, v in given.items()} if isinstance(given, dict) else {}
        lacking, extra = sorted(set(by_plain) - set(saved)), sorted(set(saved) - set(by_plain))
        shapes = [k for k in set(by_plain) & set(saved)
                  if getattr(saved[k], "shape", None) != own[by_plain[k]].shape]
        if lacking or extra or shapes:
            why = "; ".join(f"{what} {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
                            for what, names in (("it lacks", lacking), ("it has unexpected", extra),
                                                ("other shapes for", sorted(shapes))) if names)
            raise ValueError(f"CURE.load_state_dict: the revision model's state does not fit this model ({why}; "
                             "names compared without torch.compile's _orig_mod. prefix)")
        return {by_plain[k]: v for k, v in saved.items()}


def _not_logits(out, n: int) -> Optional[str]:
    """None when `out` is class logits of n inputs; otherwise what it is, for the error."""
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[0] == n and out.shape[1] >= 2 \
            and out.is_floating_point():
        return None
    return str(tuple(out.shape)) if isinstance(out, torch.Tensor) else type(out).__name__
