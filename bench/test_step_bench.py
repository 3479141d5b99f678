"""pytest-benchmark suite of the step variants (excluded from the default test run by its marker).

    python -m pytest bench -m benchmark_suite                    # every device, model and variant
    python -m pytest bench -m benchmark_suite -k "resnet18 and cpu"

pytest-benchmark times on the host, so CUDA variants synchronise inside each timed call here; the CUDA-event
medians of `python -m bench` are the figures to quote. Inputs rotate over pre-generated sets per call.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from bench import shapes
from bench.variants import StepConfig, make_variants

pytest.importorskip("pytest_benchmark")

pytestmark = pytest.mark.benchmark_suite

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
MODELS = ["resnet18", "wrn34_10"]
VARIANTS = ["fused", "fused_norevise", "reference", "torch_step", "torch_foreach_step", "official", "sgd_fused",
            "sgd_foreach", "kthvalue", "topk"]
SLOW = {"reference", "torch_step", "torch_foreach_step", "official", "kthvalue", "topk"}
N_SETS = 2

_cache: dict = {}


def _variants(device: str, model: str):
    key = (device, model)
    if key not in _cache:
        _cache.clear()  # one model's input sets at a time (WRN-34-10: ~1.1 GB per set in float32)
        specs = shapes.model_specs(model)
        sets = [shapes.make_inputs(specs, device, seed=s) for s in range(N_SETS)]
        cfg = StepConfig(selective=shapes.selective_flags(specs, model, "paper"), **shapes.HYPER[model])
        _cache[key] = make_variants(sets, cfg)
    return _cache[key]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("device", DEVICES)
def test_step(benchmark, device, model, variant):
    fn = _variants(device, model)[variant]
    counter = itertools.count()
    cuda = device == "cuda"

    def run():
        fn(next(counter) % N_SETS)
        if cuda:
            torch.cuda.synchronize()

    benchmark.group = f"step-{device}-{model}"
    benchmark.extra_info.update(device=device, model=model, variant=variant)
    slow = variant in SLOW and not cuda
    benchmark.pedantic(run, rounds=3 if slow else 20, warmup_rounds=1 if slow else 3, iterations=1)
