"""Training-iteration benchmark: CURE vs TRADES vs PGD-AT, timed through the trainer's own code.

The trainer (cure_ext/train/) provides everything timed here; nothing of a training step is re-implemented:
- `cure_ext.train.config.make_config(method=..., ...)` resolves the run's settings (β, preset, step sizes);
- `cure_ext.train.phases.plan_phases(cfg)[-1]` is the method's phase (its `step` names the step function);
- `cure_ext.train.loop.Trainer(cfg, out_dir, quiet=True).setup_phase(phase, resuming=False)` builds the
  model's StepSetup exactly as a training run does (CURESGD with the preset's selective flags and the
  revision model for CURE, torch.optim.SGD otherwise);
- GPU: one iteration = `cure_ext.train.steps.STEPS[phase.step](setup, x, y)` on a CIFAR-shaped random batch
  (ResNet-18, batch 128, PGD-10 at ε = 8/255, fp32 and bf16 autocast), timed with CUDA events;
- CPU: one epoch = `Trainer.train_epoch(phase, setup, names, 0, label)` on the embedded digits data with
  the small CNN (the default recipe), timed with time.perf_counter.
Methods are measured round-robin (one call of each per round) so machine load falls on all alike.
"""
from __future__ import annotations

import os
import pickle
import statistics
import tempfile
import time
from typing import Dict

import numpy as np
import torch

METHODS = ("cure", "trades", "pgd-at")
KEYS = {"cure": "cure_ms", "trades": "trades_ms", "pgd-at": "pgd_at_ms"}


def _fake_cifar10(root: str, per_file: int = 256) -> str:
    """CIFAR-10 python batches of random pixels (the format `--dataset cifar10` reads), so the trainer's own
    setup path builds the CIFAR ResNet-18; the timed batches are random CIFAR-shaped tensors."""
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, per_file).tolist()}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch, f)
    return root


def _trainers(tmp: str, **options):
    """One (trainer, phase, setup, names) per method, built by the trainer's own code."""
    from cure_ext.train.config import make_config
    from cure_ext.train.loop import Trainer
    from cure_ext.train.phases import plan_phases

    out = {}
    for method in METHODS:
        cfg = make_config(method=method, **options)
        trainer = Trainer(cfg, os.path.join(tmp, method), quiet=True)
        phase = plan_phases(cfg)[-1]
        setup, _scheduler, names = trainer.setup_phase(phase, resuming=False)
        out[method] = (trainer, phase, setup, names)
    return out


def _summary(samples: Dict[str, list], workload: str, target: float) -> dict:
    rec = {"workload": workload}
    for method, values in samples.items():
        rec[KEYS[method]] = statistics.median(values)
        rec[KEYS[method].replace("_ms", "_runs")] = len(values)
    rec["cure_over_trades"] = rec["cure_ms"] / rec["trades_ms"]
    rec["cure_over_pgd_at"] = rec["cure_ms"] / rec["pgd_at_ms"]
    rec["target_cure_over_trades"] = target
    return rec


def gpu_iteration(device: torch.device, bf16: bool, quick: bool, batch_size: int = 128) -> dict:
    from cure_ext.train.steps import STEPS

    with tempfile.TemporaryDirectory() as tmp:
        runs = _trainers(tmp, dataset="cifar10", data_dir=_fake_cifar10(tmp), device=str(device), bf16=bf16,
                         batch_size=batch_size)
        gen = torch.Generator(device).manual_seed(0)
        batches = [(torch.rand(batch_size, 3, 32, 32, device=device, generator=gen),
                    torch.randint(0, 10, (batch_size,), device=device, generator=gen)) for _ in range(4)]
        warmup, rounds, seconds = (2, 3, 2.0) if quick else (5, 30, 20.0)
        samples: Dict[str, list] = {m: [] for m in METHODS}
        for method, (_, phase, setup, _) in runs.items():
            for i in range(warmup):
                STEPS[phase.step](setup, *batches[i % len(batches)])
        torch.cuda.synchronize(device)
        t0, events = time.perf_counter(), {m: [] for m in METHODS}
        for r in range(rounds):
            for method, (_, phase, setup, _) in runs.items():
                torch.cuda.synchronize(device)  # each iteration starts on an idle device, like the next batch
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                STEPS[phase.step](setup, *batches[r % len(batches)])
                end.record()
                events[method].append((start, end))
            torch.cuda.synchronize(device)
            if r >= 2 and time.perf_counter() - t0 > seconds:
                break
        for m in METHODS:
            samples[m] = [s.elapsed_time(e) for s, e in events[m]]
    return _summary(samples, f"ResNet-18, CIFAR-shaped random batch {batch_size}, PGD-10, "
                             f"{'bf16 autocast' if bf16 else 'fp32'}, one iteration", 1.15)


def cpu_epoch(quick: bool, tiny: bool) -> dict:
    from cure_ext.train.steps import STEPS
    from cure_ext.train.data import batches

    with tempfile.TemporaryDirectory() as tmp:
        runs = _trainers(tmp, dataset="digits", device="cpu")
        if tiny:  # smoke test: one iteration on a small batch instead of whole epochs
            samples: Dict[str, list] = {m: [] for m in METHODS}
            for method, (trainer, phase, setup, _) in runs.items():
                data = trainer.data
                x, y = next(iter(batches(data.train_x, data.train_y, data.scale, 32, torch.device("cpu"))))
                a = time.perf_counter()
                STEPS[phase.step](setup, x, y)
                samples[method].append((time.perf_counter() - a) * 1e3)
            return _summary(samples, "digits, small CNN, first iteration of batch 32 (tiny smoke run)", 1.3)
        warmup, rounds, seconds = (0, 1, 0.0) if quick else (1, 5, 20.0)
        samples = {m: [] for m in METHODS}
        for method, (trainer, phase, setup, names) in runs.items():
            for _ in range(warmup):
                trainer.train_epoch(phase, setup, names, 0, method)
        t0 = time.perf_counter()
        for r in range(rounds):
            for method, (trainer, phase, setup, names) in runs.items():
                a = time.perf_counter()
                trainer.train_epoch(phase, setup, names, 0, method)
                samples[method].append((time.perf_counter() - a) * 1e3)
            if r >= 1 and time.perf_counter() - t0 > seconds:
                break
        n = len(runs["cure"][0].data.train_x)
    return _summary(samples, f"digits ({n} training images), small CNN, batch 128, PGD-10, one epoch", 1.3)


def iteration_benchmark(device: torch.device, quick: bool = False, tiny: bool = False) -> dict:
    """The `iteration` object of the record: the headline workload's cure_ms, trades_ms and
    cure_over_trades at the top level (GPU: ResNet-18 fp32 iteration; CPU: digits epoch), details below."""
    device = torch.device(device)
    try:
        if device.type == "cuda":
            fp32 = gpu_iteration(device, bf16=False, quick=quick)
            bf16 = gpu_iteration(device, bf16=True, quick=quick)
            head = {k: fp32[k] for k in ("cure_ms", "trades_ms", "pgd_at_ms", "cure_over_trades", "workload")}
            return {**head, "fp32": fp32, "bf16": bf16}
        epoch = cpu_epoch(quick, tiny)
        head = {k: epoch[k] for k in ("cure_ms", "trades_ms", "pgd_at_ms", "cure_over_trades", "workload")}
        return {**head, "cpu_epoch": epoch}
    except Exception as exc:  # the trainer is another component: report, do not lose the step results
        return {"error": f"{type(exc).__name__}: {exc}"}
