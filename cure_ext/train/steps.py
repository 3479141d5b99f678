"""One optimisation step per method, on one batch: natural (standard training and pre-training), PGD-AT
(Madry), TRADES and CURE. Attacks run the model in eval mode; the training forwards run it in train mode,
with separate forwards for natural and adversarial inputs (BN sees each batch's own statistics), as in
the authors' code.

Every step checks its loss and gradients before the update (one host sync per step) and, when one is not
finite, returns without touching the weights or the optimizer state; the trainer then stops or skips.

Under torchrun the training forwards go through DistributedDataParallel (`forward`), which averages the
update gradients during the backward pass; CURE's score gradients are averaged the same way before the
step, and the finiteness verdict is shared, so every rank makes the same update. `weight` scales a rank's
loss by its share of the global batch (1 in one process, and for every batch that splits evenly)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional

import torch
from torch import nn
import torch.nn.functional as F

from .attacks import ce_objective, pgd, trades_adversary
from .distributed import SINGLE, Ranks
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
    forward: Optional[nn.Module] = None  # the module of the training forwards (DDP's wrapper), default model
    ranks: Ranks = SINGLE

    def __post_init__(self):
        if self.forward is None:
            self.forward = self.model


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


def _backward(s: StepSetup, loss: torch.Tensor, weight: float) -> None:
    """The update gradients into p.grad (averaged over ranks by DDP)."""
    s.optimizer.zero_grad(set_to_none=True)
    (loss if weight == 1.0 else loss * weight).backward()


def _finite_everywhere(s: StepSetup, loss: torch.Tensor, *grad_lists) -> bool:
    return s.ranks.all_true(all_finite(loss, *grad_lists), loss.device)


def _sgd_update(s: StepSetup, loss: torch.Tensor, weight: float) -> bool:
    _backward(s, loss, weight)
    if not _finite_everywhere(s, loss, [p.grad for p in s.params]):
        return False
    s.optimizer.step()
    return True


def _ce_step(s: StepSetup, inputs: torch.Tensor, y: torch.Tensor, weight: float) -> StepResult:
    """Cross-entropy on `inputs` (natural or adversarial) and a plain optimizer step."""
    s.model.train()
    with s.autocast():
        logits = s.forward(inputs)
        loss = F.cross_entropy(logits.float(), y)
    finite = _sgd_update(s, loss, weight)
    return StepResult(loss.detach(), logits.detach(), finite=finite)


def natural_step(s: StepSetup, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> StepResult:
    return _ce_step(s, x, y, weight)


def pgd_at_step(s: StepSetup, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> StepResult:
    """Madry et al.: CE on PGD examples (uniform random start, CE ascent)."""
    x_adv = pgd(s.model, x, ce_objective(y), s.eps, s.step_size, s.steps, "uniform", s.generator, s.autocast)
    return _ce_step(s, x_adv, y, weight)


def _trades_forward(s: StepSetup, x: torch.Tensor, y: torch.Tensor):
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


def trades_step(s: StepSetup, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> StepResult:
    """TRADES: CE(x) + β·KL(p(x) ‖ p(x_adv)) (the CURE loss with γ = 0)."""
    loss, logits_nat, _ = _trades_forward(s, x, y)
    finite = _sgd_update(s, loss.total, weight)
    return StepResult(loss.total.detach(), logits_nat.detach(), finite=finite)


def cure_step(s: StepSetup, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> StepResult:
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
        s.ranks.average_([g for g in nat_grads + adv_grads if g is not None], weight)
    _backward(s, loss.total, weight)
    grads = [p.grad for p in s.params]
    if not _finite_everywhere(s, loss.total, grads, nat_grads, adv_grads):  # score gradients choose the masks
        return StepResult(loss.total.detach(), logits_nat.detach(), finite=False)
    kept = s.optimizer.step(nat_grads, adv_grads)
    return StepResult(loss.total.detach(), logits_nat.detach(), kept)


STEPS = {"natural": natural_step, "pgd-at": pgd_at_step, "trades": trades_step, "cure": cure_step}
