"""Evaluation protocol (SPEC §4): clean accuracy, PGD-20 (CE, uniform random start), CW∞-20 (PGD on the CW
margin loss), optional AutoAttack, and the trade-off summaries NRR and SUM. Accuracies are in percent.

Each attack draws its random starts from its own generator seeded by the caller, so an evaluation is
reproducible, never consumes the training run's random streams, and gives a model the same PGD-20 accuracy
whether or not CW∞ runs beside it (a run's per-epoch and final evaluations agree on the same weights).
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Optional, Sequence

import torch
from torch import nn

from ..attacks import ce_objective, cw_objective, eval_mode, pgd, random_start
from ..ranks import SINGLE, Ranks
from .autoattack import run_autoattack
from .data import Dataset, batches

ATTACKS = {"pgd20": ce_objective, "cw": cw_objective}
ATTACK_LABELS = {"pgd20": "PGD-20", "cw": "CW∞-20", "aa": "AutoAttack"}


def nrr(a_nat: float, a_rob: float) -> float:
    """Natural-Robustness Ratio: the harmonic mean 2·A_nat·A_rob / (A_nat + A_rob)."""
    return 0.0 if a_nat + a_rob == 0 else 2.0 * a_nat * a_rob / (a_nat + a_rob)


def summarize(acc: dict) -> dict:
    """Adds NRR with CW∞ (the paper's tables), NRR and SUM with the strongest attack run."""
    out = dict(acc)
    robust = [acc[f"{k}_acc"] for k in ("pgd20", "cw", "aa") if f"{k}_acc" in acc]
    if robust:
        out["robust_acc"] = min(robust)
        out["nrr"] = nrr(acc["clean_acc"], out["robust_acc"])
        out["sum"] = acc["clean_acc"] + out["robust_acc"]
    if "cw_acc" in acc:
        out["nrr_cw"] = nrr(acc["clean_acc"], acc["cw_acc"])
    return out


def evaluate(model: nn.Module, data: Dataset, eps: float, device: torch.device, *, step_size: float,
             steps: int = 20, attacks: Sequence[str] = ("pgd20", "cw"), limit: Optional[int] = None,
             batch_size: int = 256, seed: int = 0, autoattack: bool = False,
             autocast: Callable[[], ContextManager] = contextlib.nullcontext, ranks: Ranks = SINGLE,
             progress: Optional[Callable[[str], None]] = None) -> dict:
    """Accuracies of `model` on the first `limit` test examples (all by default). With several ranks, each
    attacks every world-th batch and the counts are summed: every example is counted once, with the random
    start it gets in one process (a rank draws, and drops, the starts of the batches it leaves to others).
    AutoAttack (standard version, seeded with `seed`, in float32) runs on each rank's examples and reports
    its progress, one line per attack, to `progress`."""
    generators = {name: torch.Generator(device=device).manual_seed(seed + i) for i, name in enumerate(ATTACKS)}
    counts = torch.zeros(2 + len(attacks), dtype=torch.int64)  # total, clean, then one per attack
    mine: list = []  # this rank's examples, for AutoAttack
    with eval_mode(model):
        for b, (x, y) in enumerate(batches(data.test_x, data.test_y, data.scale, batch_size, device, limit=limit)):
            if b % ranks.world != ranks.rank:
                for name in attacks:
                    random_start(x, eps, "uniform", generators[name])
                continue
            mine.append(torch.arange(b * batch_size, b * batch_size + len(y)))
            with torch.no_grad(), autocast():
                counts[1] += int((model(x).argmax(1) == y).sum())
            for i, name in enumerate(attacks):
                x_adv = pgd(model, x, ATTACKS[name](y), eps, step_size, steps, "uniform", generators[name], autocast)
                with torch.no_grad(), autocast():
                    counts[2 + i] += int((model(x_adv).argmax(1) == y).sum())
            counts[0] += len(y)
        if autoattack:
            index = torch.cat(mine) if mine else torch.zeros(0, dtype=torch.int64)
            _, robust = run_autoattack(model, data.test_x[index].float() / data.scale, data.test_y[index], eps,
                                       seed=seed, batch_size=batch_size, device=device, progress=progress)
            counts = torch.cat([counts, robust.sum().cpu().view(1)])
    total, *correct = ranks.sum_(counts.to(device)).tolist()
    names = ["clean", *attacks] + (["aa"] if autoattack else [])
    acc = {f"{k}_acc": 100.0 * v / total for k, v in zip(names, correct)}
    acc["n_test"] = total
    return summarize(acc)
