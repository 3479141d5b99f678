"""Per-step counts: operators dispatched (both devices), and on CUDA kernel launches, host
synchronisations and device-to-host copies, for one call of a step variant."""
from __future__ import annotations

import collections
import warnings
from typing import Callable, Dict, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

LAUNCH_NAMES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx",
                "cudaLaunchCooperativeKernel", "cudaLaunchCooperativeKernelMultiDevice", "cudaGraphLaunch")
SYNC_NAMES = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cuStreamSynchronize",
              "cuCtxSynchronize", "cuEventSynchronize")


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], object]) -> Dict[str, object]:
    """Operators that reach the dispatcher's Python mode (aten ops and the custom op) in one call."""
    with _CountOps() as mode:
        fn()
    return {"ops": sum(mode.counts.values()), "top": dict(mode.counts.most_common(5))}


def count_cuda(fn: Callable[[], object], device: torch.device) -> Dict[str, Optional[int]]:
    """Kernel launches, kernels run, synchronising host calls and DtoH copies of one call (torch.profiler),
    plus the synchronisations torch's sync debug mode reports."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    result: Dict[str, Optional[int]] = {}
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize(device)
        launches = kernels = syncs = dtoh = 0
        for ev in prof.events():
            name = ev.name
            on_device = str(getattr(ev, "device_type", "")).endswith("CUDA")
            if on_device:
                if "Memcpy" in name or "Memset" in name:
                    dtoh += ("DtoH" in name or "Device -> Pageable" in name or "Device -> Pinned" in name)
                else:
                    kernels += 1
            elif name in LAUNCH_NAMES:
                launches += 1
            elif name in SYNC_NAMES:
                syncs += 1
        # The profiler's own trailing torch.cuda.synchronize() is one cudaDeviceSynchronize: not the step's.
        result.update(kernel_launches=launches, kernels=kernels, sync_calls=max(0, syncs - 1), dtoh_copies=dtoh)
    except Exception as exc:  # profiler unavailable (e.g. CUPTI missing): report what can be counted
        result.update(kernel_launches=None, kernels=None, sync_calls=None, dtoh_copies=None,
                      profiler_error=f"{type(exc).__name__}: {exc}")
    result["host_syncs"] = count_syncs(fn, device)
    return result


def count_syncs(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Synchronising operations torch.cuda's sync debug mode warns about during one call."""
    torch.cuda.synchronize(device)
    previous = torch.cuda.get_sync_debug_mode()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode(previous)
        return sum("synchroniz" in str(w.message).lower() for w in caught)
    except Exception:
        return None
