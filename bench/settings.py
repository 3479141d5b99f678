"""How long and how large one device's run is (quick, full or tiny shapes), and the run's progress log."""
from __future__ import annotations

import sys

import torch

from . import timing


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Settings:
    def __init__(self, device: torch.device, quick: bool, tiny: bool):
        self.device, self.quick, self.tiny = device, quick, tiny
        gpu = device.type == "cuda"
        if quick:
            self.group = timing.GroupBudget.quick()
        elif gpu:
            self.group = timing.GroupBudget(min_rounds=10, max_rounds=200, seconds=8.0, round_share_s=0.02,
                                            max_reps=20, warmup=3)
        else:
            self.group = timing.GroupBudget(min_rounds=3, max_rounds=30, seconds=15.0, round_share_s=0.1,
                                            max_reps=10, warmup=1)
        self.copy_budget = timing.Budget(min_runs=10, max_runs=100, seconds=1.0, warmup=2, warmup_s=0.1)
        # Input sets rotated between calls so that no variant runs out of a warm cache.
        self.n_sets = 4 if gpu and not (quick or tiny) else (1 if quick and not gpu else 2)
        self.width_divisor = 16 if tiny else 1
        mib = 1 << 20
        self.copy_bytes = 4 * mib if tiny else (1024 if gpu else 256) * mib // (4 if quick else 1)

    def scaled(self, factor: float) -> timing.GroupBudget:
        """The group budget with its time limit scaled (bigger models get more time)."""
        g = self.group
        return timing.GroupBudget(g.min_rounds, g.max_rounds, g.seconds * factor, g.round_share_s, g.max_reps,
                                  g.warmup)
