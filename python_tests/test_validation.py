"""Every invalid input of SPEC §2 raises a ValueError/TypeError naming the argument, before any tensor
is written."""
import pytest
import torch

import cure_ext
from cure_ext import reference
from step_cases import FIELDS, make_case

VALID = dict(lr=0.1, momentum=0.9, weight_decay=1e-4, percentile=0.3, alpha=0.1, revise=True)


def base_case(device):
    return make_case([(5, 4), (6,)], torch.float32, device, seed=1)


def set_entry(field, i, make):
    def mutate(case, kw):
        case[field][i] = make(case[field][i])
    return mutate


def set_field(field, value):
    def mutate(case, kw):
        case[field] = value
    return mutate


def set_kw(**updates):
    def mutate(case, kw):
        kw.update(updates)
    return mutate


CASES = [
    ("grads length", set_field("grads", None), "grads"),
    ("nat_grads length", lambda c, kw: c["nat_grads"].pop(), "nat_grads"),
    ("adv_grads length", lambda c, kw: c["adv_grads"].append(None), "adv_grads"),
    ("buffers length", lambda c, kw: c["momentum_buffers"].pop(), "momentum_buffers"),
    ("revision length", lambda c, kw: c["revision_params"].pop(), "revision_params"),
    ("selective length", set_kw(selective=[True]), "selective"),
    ("selective entry", set_kw(selective=[True, 1]), r"selective\[1\]"),
    ("grad shape", set_entry("grads", 1, lambda t: torch.zeros(7)), r"grads\[1\]"),
    ("nat shape", set_entry("nat_grads", 0, lambda t: t.t()), r"nat_grads\[0\]"),
    ("adv dtype", set_entry("adv_grads", 1, lambda t: t.double()), r"adv_grads\[1\]"),
    ("buffer dtype", set_entry("momentum_buffers", 0, lambda t: t.half()), r"momentum_buffers\[0\]"),
    ("revision shape", set_entry("revision_params", 1, lambda t: t[:3]), r"revision_params\[1\]"),
    ("integer param", set_entry("params", 0, lambda t: t.long()), r"params\[0\]"),
    ("integer grad", set_entry("grads", 0, lambda t: t.int()), r"grads\[0\]"),
    ("complex grad", set_entry("grads", 1, lambda t: t.to(torch.complex64)), r"grads\[1\]"),
    ("sparse grad", set_entry("grads", 1, lambda t: t.to_sparse()), r"grads\[1\]"),
    ("not a tensor", set_entry("nat_grads", 1, lambda t: [1.0] * 6), r"nat_grads\[1\]"),
    ("device", set_entry("grads", 1, lambda t: t.to("meta")), r"grads\[1\]"),
    ("params device", set_entry("params", 1, lambda t: t.to("meta")), r"params\[1\]"),
    ("percentile high", set_kw(percentile=1.5), "percentile"),
    ("percentile negative", set_kw(percentile=-0.1), "percentile"),
    ("percentile nan", set_kw(percentile=float("nan")), "percentile"),
    ("alpha", set_kw(alpha=1.01), "alpha"),
    ("revision_decay", set_kw(revision_decay=-1e-3), "revision_decay"),
    ("lr", set_kw(lr=-0.1), "lr"),
    ("momentum", set_kw(momentum=-0.5), "momentum"),
    ("weight_decay", set_kw(weight_decay=-1e-4), "weight_decay"),
    ("nesterov without momentum", set_kw(nesterov=True, momentum=0.0), "nesterov"),
    ("nesterov with dampening", set_kw(nesterov=True, dampening=0.1), "nesterov"),
    ("score", set_kw(score="l2"), "score"),
    ("conserve", set_kw(conserve="zero"), "conserve"),
    ("revise without revision params", set_field("revision_params", None), "revision_params"),
    ("momentum without buffers", set_field("momentum_buffers", None), "momentum_buffers"),
    ("missing nat grad", set_entry("nat_grads", 0, lambda t: None), r"nat_grads\[0\]"),
    ("missing adv grad", set_entry("adv_grads", 1, lambda t: None), r"adv_grads\[1\]"),
    ("params not a list", set_field("params", torch.zeros(3)), "params"),
    ("lr not a number", set_kw(lr="0.1"), "lr"),
]


@pytest.mark.parametrize("fn", [cure_ext.selective_step, reference.selective_step], ids=["fused", "reference"])
@pytest.mark.parametrize("name,mutate,pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_and_writes_nothing(device, fn, name, mutate, pattern):
    case = base_case(device)
    kw = dict(VALID)
    tensors = [t for f in FIELDS for t in case[f]]  # everything the caller holds before the mutation
    snapshot = [t.clone() for t in tensors]
    mutate(case, kw)
    with pytest.raises((ValueError, TypeError), match=pattern):
        fn(case["params"], case["grads"], case["nat_grads"], case["adv_grads"], case["momentum_buffers"],
           case["revision_params"], **kw)
    assert all(torch.equal(a, b) for a, b in zip(snapshot, tensors)), f"{name}: a tensor was modified"


def test_non_selective_tensor_accepts_missing_score_grads(device):
    case = base_case(device)
    case["nat_grads"][1] = case["adv_grads"][1] = None
    kept = cure_ext.selective_step(case["params"], case["grads"], case["nat_grads"], case["adv_grads"],
                                   case["momentum_buffers"], case["revision_params"], selective=[True, False],
                                   **VALID)
    assert kept.tolist() == [20 - 6, 6]


def test_direct_op_call_checks_shapes(device):
    """The C++ op guards memory safety even when called without the Python wrapper."""
    case = base_case(device)
    with pytest.raises(ValueError, match=r"grads\[1\]"):
        torch.ops.cure_ext.selective_step(case["params"], [case["grads"][0], torch.zeros(3, device=device)],
                                          case["nat_grads"], case["adv_grads"], case["momentum_buffers"],
                                          case["revision_params"], 0.1, 0.9, 0.0, 0.0, False, 0.3, 0.1, "abs",
                                          "grad", [True, True], False, 0.999)
