"""The ranks of a data-parallel job and the collectives CURE's step needs (and the trainer builds on): one
process per device, every rank taking the same step from gradients averaged over ranks. Outside a process
group everything is one rank, SINGLE, and no collective runs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

T = TypeVar("T")


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


SINGLE = Ranks()


def current() -> Ranks:
    """The ranks of the process group in use, or SINGLE outside one."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return SINGLE
