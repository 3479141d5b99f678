"""cure_ext.selective_step against the reference and against known values (SPEC §2)."""
import math
import random

import pytest
import torch

import cure_ext
from cure_ext import reference
from cure_ext.train.device import cpu_threads
from step_cases import assert_case_close, call, clone_case, make_case, new_seed

SHAPES = [(0,), (1,), (7,), (64, 3, 3, 3), (33, 17), (130_001,), (2, 0, 3)]


def run_both(case, steps=1, **kw):
    """Runs the fused op and the reference on copies of one case; returns both cases and kept lists."""
    fused, ref = clone_case(case), clone_case(case)
    kept_f, kept_r = [], []
    for _ in range(steps):
        kept_f.append(call(cure_ext.selective_step, fused, **kw))
        kept_r.append(call(reference.selective_step, ref, **kw))
    return fused, ref, kept_f, kept_r


def check_against_reference(case, seed, steps=1, **kw):
    fused, ref, kept_f, kept_r = run_both(case, steps, **kw)
    msg = f"seed={seed} kw={kw}"
    for s, (kf, kr) in enumerate(zip(kept_f, kept_r)):
        assert kf.dtype == torch.int64 and kf.device == case["params"][0].device
        assert torch.equal(kf.cpu(), kr.cpu()), f"{msg} step {s}: kept {kf.tolist()} != {kr.tolist()}"
    assert_case_close(fused, ref, msg)


def fused_mask(nat, adv, **kw):
    """The exact keep mask the op applies, read off an update of zero params by unit gradients."""
    params = [torch.zeros_like(t) for t in nat]
    grads = [torch.ones_like(t) for t in nat]
    kept = cure_ext.selective_step(params, grads, nat, adv, lr=1.0, **kw)
    masks = [p != 0 for p in params]
    assert [int(m.sum()) for m in masks] == kept.tolist()
    return masks


@pytest.mark.parametrize("score", ["abs", "signed"])
@pytest.mark.parametrize("conserve", ["grad", "freeze"])
def test_matches_reference_random(device, dtype, score, conserve):
    seed = new_seed()
    rng = random.Random(seed)
    case = make_case(SHAPES, dtype, device, seed)
    kw = dict(lr=rng.uniform(0.01, 0.5), momentum=0.9, weight_decay=5e-4, percentile=rng.random(),
              alpha=rng.random(), score=score, conserve=conserve, revise=True, revision_decay=rng.random())
    check_against_reference(case, seed, steps=3, **kw)


@pytest.mark.parametrize("percentile", [0.0, 1.0, 0.5, 0.3])
@pytest.mark.parametrize("alpha", [0.0, 1.0, 0.1])
def test_percentile_and_alpha_edges(device, dtype, percentile, alpha):
    seed = new_seed()
    case = make_case(SHAPES, dtype, device, seed)
    check_against_reference(case, seed, lr=0.1, momentum=0.9, percentile=percentile, alpha=alpha)


@pytest.mark.parametrize("momentum,dampening,nesterov", [(0.0, 0.0, False), (0.9, 0.0, False), (0.9, 0.0, True),
                                                         (0.5, 0.3, False)])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_momentum_variants(device, dtype, momentum, dampening, nesterov, weight_decay):
    seed = new_seed()
    case = make_case(SHAPES, dtype, device, seed)
    if momentum == 0.0:
        case["momentum_buffers"] = None
    check_against_reference(case, seed, steps=3, lr=0.05, momentum=momentum, dampening=dampening,
                            nesterov=nesterov, weight_decay=weight_decay, percentile=0.4, conserve="grad")


@pytest.mark.parametrize("score", ["abs", "signed"])
def test_heavy_ties(device, dtype, score):
    seed = new_seed()
    case = make_case(SHAPES, dtype, device, seed, ties=True)
    check_against_reference(case, seed, lr=0.1, percentile=random.Random(seed).random(), score=score,
                            momentum=0.9)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("score", ["abs", "signed"])
def test_large_tensors_on_two_threads(device, dtype, ties, score):
    """Millions of entries over two threads: the CPU step sets the threshold bucket's entries aside
    (float32: thousands of them, decided in parallel after the update pass) or, with many equal scores
    (and float64's wider buckets), selects exactly first; a tensor of 5,000 runs whole on a pool thread."""
    seed = new_seed()
    case = make_case([(3_000_001,), (1000, 2001), (5000,)], dtype, device, seed, ties=ties)
    with cpu_threads(2, "any"):
        check_against_reference(case, seed, steps=2, lr=0.1, momentum=0.9, weight_decay=5e-4, percentile=0.45,
                                alpha=0.3, score=score, revise=True, revision_decay=0.9)


