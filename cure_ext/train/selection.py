"""Which parameters train and which are subject to CURE's selection.

Selection policies (`--select`):
- paper: every parameter except the classifier head's (`linear` / `fc` in our models);
- official: the authors' `rgp_soft`, only the first conv of each residual block (`*.conv1.weight` below a
  stage; the stem `conv1` is exempt);
- all / none: every trainable tensor / no tensor (CURE then is TRADES plus the revision consistency term).

The layer-wise study (`--update-blocks`, paper §3) trains only the named residual stages; everything else,
stem and classifier included, is frozen (requires_grad False; BN layers keep updating their running
statistics, as in the authors' code).
"""
from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
from torch import nn

from .errors import ConfigError


def selective_flags(names: Sequence[str], policy: str, head: Union[str, Callable[[str], bool]]) -> list[bool]:
    """One flag per parameter name. head: the head module's top-level name, or a predicate on a parameter
    name telling whether it belongs to the head (used by the `paper` policy only)."""
    in_head = head if callable(head) else lambda n: n.split(".")[0] == head

    def official(name: str) -> bool:
        parts = name.split(".")
        return len(parts) > 2 and parts[-2:] == ["conv1", "weight"]

    rules = {
        "paper": lambda n: not in_head(n),
        "official": official,
        "all": lambda n: True,
        "none": lambda n: False,
    }
    if policy not in rules:
        raise ValueError(f"unknown selection policy {policy!r}")
    return [rules[policy](n) for n in names]


def restrict_to_stages(model: nn.Module, stages: Sequence[int], reinit: bool, seed: int) -> None:
    """Freeze every parameter outside the given 1-based residual stages; optionally re-initialise those
    stages (convs kaiming-uniform fan-out as in the authors' `ReInit`, BN reset)."""
    available = list(model.stage_names)
    bad = [s for s in stages if not 1 <= s <= len(available)]
    if bad:
        raise ConfigError(f"--update-blocks {','.join(map(str, bad))}: this model has stages 1..{len(available)} "
                         f"({', '.join(available)})")
    chosen = {available[s - 1] for s in stages}
    for name, p in model.named_parameters():
        p.requires_grad_(name.split(".")[0] in chosen)
    if reinit:
        generator = torch.Generator().manual_seed(seed)  # on the CPU, so the draw is the same on any device
        for stage in sorted(chosen):
            for m in getattr(model, stage).modules():
                if isinstance(m, nn.Conv2d):
                    w = torch.empty(m.weight.shape)
                    nn.init.kaiming_uniform_(w, mode="fan_out", nonlinearity="relu", generator=generator)
                    with torch.no_grad():
                        m.weight.copy_(w)
                elif isinstance(m, nn.BatchNorm2d):
                    m.reset_parameters()
