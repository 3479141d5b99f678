"""A run's random streams, all seeded from --seed and saved in last.pt: the data generator (order,
augmentation), the attack generator (random starts of the training attacks), CURESGD's own generator
(revision draws), and a fresh generator per evaluation (so evaluating never shifts the training streams). The
global torch, numpy and Python generators are seeded too and saved in last.pt, so that no library drawing
from them can make a resumed run differ from an uninterrupted one. Under torchrun each rank draws its attack
starts from its own stream, which last.pt keeps for every rank.
"""
from __future__ import annotations

import random

import numpy as np
import torch

# A rank's attack stream is seeded seed + 1 + rank * ATTACK_SEED_STRIDE: rank 0's is the one-process stream,
# and no rank's seed meets another generator's (seed + 2, seed + 3, seed + 4) for any seed.
ATTACK_SEED_STRIDE = 1_000_003


def global_rng_state() -> dict:
    """The global torch, numpy and Python generators, in types that torch.load(weights_only=True) reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                      has_gauss, gauss], "python": random.getstate()}


def set_global_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))