@pytest.mark.parametrize("score", ["abs", "signed"])
@pytest.mark.parametrize("percentile", [0.05, 0.5, 0.9, 0.99])
def test_nan_inf_negative_zero(device, dtype, score, percentile):
    seed = new_seed()
    case = make_case(SHAPES, dtype, device, seed, specials=True)
    check_against_reference(case, seed, lr=0.1, percentile=percentile, score=score, momentum=0.9,
                            alpha=0.25)


def test_revision_off_leaves_revision_params(device, dtype):
    seed = new_seed()
    case = make_case(SHAPES, dtype, device, seed)
    before = [r.clone() for r in case["revision_params"]]
    check_against_reference(case, seed, lr=0.1, momentum=0.9, revise=False)
    fused = clone_case(case)
    call(cure_ext.selective_step, fused, lr=0.1, momentum=0.9, revise=False)
    assert all(torch.equal(a, b) for a, b in zip(fused["revision_params"], before))


def test_mixed_selective_flags_and_missing_score_grads(device, dtype):
    seed = new_seed()
    case = make_case(SHAPES, dtype, device, seed)
    flags = [i % 2 == 0 for i in range(len(SHAPES))]
    for i, f in enumerate(flags):
        if not f:
            case["nat_grads"][i] = case["adv_grads"][i] = None
    check_against_reference(case, seed, steps=2, lr=0.1, momentum=0.9, percentile=0.6, selective=flags,
                            revise=True)
    kept = call(cure_ext.selective_step, clone_case(case), lr=0.1, momentum=0.9, percentile=0.6,
                selective=flags)
    for i, f in enumerate(flags):
        n = math.prod(SHAPES[i])
        # Ties at the threshold are kept (16-bit gradients tie often): at most floor(0.6 n) conserved.
        assert n - math.floor(0.6 * n) <= kept[i] <= n if f else kept[i] == n, (seed, i)


def test_non_contiguous(device, dtype):
    seed = new_seed()
    base = make_case([(40, 30), (16, 8, 6), (200,)], dtype, device, seed)

    def views(case):
        return {f: [ts[0].t(), ts[1][:, ::2, 1:], ts[2][::3]] for f, ts in case.items()}

    fused_base, ref_base = clone_case(base), clone_case(base)
    fused, ref = views(fused_base), views(ref_base)
    assert not any(v.is_contiguous() for v in fused["params"])
    kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-3, percentile=0.35, revise=True, revision_decay=0.9)
    kf = call(cure_ext.selective_step, fused, **kw)
    kr = call(reference.selective_step, ref, **kw)
    assert torch.equal(kf.cpu(), kr.cpu())
    # The results land in the caller's storage, and entries outside the views stay untouched.
    assert_case_close(fused_base, ref_base, f"seed={seed}")
    untouched = base["params"][2].clone()
    untouched[::3] = fused_base["params"][2][::3]
    assert torch.equal(fused_base["params"][2], untouched)


def _channels_last(t):
    return t.contiguous(memory_format=torch.channels_last)


def _permuted(t):  # a dense layout walked in an order no memory format names
    return t.permute(2, 0, 1).contiguous().permute(1, 2, 0)


# Dense non-contiguous layouts (SPEC §2: non-contiguous tensors handled, results in the caller's tensor).
DENSE_SHAPES = [(64, 3, 3, 3), (16, 8, 5, 5), (6, 7, 9), (40, 30), (5, 1, 3, 3), (3000, 2)]
DENSE_LAYOUTS = [_channels_last, _channels_last, _permuted, lambda t: t.t().contiguous().t(), _channels_last,
                 lambda t: t.t().contiguous().t()]
KW_LAYOUT = dict(lr=0.1, momentum=0.9, weight_decay=1e-3, percentile=0.35, alpha=0.2, revise=True,
                 revision_decay=0.9)


def with_layouts(case, layouts):
    """The case with every list's entry i in layouts[i] (same values); layouts may differ per field."""
    out = {}
    for f, ts in case.items():
        fl = layouts[f] if isinstance(layouts, dict) else layouts
        out[f] = [lay(t) for lay, t in zip(fl, ts)]
    return out


