"""Multi-process data-parallel training under torchrun: the process group, and how the ranks (cure_ext.ranks)
read files and meet errors together.

One process per device, gloo on CPU and nccl on CUDA. Every rank holds the whole model and data set; each
global batch of --batch-size (the batch of a one-process run) is cut into contiguous shards, one per rank.
Gradients are averaged over ranks, weighted by shard size, before any optimizer step, so every rank takes
the same step (CURE: the same masks and, from the same seed, the same revision draws). Rank 0 alone writes
files and reads the run's own (checkpoints, the output folder): the others get what they need by broadcast,
so an error reading one is raised on every rank alike. Every rank loads the data set itself. A set-up step
that can fail on some ranks only (the data, the GPU) is agreed on, so that no rank is left waiting.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ..ranks import Ranks, current
from .errors import ConfigError, PeerError

T = TypeVar("T")


def launched_world() -> int:
    """The number of processes torchrun started (1 when not run by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


# Two marks on an error under torchrun: `shared`, every rank met it alike, so rank 0 alone reports it (errors.py
# marks whole classes so); `together`, every rank stopped at the same point (shared errors, and whatever
# `agreed` raises), so the ranks can leave together once rank 0 has printed.

def shared(error: BaseException) -> BaseException:
    """Marks an error that every rank met alike."""
    error.shared = True
    return error


def together(error: BaseException) -> bool:
    return getattr(error, "together", getattr(error, "shared", False))


def from_main(ranks: Ranks, fn: Callable[[], T]) -> T:
    """fn() run by rank 0 (reading files, checking folders), its result or its error on every rank."""
    if not ranks.distributed:
        return fn()
    payload: list = [None]
    if ranks.main:
        try:
            payload[0] = (True, fn())
        except Exception as e:  # every rank raises it, instead of the others waiting for rank 0
            payload[0] = (False, e)
    dist.broadcast_object_list(payload, src=0)
    ok, value = payload[0]
    if not ok:
        raise shared(value)
    return value


def agreed(ranks: Ranks, fn: Callable[[], T]) -> T:
    """fn() on every rank (a set-up step that may fail on some ranks only, such as finding the data or a
    GPU); if it fails anywhere, it fails everywhere, instead of the other ranks waiting in a collective."""
    if not ranks.distributed:
        return fn()
    try:
        result, error = fn(), None
    except Exception as e:
        result, error = None, e
    failures = ranks.gather(None if error is None else f"{type(error).__name__}: {error}")
    failed = [r for r, f in enumerate(failures) if f is not None]
    if error is not None:  # the same on every rank: rank 0 reports it; else each failed rank its own
        error.shared, error.together = len(set(failures)) == 1, True
        raise error
    if failed:
        raise shared(PeerError(f"rank {failed[0]} of {ranks.world} failed ({failures[failed[0]]})"))
    return result


def is_rank0() -> bool:
    """Rank 0 of a torchrun job, or a process that torchrun did not start."""
    return launched_world() == 1 or os.environ.get("RANK") == "0"


def reports(error: BaseException) -> bool:
    """Whether this process should print the error: rank 0 prints the errors every rank met alike, and each
    rank its own."""
    return is_rank0() or not getattr(error, "shared", False)


def rank_device(device: torch.device) -> torch.device:
    """Under torchrun each process drives the GPU of its local rank, cuda:LOCAL_RANK."""
    if launched_world() == 1 or device.type != "cuda":
        return device
    if device.index is not None:
        raise ConfigError(f"--device {device}: under torchrun every process takes the GPU of its local rank; "
                          "pass --device cuda (and choose GPUs with CUDA_VISIBLE_DEVICES)")
    if local_rank() >= torch.cuda.device_count():
        raise ConfigError(f"torchrun started more processes on this machine than it has GPUs "
                          f"({torch.cuda.device_count()}): use one process per GPU")
    return torch.device("cuda", local_rank())


@contextlib.contextmanager
def process_group(leave_together: bool = True) -> Iterator[Ranks]:
    """Under torchrun with several processes, the process group, torn down afterwards; otherwise SINGLE.
    Collectives on CPU tensors go through gloo, on CUDA tensors through nccl (one group serves a run on
    either device, so it can start before the run's configuration is known). Re-entrant. leave_together:
    a barrier before the teardown when the body ends normally (gloo can abort a process whose peer tears
    down while it still works); a caller that handles errors itself passes False and meets the barrier."""
    if launched_world() == 1 or (dist.is_available() and dist.is_initialized()):
        yield current()
        return
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed: run without torchrun")
    cuda = torch.cuda.is_available() and dist.is_nccl_available()
    if cuda and local_rank() < torch.cuda.device_count():
        torch.cuda.set_device(local_rank())
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")
    try:
        yield current()
        if leave_together:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def forward_module(model: nn.Module, device: torch.device, ranks: Ranks) -> nn.Module:
    """The module of the training forwards: the model, or under torchrun a new DDP wrapper of it. New every
    epoch: DDP re-buckets the gradients after a wrapper's first step, and with three ranks or more the
    buckets decide the order of the sums; a resumed run, which starts at an epoch with a new wrapper,
    then sums every step as the uninterrupted run did."""
    if not ranks.distributed:
        return model
    # 1x1 convolutions' weight gradients differ from their bucket only in the strides of size-1 dims (the
    # same memory order), which DDP flags once per process; the copy into the bucket is made either way.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def state_digest(state) -> str:
    """SHA-256 of a (nested) state: every tensor's path, dtype, shape and bytes, every other leaf's repr. Equal
    digests mean bit-identical states."""
    h = hashlib.sha256()
    _feed(h, "", state)
    return h.hexdigest()


def _feed(h, path: str, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"{path}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            _feed(h, f"{path}/{key}", obj[key])
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _feed(h, f"{path}/{i}", v)
    else:
        h.update(f"{path}={obj!r};".encode())
