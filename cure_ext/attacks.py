"""ℓ∞ PGD: one loop, parameterised by the objective it maximises (CE for PGD-20 and Madry training, the
CW margin loss for CW∞, the TRADES KL for the TRADES/CURE inner maximisation)."""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch
from torch import nn
import torch.nn.functional as F

from .losses import cw_margin_loss

Objective = Callable[[torch.Tensor], torch.Tensor]  # logits of the perturbed batch -> summed loss


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Run the model in eval mode (BN running statistics, no buffer updates), then restore its mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def ce_objective(y: torch.Tensor) -> Objective:
    return lambda logits: F.cross_entropy(logits.float(), y, reduction="sum")


def cw_objective(y: torch.Tensor) -> Objective:
    return lambda logits: cw_margin_loss(logits.float(), y).sum()


def kl_objective(log_p_nat: torch.Tensor) -> Objective:
    """Summed KL(p(x) ‖ p(x_adv)) for fixed natural log-probabilities."""
    return lambda logits: F.kl_div(F.log_softmax(logits.float(), dim=1), log_p_nat, reduction="sum", log_target=True)


def random_start(x: torch.Tensor, eps: float, start: str, generator: torch.Generator) -> torch.Tensor:
    """The random offset of a PGD start: "uniform" U(-eps, eps) (Madry / PGD-20) or "normal" 0.001·N(0, 1)
    (TRADES). Drawn by itself, it also advances a generator past a batch that another rank attacks."""
    if start == "uniform":
        return (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    if start == "normal":
        return 0.001 * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    raise ValueError(f"unknown PGD start {start!r}")


def pgd(model: nn.Module, x: torch.Tensor, objective: Objective, eps: float, step_size: float, steps: int,
        start: str, generator: torch.Generator,
        autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> torch.Tensor:
    """Signed-gradient ascent on `objective` inside the ℓ∞ ball of radius eps around x, kept in [0, 1].

    start: see random_start. The start is clipped to [0, 1] as well, so every returned point is a valid
    image even with steps = 0.
    """
    noise = random_start(x, eps, start, generator)
    x = x.detach()
    lower, upper = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
    x_adv = torch.min(torch.max(x + noise, lower), upper)
    with eval_mode(model):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with autocast():
                loss = objective(model(x_adv))
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = torch.min(torch.max(x_adv.detach() + step_size * grad.sign(), lower), upper)
    return x_adv.detach()


def trades_adversary(model: nn.Module, x: torch.Tensor, eps: float, step_size: float, steps: int,
                     generator: torch.Generator,
                     autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> torch.Tensor:
    """TRADES inner maximisation of KL(p(x) ‖ p(x_adv)), natural probabilities taken in eval mode."""
    with eval_mode(model), torch.no_grad(), autocast():
        log_p_nat = F.log_softmax(model(x).float(), dim=1)
    return pgd(model, x, kl_objective(log_p_nat), eps, step_size, steps, "normal", generator, autocast)
