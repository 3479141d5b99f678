"""A run's phases and their lr schedules.

Phases: natural pre-training (skipped with --init-checkpoint), then the method's phase ("train"); CURE_Eff
instead runs a natural warm-up and CURE inside its --epochs. Every phase gets a fresh optimizer and lr
schedule; the revision model is a copy of the weights entering a CURE phase.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import TrainConfig


@dataclass
class Phase:
    name: str  # pretrain | warmup | train
    step: str  # key of steps.STEPS
    epochs: int
    lr: float
    span: int  # epochs the lr schedule spans: the phase's own, or CURE_Eff's whole budget
    offset: int = 0  # where the phase starts inside that span


def plan_phases(cfg: TrainConfig) -> list[Phase]:
    method_step = {"standard": "natural", "pgd-at": "pgd-at", "trades": "trades", "cure": "cure", "cure-eff": "cure"}
    if cfg.method == "cure-eff":  # one schedule over warm-up and CURE, as one run of train_warmup.py
        return [Phase("warmup", "natural", cfg.warmup_epochs, cfg.pretrain_lr, cfg.epochs),
                Phase("train", "cure", cfg.epochs - cfg.warmup_epochs, cfg.lr, cfg.epochs, cfg.warmup_epochs)]
    pre = [] if cfg.init_checkpoint else [Phase("pretrain", "natural", cfg.pretrain_epochs, cfg.pretrain_lr,
                                                cfg.pretrain_epochs)]
    return pre + [Phase("train", method_step[cfg.method], cfg.epochs, cfg.lr, cfg.epochs)]


class LrFactor:
    """The lr multiplier at a phase's epoch e, i.e. at epoch offset + e of the schedule's span. A plain
    object (not a lambda) so that LambdaLR's state dict holds it and checkpoints stay loadable."""

    def __init__(self, schedule: str, span: int, offset: int, milestones, gamma: float):
        self.schedule, self.span, self.offset, self.gamma = schedule, max(1, span), offset, gamma
        self.milestones = sorted({max(1, round(f * span)) for f in milestones})  # fractions -> epochs

    def __call__(self, epoch: int) -> float:
        t = self.offset + epoch
        if self.schedule == "multistep":
            return self.gamma ** sum(t >= m for m in self.milestones)
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t / self.span))
        return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, phase: Phase):
    """Per-epoch lr schedule; multistep milestones are fractions of the span (100 and 150 of 200 epochs)."""
    factor = LrFactor(cfg.lr_schedule, phase.span, phase.offset, cfg.lr_milestones, cfg.lr_gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
