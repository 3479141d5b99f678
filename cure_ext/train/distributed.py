"""Multi-process data-parallel training under torchrun: the ranks, the process group, and the few collectives
the trainer needs.

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
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from .errors import ConfigError, PeerError

T = TypeVar("T")


def launched_world() -> int:
    """The number of processes torchrun started (1 when not run by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of n items; the parts' sizes differ by at most one."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def average_(self, tensors: Sequence[torch.Tensor], weight: float = 1.0) -> None:
        """In place: the weighted mean over ranks, sum_r weight_r * t_r / world, one reduction per dtype."""
        if not self.distributed:
            return
        by_dtype: dict = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = _flatten_dense_tensors(group).mul_(weight / self.world)
            dist.all_reduce(flat)
            for t, v in zip(group, _unflatten_dense_tensors(flat, group)):
                t.copy_(v)

    def all_true(self, flag: bool, device: torch.device) -> bool:
        """Whether flag holds on every rank (so that every rank takes the same branch)."""
        if not self.distributed:
            return flag
        t = torch.tensor([int(flag)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def broadcast_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Rank 0's values into every rank's tensors."""
        if self.distributed:
            for t in tensors:
                dist.broadcast(t, src=0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def gather(self, obj: T) -> list[T]:
        """Every rank's obj, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def from_main(self, fn: Callable[[], T]) -> T:
        """fn() run by rank 0 (reading files, checking folders), its result or its error on every rank."""
        if not self.distributed:
            return fn()
        payload: list = [None]
        if self.main:
            try:
                payload[0] = (True, fn())
            except Exception as e:  # every rank raises it, instead of the others waiting for rank 0
                payload[0] = (False, e)
        dist.broadcast_object_list(payload, src=0)
        ok, value = payload[0]
        if not ok:
            raise shared(value)
        return value

    def agreed(self, fn: Callable[[], T]) -> T:
        """fn() on every rank (a set-up step that may fail on some ranks only, such as finding the data or a
        GPU); if it fails anywhere, it fails everywhere, instead of the other ranks waiting in a collective."""
        if not self.distributed:
            return fn()
        try:
            result, error = fn(), None
        except Exception as e:
            result, error = None, e
        failures = self.gather(None if error is None else f"{type(error).__name__}: {error}")
        failed = [r for r, f in enumerate(failures) if f is not None]
        if error is not None:  # the same on every rank: rank 0 reports it; else each failed rank its own
            error.shared, error.together = len(set(failures)) == 1, True
            raise error
        if failed:
            raise shared(PeerError(f"rank {failed[0]} of {self.world} failed ({failures[failed[0]]})"))
        return result


SINGLE = Ranks()


# Two marks on an error under torchrun: `shared`, every rank met it alike, so rank 0 alone reports it (errors.py
# marks whole classes so); `together`, every rank stopped at the same point (shared errors, and whatever
# `agreed` raises), so the ranks can leave together once rank 0 has printed.

def shared(error: BaseException) -> BaseException:
    """Marks an error that every rank met alike."""
    error.shared = True
    return error


def together(error: BaseException) -> bool:
    return getattr(error, "together", getattr(error, "shared", False))


def is_rank0() -> bool:
    """Rank 0 of a torchrun job, or a process that torchrun did not start."""
    return launched_world() == 1 or os.environ.get("RANK") == "0"


def reports(error: BaseException) -> bool:
    """Whether this process should print the error: rank 0 prints the errors every rank met alike, and each
    rank its own."""
    return is_rank0() or not getattr(error, "shared", False)


def current() -> Ranks:
    """The ranks of the process group in use, or SINGLE outside one."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return SINGLE


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
