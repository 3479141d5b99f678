"""The layer-wise study (`--update-blocks`, paper §3): only the named residual stages train; everything else,
stem and classifier included, is frozen (requires_grad False; BN layers keep updating their running
statistics, as in the authors' code)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .errors import ConfigError


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
