"""Losses of the methods (SPEC §1): the TRADES KL, the CURE objective and the CW margin loss."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


def kl_batchmean(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """(1/B)·Σ KL(softmax(target) ‖ softmax(logits)); differentiable in both arguments, like TRADES."""
    return F.kl_div(F.log_softmax(logits.float(), dim=1), F.log_softmax(target_logits.float(), dim=1),
                    reduction="batchmean", log_target=True)


def cw_margin_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = 50.0) -> torch.Tensor:
    """Per-example CW loss of the authors' `cnw` attack: −max(z_y − max_{j≠y} z_j + κ, 0)."""
    correct = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return -(correct - others.max(dim=1).values + kappa).clamp(min=0)


@dataclass
class CureLoss:
    total: torch.Tensor  # L = CE + β·KL_rob + γ·KL_cons
    ce_nat: torch.Tensor  # CE(z(x), y)
    kl_rob: torch.Tensor  # KL(p(x) ‖ p(x_adv))
    kl_cons: Optional[torch.Tensor]  # KL(p_rev(x) ‖ p(x)) + KL(p_rev(x_adv) ‖ p(x_adv)); None when γ = 0


def cure_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float, gamma: float,
              rev_nat: Optional[torch.Tensor] = None, rev_adv: Optional[torch.Tensor] = None) -> CureLoss:
    """The CURE objective; with γ = 0 (no revision logits) it is the TRADES objective."""
    ce_nat = F.cross_entropy(logits_nat.float(), y)
    kl_rob = kl_batchmean(logits_nat, logits_adv)
    total = ce_nat + beta * kl_rob
    kl_cons = None
    if gamma != 0:
        if rev_nat is None or rev_adv is None:
            raise ValueError("cure_loss: gamma != 0 needs the revision model's logits")
        kl_cons = kl_batchmean(rev_nat.detach(), logits_nat) + kl_batchmean(rev_adv.detach(), logits_adv)
        total = total + gamma * kl_cons
    return CureLoss(total, ce_nat, kl_rob, kl_cons)
