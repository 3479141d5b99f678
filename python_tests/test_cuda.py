"""CUDA-only checks of selective_step: big tensors, the multi-tensor launch count, 64-bit indexing.
The device-parameterised tests in the other files run on CUDA too when a GPU is present."""
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
    kw = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, percentile=0.37, alpha=0.2, revise=True)
    fused, ref = clone_case(case), clone_case(case)
    kf = call(cure_ext.selective_step, fused, **kw)
    kr = call(reference.selective_step, ref, **kw)
    assert torch.equal(kf.cpu(), kr.cpu()), f"seed={seed}"
    assert_case_close(fused, ref, f"seed={seed}")


def count_kernels(fn):
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_launches_do_not_grow_with_tensor_count(dtype):
    total = 1 << 20
    counts = {}
    for tensors in (4, 64, 512):
        case = make_case([(total // tensors,)] * tensors, dtype, CUDA, seed=tensors)
        kw = dict(lr=0.1, momentum=0.9, percentile=0.3, revise=True)
        call(cure_ext.selective_step, clone_case(case), **kw)  # warm-up
        counts[tensors] = count_kernels(lambda: call(cure_ext.selective_step, case, **kw))
    assert len(set(counts.values())) == 1, counts


def test_more_than_2_31_elements():
    n = 2**31 + 4099
    need = n * 2 * 4 + n * 4 + (1 << 30)  # four bf16 lists, candidate keys, slack
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
