"""Smoke test of the benchmark suite: `python -m bench --quick --tiny` (the benchmark models with every width
divided by 16, so the run takes seconds) writes a record with the keys of SPEC §5 and positive numbers."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STEP_KEYS = ("fused_ms", "reference_ms", "official_ms", "torch_fused_sgd_ms", "floor_ms", "bandwidth_fraction")
ITERATION_KEYS = ("cure_ms", "trades_ms", "cure_over_trades")


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    if not (ROOT / "bench" / "__main__.py").exists():
        pytest.skip("bench/ is not in this checkout")
    out = tmp_path_factory.mktemp("bench")
    # `python -m bench` with bench/ (not installed) found in the checkout, but after the installed packages: the
    # checkout's cure_ext/ must not shadow the installed one, nor may the folder the run starts in matter.
    start = (f"import runpy, sys; sys.path.append({str(ROOT)!r}); "
             "runpy.run_module('bench', run_name='__main__', alter_sys=True)")
    proc = subprocess.run([sys.executable, "-c", start, "--quick", "--tiny", "--devices", "cpu",
                           "--models", "resnet18,wrn34_10", "--out", str(out)],
                          cwd=out, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc


def test_bench_writes_spec_record(bench_run):
    out, proc = bench_run
    files = sorted(out.glob("*.json"))
    assert len(files) == 1, files
    assert files[0].name.endswith("-quick.json")
    record = json.loads(files[0].read_text())
    for key in ("device", "date", "torch", "threads", "step", "iteration"):
        assert key in record, key
    assert isinstance(record["device"], str) and record["device"]
    assert set(record["step"]) == {"resnet18", "wrn34_10"}
    assert record["step"]["resnet18"]["num_tensors"] == 62 and record["step"]["wrn34_10"]["num_tensors"] == 98
    for model, step in record["step"].items():
        for key in STEP_KEYS:
            assert _positive(step.get(key)), (model, key, step.get(key))
        for name, ratio in step["ratios"].items():
            assert _positive(ratio), (model, name)
        assert step["counts"]["fused"]["ops"] == 1  # one custom-op call for all tensors
        assert step["counts"]["reference"]["ops"] > step["num_tensors"]
    assert "error" not in record["iteration"], record["iteration"].get("error")
    for key in ITERATION_KEYS:
        assert _positive(record["iteration"].get(key)), key
    assert record["scaling"]["by_tensors"] and record["scaling"]["by_size"]
    points = record["overhead"]["points"]
    assert [p["tensors"] for p in points] == [62, 512]
    for p in points:
        assert "errors" not in p, p.get("errors")
        for name in ("selective_step", "torch_ops", "curesgd_step", "sgd_fused", "foreach_add"):
            assert _positive(p["us"][name]) and _positive(p["over_sgd_fused"][name]), (p["tensors"], name)
        plan = p["cuda_plan_us"]  # the CUDA planner's host cost, new and reused plan (compared in the bench)
        assert _positive(plan["first_us"]) and _positive(plan["cached_us"])


def test_bench_prints_ratio_table_last(bench_run):
    _, proc = bench_run
    tail = proc.stdout.strip().splitlines()
    assert any("reference / fused" in line for line in tail)
    assert any("bandwidth fraction" in line for line in tail)
    assert any("fixed cost per call" in line for line in tail)
    assert any("CUDA planner (host)" in line for line in tail)
