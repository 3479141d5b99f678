"""AutoAttack (Croce & Hein, 2020), standard version (APGD-CE, APGD-T with 9 targets, FAB-T, Square with
5,000 queries), through the original implementation: the authors' module `autoattack` where it is installed
(from fra31/auto-attack), else `pyautoattack`, its packaging on PyPI (the extra `cure_ext[autoattack]`).
The two differ only in how they are called; this module hides that.

The provider's standard evaluation is run one attack at a time, each on the examples that the previous ones
left unbroken, as its own run_standard_evaluation does (same attacks, parameters, order, batches and
per-batch seeding, so the same result: tested), so that the progress can be shown after each attack.
"""
from __future__ import annotations

import importlib
import importlib.util
import time
from typing import Callable, Optional

import torch
from torch import nn

PROVIDERS = ("autoattack", "pyautoattack")  # the authors' module first
INSTALL = 'pip install "cure_ext[autoattack]"'


def provider() -> Optional[str]:
    """The module that provides AutoAttack, or None when neither is installed."""
    return next((name for name in PROVIDERS if importlib.util.find_spec(name) is not None), None)


def _adversary(module: str, model: nn.Module, eps: float, seed: int, device: torch.device, batch_size: int):
    """The provider's standard-version AutoAttack and a function running its attacks_to_run, which returns
    the adversarial examples and the labels the model gives them."""
    AutoAttack = importlib.import_module(module).AutoAttack
    if module == "autoattack":
        adversary = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=seed, device=str(device),
                               verbose=False)
        return adversary, lambda x, y: adversary.run_standard_evaluation(x, y, bs=batch_size, return_labels=True)
    adversary = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=seed, device=str(device))
    return adversary, lambda x, y: adversary.run_standard_evaluation(x, y, batch_size=batch_size)


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, seed: int, batch_size: int,
                   device: torch.device,
                   progress: Optional[Callable[[str], None]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The adversarial examples of x (on `device`, in [0, 1] and within eps of x in ℓ∞; x itself where no
    attack succeeded) and the mask of the examples the model still classifies correctly. The attacks seed
    the global torch generator; its state (and CUDA's) is restored afterwards."""
    module = provider()
    if module is None:
        raise ModuleNotFoundError(f"AutoAttack needs `pyautoattack` or `autoattack`: {INSTALL}")
    x, y = x.to(device), y.to(device)
    x_adv = x.clone()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        adversary, attack = _adversary(module, model, eps, seed, device, batch_size)
        robust = torch.ones(len(y), dtype=torch.bool, device=device)  # the first call drops the misclassified
        attacks, began = list(adversary.attacks_to_run), time.perf_counter()
        for name in attacks:
            adversary.attacks_to_run = [name]
            left = robust.nonzero().flatten()
            if len(left):
                adv, labels = attack(x[left], y[left])
                broken = labels.to(device) != y[left]
                robust[left[broken]] = False
                x_adv[left[broken]] = adv[broken].to(device)
            if progress is not None:
                progress(f"AutoAttack {name}: {int(robust.sum())} of {len(y)} examples left "
                         f"({time.perf_counter() - began:.0f} s)")
    return x_adv, robust
