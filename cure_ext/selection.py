"""Which parameters are subject to CURE's selection: one flag per trainable parameter.

Selection policies (the trainer's `--select`):
- paper: every parameter except the classifier head's (`linear` / `fc` in our models);
- official: the authors' `rgp_soft`, only the first conv of each residual block (`*.conv1.weight` below a
  stage; the stem `conv1` is exempt);
- all / none: every trainable tensor / no tensor (CURE then is TRADES plus the revision consistency term).
"""
from __future__ import annotations

from typing import Callable, Sequence, Union


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
