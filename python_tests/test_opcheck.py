"""The op's registration with torch: torch.library.opcheck (schema with declared mutations, fake kernel,
dispatch, functionalization), the cudagraph_unsafe tag, and torch.compile calling the op."""
import pytest
import torch

import cure_ext  # noqa: F401  (registers the op)
from cure_ext import reference
from step_cases import assert_case_close, call, clone_case, make_case, new_seed

SHAPES = [(3, 4), (1,), (0,), (257,)]


def op_args(case, percentile, selective, revise, momentum):
    return (case["params"], case["grads"], case["nat_grads"], case["adv_grads"],
            case["momentum_buffers"] if momentum > 0 else [], case["revision_params"], 0.1, momentum, 0.0, 1e-4,
            False, percentile, 0.2, "abs", "grad", selective, revise, 0.99)


@pytest.mark.parametrize("percentile,revise,momentum", [(0.3, True, 0.9), (0.0, False, 0.0), (1.0, True, 0.5)])
def test_opcheck(device, dtype, percentile, revise, momentum):
    case = make_case(SHAPES, dtype, device, seed=3)
    selective = [True, False, True, True]
    case["nat_grads"][1] = case["adv_grads"][1] = None
    torch.library.opcheck(torch.ops.cure_ext.selective_step.default,
                          op_args(case, percentile, selective, revise, momentum))


def test_schema_is_tagged_cudagraph_unsafe():
    assert torch.Tag.cudagraph_unsafe in torch.ops.cure_ext.selective_step.default.tags


def scaled_step(params, grads, nat_grads, adv_grads, bufs, revs, scale):
    """The op between two pieces of ordinary tensor work, so a compiled graph has parts on both sides."""
    scaled = [g * scale for g in grads]
    kept = torch.ops.cure_ext.selective_step(params, scaled, nat_grads, adv_grads, bufs, revs, 0.1, 0.9, 0.0, 1e-3,
                                             False, 0.35, 0.2, "abs", "grad", [True] * len(params), True, 0.9)
    return kept * 2


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_function_calling_the_op_matches_eager_and_the_reference(device, mode, monkeypatch, tmp_path):
    """Three calls (reduce-overhead records CUDA graphs on a later call and replays them after): each equals
    the same function run eagerly bit for bit, and the reference step on the scaled gradients."""
    # A fresh inductor cache: torch 2.13's FX graph cache does not key on ATEN_CPU_CAPABILITY, so a kernel
    # generated for AVX-512 by an earlier run would be loaded and built for AVX2 (garbage gradients).
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    seed = new_seed()
    case = make_case([(40, 30), (7,), (300,)], torch.float32, device, seed)
    compiled, eager, ref = clone_case(case), clone_case(case), clone_case(case)
    fn = torch.compile(scaled_step, mode=mode)
    for step in range(3):
        msg = f"seed={seed} mode={mode} step={step}"
        kept = call(fn, compiled, scale=0.5)
        kept_eager = call(scaled_step, eager, scale=0.5)
        kept_ref = call(reference.selective_step, dict(ref, grads=[g * 0.5 for g in ref["grads"]]), lr=0.1,
                        momentum=0.9, weight_decay=1e-3, percentile=0.35, alpha=0.2, revise=True, revision_decay=0.9)
        assert torch.equal(kept, kept_eager) and torch.equal(kept.cpu(), 2 * kept_ref.cpu()), msg
        for f in ("params", "momentum_buffers", "revision_params"):
            assert all(torch.equal(a, b) for a, b in zip(compiled[f], eager[f])), f"{msg} {f}"
        assert_case_close(compiled, ref, msg)