def bits(t):
    """The tensor's bit patterns, so that equal NaNs compare equal."""
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def aten_copies(fn):
    """How many copy operators (the copies of strided inputs) one call runs, from torch.profiler. The CUDA
    kernel's plan upload is a cudaMemcpyAsync, not an operator: only copies of the caller's tensors count."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key in ("aten::copy_", "aten::contiguous", "aten::clone"))


def check_layout_call(case, layouts, seed):
    """The op on `case` laid out by `layouts` equals, bit for bit, the op on contiguous tensors, agrees
    with the reference, and leaves the layouts as they were; returns the number of copies it made."""
    contiguous, ref = clone_case(case), clone_case(case)
    laid = with_layouts(clone_case(case), layouts)
    strides = {f: [t.stride() for t in ts] for f, ts in laid.items()}
    kept = []
    copies = aten_copies(lambda: kept.append(call(cure_ext.selective_step, laid, **KW_LAYOUT)))
    kc = call(cure_ext.selective_step, contiguous, **KW_LAYOUT)
    kr = call(reference.selective_step, ref, **KW_LAYOUT)
    assert torch.equal(kept[0].cpu(), kc.cpu()) and torch.equal(kc.cpu(), kr.cpu()), f"seed={seed}"
    for f in ("params", "momentum_buffers", "revision_params"):
        for i, (a, b) in enumerate(zip(laid[f], contiguous[f])):
            assert a.stride() == strides[f][i], f"{f}[{i}] changed layout"
            assert torch.equal(bits(a), bits(b)), f"seed={seed} {f}[{i}] differs from the contiguous call"
    assert_case_close(laid, ref, f"seed={seed}")
    return copies


def test_dense_layouts_step_in_place_without_copies(device, dtype):
    seed = new_seed()
    case = make_case(DENSE_SHAPES, dtype, device, seed)
    assert not any(lay(t).is_contiguous() for lay, t in zip(DENSE_LAYOUTS, case["params"][:4]))
    assert check_layout_call(case, DENSE_LAYOUTS, seed) == 0


def test_layouts_disagreeing_across_lists_are_copied(device, dtype):
    """params channels_last with contiguous gradients, and a strided (non-dense) view: the copy path,
    with the same bits as the contiguous call."""
    seed = new_seed()
    case = make_case(DENSE_SHAPES, dtype, device, seed)
    layouts = {f: DENSE_LAYOUTS for f in case}
    layouts["grads"] = [lambda t: t] * len(DENSE_SHAPES)
    assert check_layout_call(case, layouts, seed) > 0


def test_strided_views_are_copied(device, dtype):
    seed = new_seed()
    case = make_case([(40, 30), (200,)], dtype, device, seed)
    every_other = [lambda t: torch.repeat_interleave(t, 2, dim=-1)[..., ::2]] * 2  # not dense
    assert check_layout_call(case, every_other, seed) > 0


def test_known_mask_values():
    """SPEC §2 by hand: k = floor(0.3 * 10) = 3; abs scores with alpha = 0.5 are |a|/2 + |b|/2."""
    nat = torch.tensor([4.0, -0.0, 2.0, float("nan"), -6.0, 0.0, 1.0, 2.0, float("inf"), 3.0])
    adv = torch.zeros(10)
    # scores: 2, 0, 1, nan, 3, 0, 0.5, 1, inf, 1.5 -> sorted: 0, 0, 0.5, [1], 1, 1.5, 2, 3, inf, nan
    masks = fused_mask([nat], [adv], alpha=0.5, percentile=0.3)
    assert masks[0].tolist() == [True, False, True, True, True, False, False, True, True, True]
    # signed: scores 2, 0, 1, nan, -3, 0, .5, 1, inf, 1.5 -> sorted -3, 0, 0, [.5], 1, 1, ... ties kept
    masks = fused_mask([nat], [adv], alpha=0.5, percentile=0.3, score="signed")
    assert masks[0].tolist() == [True, False, True, True, False, False, True, True, True, True]


def test_known_nan_threshold_and_extremes():
    nat = [torch.tensor([float("nan"), 1.0, float("nan"), 5.0]), torch.tensor([3.0, 1.0, 2.0])]
    adv = [torch.zeros(4), torch.zeros(3)]
    # k = 2: the rank-2 element of [1, 5, nan, nan] is NaN, so exactly the NaN entries are kept.
    assert fused_mask(nat[:1], adv[:1], alpha=1.0, percentile=0.5)[0].tolist() == [True, False, True, False]
    assert fused_mask(nat, adv, alpha=1.0, percentile=1.0)[1].tolist() == [False, False, False]
    assert fused_mask(nat, adv, alpha=1.0, percentile=0.0)[1].tolist() == [True, True, True]
    # floor(0.999 * 3) = 2 conserved: only the largest score survives.
    assert fused_mask(nat, adv, alpha=1.0, percentile=0.999)[1].tolist() == [True, False, False]


def test_score_rounds_each_product():
    """alpha = 0.1: c_nat = float32(0.1), c_adv = float32(1 - 0.1 in double). Two entries whose scores
    differ only in the last bit when each product is rounded separately must be ordered that way."""
    a = torch.tensor([1.0, 0.0, 3.0, 1e-8], dtype=torch.float32)
    b = torch.tensor([0.0, 0.1111111, 0.0, 3.3], dtype=torch.float32)
    s = reference.prominence(a, b, 0.1, "abs")
    c_nat, c_adv = torch.tensor(0.1, dtype=torch.float32), torch.tensor(1 - 0.1, dtype=torch.float32)
    expect = torch.tensor([float(c_nat * a[i]) for i in range(4)]) + torch.tensor([float(c_adv * b[i]) for i in range(4)])
    assert torch.equal(s, expect.float())
    for q in (0.25, 0.5, 0.75):
        want = reference.keep_mask(s, q)
        assert torch.equal(fused_mask([a], [b], alpha=0.1, percentile=q)[0], want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # torch's SGD rounds 16-bit intermediates
def test_first_step_equals_torch_sgd_when_nothing_conserved(device, dtype):
    seed = new_seed()
    case = make_case([(50, 20), (9,)], dtype, device, seed)
    params = [p.clone() for p in case["params"]]
    expected = [p.clone().requires_grad_() for p in case["params"]]
    for e, g in zip(expected, case["grads"]):
        e.grad = g.clone()
    torch.optim.SGD(expected, lr=0.1, momentum=0.9, weight_decay=1e-3).step()
    bufs = [torch.zeros_like(p) for p in params]
    cure_ext.selective_step(params, case["grads"], case["nat_grads"], case["adv_grads"], bufs, lr=0.1,
                            momentum=0.9, weight_decay=1e-3, percentile=0.0)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p, e.detach())


def test_freeze_keeps_conserved_entries_bit_identical(device, dtype):
    seed = new_seed()
    case = make_case([(300,), (20, 20)], dtype, device, seed)
    before = clone_case(case)
    masks = fused_mask(case["nat_grads"], case["adv_grads"], percentile=0.4)
    call(cure_ext.selective_step, case, lr=0.1, momentum=0.9, weight_decay=0.01, percentile=0.4,
         conserve="freeze")
    for f in ("params", "momentum_buffers"):
        for m, a, b in zip(masks, case[f], before[f]):
            assert torch.equal(a[~m], b[~m])
            assert not torch.equal(a[m], b[m])


def test_empty_call_and_kept_device():
    kept = cure_ext.selective_step([], [], [], [], lr=0.1)
    assert kept.shape == (0,) and kept.dtype == torch.int64


def test_float64_scores_are_exact_in_double():
    # Two scores equal in float32 but distinct in float64 must be ordered in double for float64 tensors.
    nat = torch.tensor([1.0, 1.0 + 2**-40, 1.0 + 2**-41], dtype=torch.float64)
    adv = torch.zeros(3, dtype=torch.float64)
    assert fused_mask([nat], [adv], alpha=1.0, percentile=0.34)[0].tolist() == [False, True, True]
    assert fused_mask([nat], [adv], alpha=1.0, percentile=0.67)[0].tolist() == [False, True, False]


def test_resnet18_shapes_against_reference(device):
    """A model-sized call: the 62 parameter tensors (11.2M entries) of ResNet-18."""
    from cure_ext.train.models import MODELS
    with torch.device("meta"):
        shapes = [tuple(p.shape) for p in MODELS["resnet18"](10, 3).parameters()]
    assert len(shapes) == 62 and sum(math.prod(s) for s in shapes) == 11_173_962
    seed = new_seed()
    case = make_case(shapes, torch.float32, device, seed)
    check_against_reference(case, seed, lr=0.1, momentum=0.9, weight_decay=5e-4, percentile=0.3, alpha=0.1,
                            revise=True)
