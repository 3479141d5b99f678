"""Parameter shapes of the benchmark models, taken from the trainer's own architectures
(cure_ext.train.models, built on the meta device), and realistic synthetic gradients for them.

- ResNet-18 with the CIFAR stem (3x3 conv, no max-pool), BasicBlocks [2, 2, 2, 2], 1x1-conv shortcuts with
  BN where the shape changes, linear 512 -> 10: 62 tensors, 11,173,962 parameters.
- WRN-34-10 (the TRADES / CURE code's WideResNet): 3x3 stem conv 3 -> 16, three groups of 5 pre-activation
  BasicBlocks of widths 160, 320, 640 (bn1, conv1, bn2, conv2, and a 1x1 convShortcut in each group's first
  block), a final BN and fc 640 -> 10: 98 tensors, 46,160,474 parameters.

Tensors are listed in `named_parameters()` order with their names, so the selective flags of the presets
(SPEC §1) can be derived by name. `width_divisor` shrinks every channel width (the smoke test uses it);
the tensor count and structure stay the same.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import nn

from cure_ext.selection import selective_flags as policy_flags
from cure_ext.train.models import MODELS as ARCH_BUILDERS

Shape = Tuple[int, ...]

EXPECTED = {"resnet18": (62, 11_173_962), "wrn34_10": (98, 46_160_474)}

# Published CURE settings per model (SPEC §1): percentile p and score weight alpha.
HYPER = {"resnet18": dict(percentile=0.3, alpha=0.1), "wrn34_10": dict(percentile=0.5, alpha=0.3)}


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: Shape
    kind: str  # "conv", "bn_weight", "bn_bias", "linear_weight", "linear_bias"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def fan_in(self) -> int:
        if self.kind in ("conv", "linear_weight"):
            return math.prod(self.shape[1:])
        return 1


# Benchmark model keys -> the trainer's architectures (cure_ext.train.models).
ARCHITECTURES = {"resnet18": "resnet18", "wrn34_10": "wrn34-10"}
_KINDS = {(nn.Conv2d, "weight"): "conv", (nn.BatchNorm2d, "weight"): "bn_weight",
          (nn.BatchNorm2d, "bias"): "bn_bias", (nn.Linear, "weight"): "linear_weight",
          (nn.Linear, "bias"): "linear_bias"}


def _shrink(shape: Shape, divisor: int) -> Shape:
    # Channel widths (16..640) shrink; kernel sizes, the 3 input channels and the 10 classes stay.
    return tuple(max(1, d // divisor) if d >= 16 else d for d in shape)


def _network(model: str) -> nn.Module:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        return ARCH_BUILDERS[ARCHITECTURES[model]](10, 3)


def model_specs(model: str, width_divisor: int = 1) -> List[ParamSpec]:
    """The parameters of the trainer's own architecture, in named_parameters() order, built on the meta
    device (no memory); width_divisor shrinks every channel width (the smoke test uses it)."""
    net = _network(model)
    modules = dict(net.named_modules())
    specs = []
    for name, p in net.named_parameters():
        owner, _, leaf = name.rpartition(".")
        kind = next(k for (cls, attr), k in _KINDS.items() if isinstance(modules[owner], cls) and attr == leaf)
        specs.append(ParamSpec(name, _shrink(tuple(p.shape), width_divisor), kind))
    return specs


def selective_flags(specs: List[ParamSpec], model: str, preset: str = "paper") -> List[bool]:
    """The trainer's selection policies (SPEC §1): `paper` every tensor but the classifier head,
    `official` the first conv of each residual block."""
    return policy_flags([s.name for s in specs], preset, _network(model).head_name)


_POOLS: dict = {}


def _pools(df: float, size: int):
    """Cached pools of Student-t samples (z / sqrt(chi2_df / df)) and of normal samples, longer than the
    largest tensor (so no tensor repeats a value pattern); tensors take circular slices at random offsets,
    which keeps generating 46M-parameter sets fast. The pools depend only on (df, size)."""
    size = max(size + 12_345, 1 << 16)
    if df not in _POOLS or _POOLS[df][0].numel() < size:
        gen = torch.Generator().manual_seed(12345)
        z = torch.randn(size, generator=gen)
        chi2 = sum(torch.randn(size, generator=gen).square_() for _ in range(int(df))) if df == int(df) \
            else torch._standard_gamma(torch.full((size,), df / 2.0)) * 2.0
        _POOLS[df] = (z.div(chi2.div(df).sqrt_()), torch.randn(size, generator=gen))
    return _POOLS[df]


def _take(pool: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n consecutive pool entries from a random offset, wrapping around; a fresh tensor."""
    if n > pool.numel():  # only for very large synthetic tensors
        reps = -(-n // pool.numel())
        pool = pool.repeat(reps)
    start = int(torch.randint(pool.numel(), (1,), generator=generator))
    head = pool[start:start + n]
    if head.numel() == n:
        return head.clone()
    return torch.cat([head, pool[:n - head.numel()]])


@dataclass
class StepInputs:
    """One full set of step operands: the state the step updates and the gradients it reads."""
    params: List[torch.Tensor]
    grads: List[torch.Tensor]
    nat_grads: List[torch.Tensor]
    adv_grads: List[torch.Tensor]
    momentum_buffers: List[torch.Tensor]
    revision_params: List[torch.Tensor]

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


def make_inputs(specs: List[ParamSpec], device="cpu", dtype=torch.float32, seed: int = 0,
                bn_zero_fraction: float = 0.05, df: float = 3.0) -> StepInputs:
    """Synthetic but realistic operands: per-tensor gradient scale ~ 1/sqrt(fan_in), heavy (Student-t,
    df=3) tails, nat/adv/total gradients correlated (a shared component plus independent parts), and a
    fraction of BN entries with exact-zero gradients (dead channels). Params ~ kaiming-like, BN weights
    near 1; momentum buffers hold a previous gradient scale; the revision model is a perturbed copy."""
    g = torch.Generator().manual_seed(seed)
    tpool, npool = _pools(df, max((s.numel for s in specs), default=1))
    out = StepInputs([], [], [], [], [], [])
    for s in specs:
        n = s.numel
        scale = 1e-2 / math.sqrt(s.fan_in)
        shared = _take(tpool, n, g)
        nat = _take(tpool, n, g).mul_(0.5).add_(shared)
        adv = _take(tpool, n, g).mul_(0.8).add_(shared, alpha=1.5)
        total = _take(tpool, n, g).mul_(0.1).add_(nat, alpha=0.4).add_(adv, alpha=0.6)
        del shared
        if s.kind.startswith("bn"):
            dead = torch.rand(n, generator=g) < bn_zero_fraction
            for t in (nat, adv, total):
                t.masked_fill_(dead, 0.0)
        if s.kind == "bn_weight":
            theta = _take(npool, n, g).mul_(0.1).add_(1.0)
        elif s.kind in ("bn_bias", "linear_bias"):
            theta = _take(npool, n, g).mul_(0.01)
        else:
            theta = _take(npool, n, g).mul_(math.sqrt(2.0 / s.fan_in))
        mom = _take(npool, n, g).mul_(3.0 * scale)
        rev = _take(npool, n, g).mul_(0.01 * float(theta.abs().mean())).add_(theta)

        def put(t: torch.Tensor) -> torch.Tensor:
            return t.view(s.shape).to(device=device, dtype=dtype).contiguous()

        out.params.append(put(theta))
        out.grads.append(put(total.mul_(scale)))
        out.nat_grads.append(put(nat.mul_(scale)))
        out.adv_grads.append(put(adv.mul_(scale)))
        out.momentum_buffers.append(put(mom))
        out.revision_params.append(put(rev))
    return out


def synthetic_specs(num_tensors: int, total: int) -> List[ParamSpec]:
    """`num_tensors` conv-like tensors of (almost) equal size summing to `total` elements (scaling runs)."""
    base, extra = divmod(total, num_tensors)
    return [ParamSpec(f"t{i}.weight", (base + (1 if i < extra else 0),), "conv") for i in range(num_tensors)]


if __name__ == "__main__":
    for name in ARCHITECTURES:
        sp = model_specs(name)
        print(f"{name}: {len(sp)} tensors, {sum(s.numel for s in sp):,} params, "
              f"{sum(selective_flags(sp, name, 'official'))} official-selective")
