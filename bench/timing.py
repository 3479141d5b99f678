"""Timing helpers: CUDA events on GPUs (never host timing of asynchronous work), time.perf_counter on the
CPU; medians over many runs after warm-up, inputs rotated between pre-generated sets."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch


@dataclass
class Timing:
    median_ms: float
    min_ms: float
    runs: int
    samples_ms: List[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        return {"median_ms": self.median_ms, "min_ms": self.min_ms, "runs": self.runs}


@dataclass
class Budget:
    """How long to measure one variant: at least `min_runs` runs, at most `max_runs`, and stop after
    `seconds` of (host) time once `min_runs` are in. `warmup` calls (or `warmup_s` of calls, whichever
    is more, capped at 3x warmup) run before anything is measured."""
    min_runs: int = 5
    max_runs: int = 100
    seconds: float = 3.0
    warmup: int = 2
    warmup_s: float = 0.2

    @classmethod
    def quick(cls) -> "Budget":
        return cls(min_runs=2, max_runs=10, seconds=0.5, warmup=1, warmup_s=0.0)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[int], object], n_sets: int, device: torch.device, budget: Budget) -> Timing:
    """Median time of `fn(set_index)`, the set index rotating over `n_sets` pre-generated input sets."""
    device = torch.device(device)
    calls = 0
    t0 = time.perf_counter()
    while calls < budget.warmup or (time.perf_counter() - t0 < budget.warmup_s and calls < 3 * budget.warmup):
        fn(calls % n_sets)
        calls += 1
        if device.type == "cuda":  # bound the warm-up by device time, not by how fast the host queues
            torch.cuda.synchronize(device)
    synchronize(device)

    samples: List[float] = []
    if device.type == "cuda":
        events = []
        t0 = time.perf_counter()
        for r in range(budget.max_runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn((calls + r) % n_sets)
            end.record()
            events.append((start, end))
            if r + 1 >= budget.min_runs and time.perf_counter() - t0 > budget.seconds:
                break
        torch.cuda.synchronize(device)
        samples = [s.elapsed_time(e) for s, e in events]
    else:
        t0 = time.perf_counter()
        for r in range(budget.max_runs):
            a = time.perf_counter()
            fn((calls + r) % n_sets)
            samples.append((time.perf_counter() - a) * 1e3)
            if r + 1 >= budget.min_runs and time.perf_counter() - t0 > budget.seconds:
                break
    return Timing(statistics.median(samples), min(samples), len(samples), samples)


@dataclass
class GroupBudget:
    """Interleaved measurement of several variants (see `measure_group`): at least `min_rounds` rounds,
    at most `max_rounds`, stopping after `seconds` of host time once `min_rounds` are done. In each round a
    variant runs enough calls to fill about `round_share_s` (1 to `max_reps` calls)."""
    min_rounds: int = 3
    max_rounds: int = 30
    seconds: float = 20.0
    round_share_s: float = 0.05
    max_reps: int = 20
    warmup: int = 1

    @classmethod
    def quick(cls) -> "GroupBudget":
        return cls(min_rounds=1, max_rounds=3, seconds=0.5, round_share_s=0.01, max_reps=3, warmup=0)


@dataclass
class Entry:
    fn: Callable[[int], object]
    threads: Optional[int] = None  # CPU: torch.set_num_threads for this variant's calls


def measure_group(entries: Dict[str, Entry], n_sets: int, device: torch.device, budget: GroupBudget,
                  errors: Optional[Dict[str, str]] = None) -> Dict[str, Timing]:
    """Medians of several variants measured round-robin: every round runs each variant in turn, so that
    the load of a shared machine falls on all of them alike. Inputs rotate over `n_sets` sets; CUDA events
    time the GPU, time.perf_counter the CPU. A variant that raises during its warm-up is left out of the
    result and its error stored in `errors` (when given; otherwise the exception propagates)."""
    device = torch.device(device)
    default_threads = torch.get_num_threads()
    cuda = device.type == "cuda"
    reps: Dict[str, int] = {}
    samples: Dict[str, list] = {name: [] for name in entries}
    counter = 0

    def call(entry: Entry, timed: bool):
        nonlocal counter
        i = counter % n_sets
        counter += 1
        if not timed:
            entry.fn(i)
        elif cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            entry.fn(i)
            end.record()
            return (start, end)
        else:
            a = time.perf_counter()
            entry.fn(i)
            return (time.perf_counter() - a) * 1e3

    # Entries grouped by thread count; switching the count happens between groups, outside any timed call,
    # followed by an untimed parallel op so the pool is up before the next timed call.
    by_threads: Dict[Optional[int], list] = {}
    for name, entry in entries.items():
        by_threads.setdefault(None if cuda else entry.threads, []).append(name)

    def set_threads(n: Optional[int]) -> None:
        if cuda:
            return
        torch.set_num_threads(n if n is not None else default_threads)
        torch.ones(1 << 18).mul_(2.0).sum()

    try:
        for threads, names in by_threads.items():  # warm-up, and the calls per round from the warm call's time
            set_threads(threads)
            for name in list(names):
                if budget.warmup <= 0:  # no warm-up (quick runs): one timed call per round
                    reps[name] = 1
                    continue
                try:
                    for _ in range(budget.warmup):
                        synchronize(device)
                        a = time.perf_counter()
                        call(entries[name], timed=False)
                        synchronize(device)
                        t = time.perf_counter() - a
                except Exception as exc:
                    if errors is None:
                        raise
                    errors[name] = f"{type(exc).__name__}: {exc}"
                    names.remove(name)
                    del samples[name]
                    continue
                reps[name] = int(min(budget.max_reps, max(1, budget.round_share_s // max(t, 1e-6))))

        t0 = time.perf_counter()
        for r in range(budget.max_rounds):
            for threads, names in by_threads.items():
                set_threads(threads)
                for name in names:
                    # Drain the previous variant's queue first, so it neither delays this variant's first start
                    # event nor hides this variant's host-side launch overhead.
                    synchronize(device)
                    for _ in range(reps[name]):
                        samples[name].append(call(entries[name], timed=True))
            synchronize(device)
            if r + 1 >= budget.min_rounds and time.perf_counter() - t0 > budget.seconds:
                break
    finally:
        if not cuda:
            torch.set_num_threads(default_threads)
    synchronize(device)
    out = {}
    for name, values in samples.items():
        ms = [s.elapsed_time(e) for s, e in values] if cuda else values
        out[name] = Timing(statistics.median(ms), min(ms), len(ms), ms)
    return out


def copy_bandwidth(device: torch.device, nbytes: int, budget: Budget) -> dict:
    """Device-to-device (CPU: memory-to-memory) copy bandwidth of `dst.copy_(src)` on float32 tensors of
    `nbytes` each, counting bytes read + bytes written, in GB/s (1e9 bytes)."""
    device = torch.device(device)
    n = nbytes // 4
    src = [torch.ones(n, device=device), torch.full((n,), 2.0, device=device)]
    dst = [torch.empty(n, device=device), torch.empty(n, device=device)]
    for d in dst:
        d.zero_()  # touch the pages before timing
    budget = Budget(min_runs=max(10, budget.min_runs), max_runs=max(50, budget.max_runs), seconds=1.0,
                    warmup=2, warmup_s=0.1)
    t = measure(lambda i: dst[i].copy_(src[1 - i]), 2, device, budget)
    gbps = 2 * n * 4 / (t.median_ms * 1e-3) / 1e9
    del src, dst
    return {"bytes": 2 * n * 4, "median_ms": t.median_ms, "gbps": gbps}
