"""One optimisation step per method, on one batch: natural (standard training and pre-training), PGD-AT
(Madry), TRADES and CURE. Attacks run the model in eval mode; the training forwards run it in train mode,
with separate forwards for natural and adversarial inputs (BN sees each batch's own statistics), as in
the authors' code.

Every step checks its loss and gradients before the update (one host sync per step) and, when one is not
finite, returns without touching the weights or the optimizer state; the trainer then stops or skips."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional

import torch
from torch import nn
import torch.nn.functional as F

from .attacks import ce_objective, pgd, trades_adversary
from .losses import cure_loss


@dataclass
class StepSetup:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    params: list  # the trainable parameters, in the optimizer's order
    generator: torch.Generator  # attack random starts
    eps: float
    step_size: float
    steps: int
    beta: float = 1.0
    gamma: float = 0.0
    selective: Optional[list] = None  # CURE: one flag per parameter
    score_loss: str = "ce"  # CURE score gradient on the adversarial side: "ce" = ∇CE(x_adv), "kl" = ∇KL_rob
    revision_model: Optional[nn.Module] = None
    autocast: Callable[[], ContextManager] = contextlib.nullcontext


@dataclass
class StepResult:
    loss: torch.Tensor  # detached scalar
    logits: torch.Tensor  # detached logits whose accuracy the progress bar shows
    kept: Optional[torch.Tensor] = None  # CURE: entries updated per parameter tensor
    finite: bool = True  # False: the loss or a gradient was inf/NaN and no update was made


def all_finite(loss: torch.Tensor, *grad_lists) -> bool:
    """Whether the loss and every gradient are finite; one reduction and one host sync for all of them."""
    grads = [g for gl in grad_lists for g in gl if g is not None]
    norms = torch._foreach_norm(grads) if grads else []  # a norm is non-finite iff some entry is
    return bool(torch.isfinite(torch.stack([loss.detach().float(), *[n.float() for n in norms]])).all())


def _sgd_update(s: StepSetup, loss: torch.Tensor) -> bool:
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if not all_finite(loss, [p.grad for p in s.params]):
        return False
    s.optimizer.step()
    return True


def _ce_step(s: StepSetup, inputs: torch.Tensor, y: torch.Tensor) -> StepResult:
    """Cross-entropy on `inputs` (natural or adversarial) and a plain optimizer step."""
    s.model.train()
    with s.autocast():
        logits = s.model(inputs)
        loss = F.cross_entropy(logits.float(), y)
    finite = _sgd_update(s, loss)
    return StepResult(loss.detach(), logits.detach(), finite=finite)


def natural_step(s: StepSetup, x: torch.Tensor, y: torch.Tensor) -> StepResult:
    return _ce_step(s, x, y)


def pgd_at_step(s: StepSetup, x: torch.Tensor, y: torch.Tensor) -> StepResult:
    """Madry et al.: CE on PGD examples (uniform random start, CE ascent)."""
    x_adv = pgd(s.model, x, ce_objective(y), s.eps, s.step_size, s.steps, "uniform", s.generator, s.autocast)
    return _ce_step(s, x_adv, y)


def _trades_forward(s: StepSetup, x: torch.Tensor, y: torch.Tensor):
    x_adv = trades_adversary(s.model, x, s.eps, s.step_size, s.steps, s.generator, s.autocast)
    s.model.train()
    with s.autocast():
        logits_nat, logits_adv = s.model(x), s.model(x_adv)
        rev_nat = rev_adv = None
        if s.gamma != 0:
            with torch.no_grad():
                rev_nat, rev_adv = s.revision_model(x), s.revision_model(x_adv)
        loss = cure_loss(logits_nat, logits_adv, y, s.beta, s.gamma, rev_nat, rev_adv)
    return loss, logits_nat, logits_adv


def trades_step(s: StepSetup, x: torch.Tensor, y: torch.Tensor) -> StepResult:
    """TRADES: CE(x) + β·KL(p(x) ‖ p(x_adv)) (the CURE loss with γ = 0)."""
    loss, logits_nat, _ = _trades_forward(s, x, y)
    finite = _sgd_update(s, loss.total)
    return StepResult(loss.total.detach(), logits_nat.detach(), finite=finite)


def cure_step(s: StepSetup, x: torch.Tensor, y: torch.Tensor) -> StepResult:
    """CURE: the full loss's gradient updates, the score gradients select (SPEC §1, §3).

    Backward passes, each over only the graph it needs: ∇CE(x) over the natural forward, the adversarial
    score gradient over the adversarial forward (paper) or both (official, ∇KL), and ∇L over both; the
    score passes only for the selective tensors. The revision model gives targets, never gradients."""
    loss, logits_nat, logits_adv = _trades_forward(s, x, y)
    selected = [p for p, f in zip(s.params, s.selective) if f]
    nat_grads, adv_grads = [None] * len(s.params), [None] * len(s.params)
    if selected:
        adv_score = loss.kl_rob if s.score_loss == "kl" else F.cross_entropy(logits_adv.float(), y)
        g_nat = iter(torch.autograd.grad(loss.ce_nat, selected, retain_graph=True))
        g_adv = iter(torch.autograd.grad(adv_score, selected, retain_graph=True))
        nat_grads = [next(g_nat) if f else None for f in s.selective]
        adv_grads = [next(g_adv) if f else None for f in s.selective]
    grads = torch.autograd.grad(loss.total, s.params)
    if not all_finite(loss.total, grads, nat_grads, adv_grads):  # score gradients too: they choose the masks
        return StepResult(loss.total.detach(), logits_nat.detach(), finite=False)
    for p, g in zip(s.params, grads):
        p.grad = g
    kept = s.optimizer.step(nat_grads, adv_grads)
    return StepResult(loss.total.detach(), logits_nat.detach(), kept)


STEPS = {"natural": natural_step, "pgd-at": pgd_at_step, "trades": trades_step, "cure": cure_step}
