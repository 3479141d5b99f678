"""The networks of the paper, with the parameter names of the authors' code (the `official` selection
policy and the layer-wise study find tensors by name: block convs are `conv1`/`conv2`, residual stages are
`layer1..` or `block1..`, the head is `linear` or `fc`).

Inputs are in [0, 1]. Like the authors' code (`--norm_std False`) the networks apply no normalisation.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    """Post-activation residual block of ResNet-18 (and of the small CNN)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


def _stage(block, in_planes: int, planes: int, count: int, stride: int) -> nn.Sequential:
    layers = []
    for s in [stride] + [1] * (count - 1):
        layers.append(block(in_planes, planes, s))
        in_planes = planes
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """CIFAR-style ResNet (3x3 stem, no max-pool), also the small CNN with fewer and narrower stages."""

    head_name = "linear"

    def __init__(self, block, widths, counts, strides, num_classes: int, in_channels: int = 3,
                 stem_width: int = 64, final_bn: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem_width, 3, 1, 1, bias=False)
        # Post-activation nets normalise the stem; pre-activation nets normalise before the head instead.
        self.bn1 = None if final_bn else nn.BatchNorm2d(stem_width)
        in_planes = stem_width
        self.stage_names = []
        for i, (w, n, s) in enumerate(zip(widths, counts, strides), start=1):
            setattr(self, f"layer{i}", _stage(block, in_planes, w, n, s))
            self.stage_names.append(f"layer{i}")
            in_planes = w
        self.bn = nn.BatchNorm2d(in_planes) if final_bn else None
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = self.conv1(x)
        if self.bn1 is not None:
            out = F.relu(self.bn1(out))
        for name in self.stage_names:
            out = getattr(self, name)(out)
        if self.bn is not None:
            out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class WideBlock(nn.Module):
    """Pre-activation block of the TRADES/CURE WideResNet (names bn1, conv1, bn2, conv2, convShortcut)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.equal = in_planes == planes
        self.convShortcut = None if self.equal else nn.Conv2d(in_planes, planes, 1, stride, 0, bias=False)

    def forward(self, x):
        act = F.relu(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + (x if self.equal else self.convShortcut(act))


class NetworkBlock(nn.Module):
    def __init__(self, count: int, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[WideBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1)
                                     for i in range(count)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    head_name = "fc"

    def __init__(self, depth: int = 34, widen: int = 10, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.stage_names = ["block1", "block2", "block3"]
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def small_cnn(num_classes: int, in_channels: int) -> ResNet:
    """A three-stage residual CNN of ~20k parameters for 8x8 digits and 28x28 Fashion-MNIST: residual
    stages so that the `official` policy and `--update-blocks` mean the same thing as on ResNet-18."""
    return ResNet(BasicBlock, (8, 16, 32), (1, 1, 1), (1, 2, 2), num_classes, in_channels, stem_width=8)


MODELS = {
    "cnn": small_cnn,
    "resnet18": lambda c, k: ResNet(BasicBlock, (64, 128, 256, 512), (2, 2, 2, 2), (1, 2, 2, 2), c, k),
    "preactresnet18": lambda c, k: ResNet(PreActBlock, (64, 128, 256, 512), (2, 2, 2, 2), (1, 2, 2, 2), c, k,
                                          final_bn=True),
    "wrn34-10": lambda c, k: WideResNet(34, 10, c, k),
}


def build_model(name: str, num_classes: int, in_channels: int, seed: int) -> nn.Module:
    """The named network, initialised from `seed` without touching the global RNG stream."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[name](num_classes, in_channels)
