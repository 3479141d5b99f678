"""Where a run computes: its device (under torchrun, the GPU of the process's local rank) and its CPU threads."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from . import distributed
from .errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: this PyTorch sees no CUDA device")
    return distributed.rank_device(torch.device(name))


@contextlib.contextmanager
def cpu_threads(threads: Optional[int], model_name: str):
    """Intra-op CPU threads for the run, restored afterwards. The small cnn runs on one thread: its ops are
    too small to split, and on shared cores spinning worker threads slow it down by 10x or more."""
    previous = torch.get_num_threads()
    wanted = threads or (1 if model_name == "cnn" else previous)
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
