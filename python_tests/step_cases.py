"""Random inputs for selective_step tests: fresh every run (seeded from the OS), with the seed
printed in assertion messages so a failure can be replayed."""
import random

import torch

FIELDS = ("params", "grads", "nat_grads", "adv_grads", "momentum_buffers", "revision_params")


def new_seed() -> int:
    return random.SystemRandom().randrange(2**31)


SPECIALS = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0, 0.0], dtype=torch.float64)
SCORE_INPUTS = ("nat_grads", "adv_grads")


def make_case(shapes, dtype, device, seed, ties=False, specials=False):
    """Tensors for every list argument. ties: few distinct values; specials: NaN, +-inf, -0 and +0
    sprinkled over the score inputs."""
    g = torch.Generator().manual_seed(seed)

    def rnd(shape, field):
        if ties:
            t = torch.randint(-3, 4, shape, generator=g).to(torch.float64) / 2
        else:
            t = torch.randn(shape, generator=g, dtype=torch.float64)
        if specials and field in SCORE_INPUTS:
            pick = SPECIALS[torch.randint(0, len(SPECIALS), shape, generator=g)]
            t = torch.where(torch.rand(shape, generator=g, dtype=torch.float64) < 0.3, pick, t)
        return t.to(dtype).to(device)

    return {f: [rnd(s, f) for s in shapes] for f in FIELDS}


def clone_case(case):
    return {f: None if ts is None else [None if t is None else t.clone() for t in ts] for f, ts in case.items()}


def call(fn, case, **kw):
    return fn(case["params"], case["grads"], case["nat_grads"], case["adv_grads"], case["momentum_buffers"],
              case["revision_params"], **kw)


def assert_case_close(got, want, msg):
    for f in ("params", "momentum_buffers", "revision_params"):
        for i, (a, b) in enumerate(zip(got[f] or [], want[f] or [])):
            torch.testing.assert_close(a, b, equal_nan=True, msg=lambda m: f"{msg} {f}[{i}]: {m}")
