"""torch.library.opcheck: schema (declared mutations), fake kernel, dispatch and functionalization."""
import pytest
import torch

import cure_ext  # noqa: F401  (registers the op)
from step_cases import make_case

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
