"""bench.host_plan: builds the CUDA step's host planner with the C++ compiler and times it on the CPU
(no GPU). Timings themselves are the benchmark's business; this checks the record and bad input."""
import pytest

from bench.host_plan import plan_cost_us


def test_plan_cost_record():
    record = plan_cost_us(62, 16, 50)
    assert set(record) == {"first_us", "cached_us"}
    assert all(isinstance(v, float) and v > 0 for v in record.values()), record


@pytest.mark.parametrize("args", [(-1, 16, 10), (4, -2, 10), (4, 16, 0), (4.0, 16, 10), (True, 16, 10)])
def test_bad_arguments_are_refused(args):
    with pytest.raises(ValueError, match="n_tensors|numel|calls"):
        plan_cost_us(*args)
