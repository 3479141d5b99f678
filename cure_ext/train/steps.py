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

from ..attacks import ce_objective, pgd
from ..cure import StepResult, backward, cure_forward, cure_update, finite_everywhere
from ..ranks import SINGLE, Ranks


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


def _sgd_update(s: StepSetup, loss: torch.Tensor, weight: float) -> bool:
    backward(s, loss, weight)
    if not finite_everywhere(s, loss, [p.grad for p in s.params]):
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


def trades_step(s: StepSetup, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> StepResult:
    """TRADES: CE(x) + β·KL(p(x) ‖ p(x_adv)) (the CURE loss with γ = 0)."""
    loss, logits_nat, _ = cure_forward(s, x, y)
    finite = _sgd_update(s, loss.total, weight)
    return StepResult(loss.total.detach(), logits_nat.detach(), finite=finite)


def cure_step(s: StepSetup, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> StepResult:
    """CURE (SPEC §1, §3): the step of `cure_ext.CURE`, on the trainer's setup."""
    return cure_update(s, x, y, weight)


STEPS = {"natural": natural_step, "pgd-at": pgd_at_step, "trades": trades_step, "cure": cure_step}
