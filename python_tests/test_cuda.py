"""CUDA-only checks of selective_step: big tensors, the multi-tensor launch count, plan reuse, the
bounded candidate buffer, CUDA-graph capture refused, 64-bit indexing. The device-parameterised tests
in the other files run on CUDA too when a GPU is present."""
import pytest
import torch

import cure_ext
from cure_ext import reference
from step_cases import assert_case_close, call, clone_case, make_case, new_seed

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("specials", [False, True])
def test_multi_million_tensors_against_reference(dtype, specials):
    seed = new_seed()
    case = make_case([(3_000_001,), (1_100_000,), (1,), (0,), (16_384,), (16_385,)], dtype, CUDA, seed,
                     specials=specials)
    assert_step_matches_reference(case, f"seed={seed}")


def assert_step_matches_reference(case, msg):
    """One fused step on a copy of case equals the reference step: kept exactly, the tensors closely."""
    kw = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, percentile=0.37, alpha=0.2, revise=True)
    fused, ref = clone_case(case), clone_case(case)
    kf = call(cure_ext.selective_step, fused, **kw)
    kr = call(reference.selective_step, ref, **kw)
    assert torch.equal(kf.cpu(), kr.cpu()), msg
    assert_case_close(fused, ref, msg)


def cuda_events(fn):
    """Names of the device-side events (kernels, memsets, copies) of one call."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


# Per path, tensor counts with equal totals: single-chunk tensors (selected inside one block) and
# multi-chunk ones (compaction and later digits too) take different, fixed numbers of stream ops.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("numel,counts", [(2048, (4, 64, 512)), (3 * 16384 + 5, (2, 16, 64))],
                         ids=["single-chunk", "multi-chunk"])
def test_launches_do_not_grow_with_tensor_count(dtype, numel, counts):
    ops = {}
    for tensors in counts:
        case = make_case([(numel,)] * tensors, dtype, CUDA, seed=tensors)
        kw = dict(lr=0.1, momentum=0.9, percentile=0.3, revise=True)
        call(cure_ext.selective_step, clone_case(case), **kw)  # warm-up
        ops[tensors] = len(cuda_events(lambda: call(cure_ext.selective_step, case, **kw)))
    assert len(set(ops.values())) == 1, ops


def op_call(case, percentile):
    """torch.ops.cure_ext.selective_step itself, without the Python wrapper: only the op's own device work.
    lr 0.1, momentum 0.9 and revision, the wrapper's defaults otherwise."""
    return torch.ops.cure_ext.selective_step(
        case["params"], case["grads"], case["nat_grads"], case["adv_grads"], case["momentum_buffers"],
        case["revision_params"], 0.1, 0.9, 0.0, 0.0, False, percentile, 0.1, "abs", "grad",
        [True] * len(case["params"]), True, 0.999)


def test_unchanged_list_reuses_the_uploaded_plan():
    """Repeated calls on one tensor list upload no metadata; a changed k (percentile) plans and uploads
    again. Every step still equals the reference."""
    seed = new_seed()
    case = make_case([(40_000,), (7,), (16_385,)], torch.float32, CUDA, seed)
    ref = clone_case(case)
    uploads = []
    for step, percentile in enumerate((0.3, 0.3, 0.3, 0.6, 0.6)):
        kept = []
        names = cuda_events(lambda: kept.append(op_call(case, percentile)))
        uploads.append(sum("htod" in n.lower() for n in names))
        kr = call(reference.selective_step, ref, lr=0.1, momentum=0.9, percentile=percentile, revise=True)
        assert torch.equal(kept[0].cpu(), kr.cpu()), f"seed={seed} step={step}"
        assert_case_close(case, ref, f"seed={seed} step={step}")
    assert uploads == [1, 0, 0, 1, 0], uploads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("cap", [0, 1024, 50_000])
def test_candidates_overflowing_a_small_cap_match_the_reference(dtype, cap, monkeypatch):
    """CURE_EXT_CAND_CAP bounds the candidate keys; selections whose candidates do not fit recompute
    their keys from the gradients. Ties and zero gradients put every key in one first-digit bin."""
    monkeypatch.setenv("CURE_EXT_CAND_CAP", str(cap))
    seed = new_seed()
    for ties, specials in ((False, False), (True, False), (False, True)):
        case = make_case([(100_003,), (40_000,), (16_385,), (300,)], dtype, CUDA, seed, ties=ties, specials=specials)
        case["nat_grads"][1].zero_()
        case["adv_grads"][1].zero_()
        assert_step_matches_reference(case, f"seed={seed} ties={ties} specials={specials}")


def test_capture_is_refused_before_anything_is_written():
    case = make_case([(5000,), (20_000,)], torch.float32, CUDA, seed=3)
    before = clone_case(case)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="cannot be captured in a CUDA graph"):
        with torch.cuda.graph(graph):
            op_call(case, 0.3)
    torch.cuda.synchronize()
    for f in ("params", "momentum_buffers", "revision_params"):
        for a, b in zip(case[f], before[f]):
            assert torch.equal(a, b), f
    op_call(case, 0.3)  # still usable outside a capture
    assert not torch.equal(case["params"][0], before["params"][0])


def test_more_than_2_31_elements():
    n = 2**31 + 4099
    need = n * 2 * 4 + (1 << 30)  # four bf16 lists, slack (candidate keys are capped)
    if torch.cuda.mem_get_info()[0] < need:
        pytest.skip("not enough free GPU memory for a 2^31-element case")
    half = 2**30
    nat = torch.ones(n, dtype=torch.bfloat16, device=CUDA)
    nat[half:] = 2.0  # ranks [0, 2^30) hold 1.0: with k = floor(n/2) > 2^30 the threshold is 2.0
    adv = torch.zeros_like(nat)
    params = torch.zeros_like(nat)
    grads = torch.ones_like(nat)
    kept = cure_ext.selective_step([params], [grads], [nat], [adv], lr=1.0, percentile=0.5, alpha=1.0)
    assert kept.item() == n - half
    assert params[:half].eq(0).all().item() and params[half:].eq(-1).all().item()
    assert params[-1].item() == -1  # an index past 2^31


def test_resnet18_shapes_match_cpu_kernel():
    from cure_ext.train.models import MODELS
    with torch.device("meta"):
        shapes = [tuple(p.shape) for p in MODELS["resnet18"](10, 3).parameters()]
    seed = new_seed()
    cpu_case = make_case(shapes, torch.float32, torch.device("cpu"), seed)
    gpu_case = {f: [t.to(CUDA) for t in ts] for f, ts in cpu_case.items()}
    kw = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, percentile=0.3, alpha=0.1, revise=True)
    kc = call(cure_ext.selective_step, cpu_case, **kw)
    kg = call(cure_ext.selective_step, gpu_case, **kw)
    assert torch.equal(kc, kg.cpu()), f"seed={seed}"
    assert_case_close({f: [t.cpu() for t in ts] for f, ts in gpu_case.items()}, cpu_case, f"seed={seed}")
