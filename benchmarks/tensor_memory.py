"""Peak bytes of live tensors during a call on the CPU.

On CUDA ``torch.cuda.max_memory_allocated`` is the answer. A CPU has no such counter, but the
profiler with ``profile_memory`` records every allocation and free of PyTorch's CPU allocator; their
running sum is the same quantity. It lets a CPU machine see how an inference step's tensor memory is
made up (what a GPU's allocator would be asked for, less cuDNN workspaces) and check a change to it.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import torch

T = TypeVar("T")


def _cpu_profile(fn: Callable[[], T]) -> tuple[T, list, list]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = list(prof.profiler.kineto_results.events())
    mem = sorted(((e.start_ns(), e.nbytes()) for e in events
                  if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU))
    ranges = [(e.name(), e.start_ns(), e.end_ns()) for e in events if e.name().startswith("autoseg.")]
    return out, mem, ranges


def peak_tensor_bytes_by_range(fn: Callable[[], T]) -> tuple[T, dict[str, int]]:
    """CPU only: ``fn()`` and the peak live bytes (above the start) inside each ``autoseg.<name>``
    profiler range (``CaseProfile.stage`` opens one per stage), plus ``"total"``."""
    out, mem, ranges = _cpu_profile(fn)
    peaks = {"total": 0}
    cur = 0
    for t, nbytes in mem:
        cur += nbytes
        peaks["total"] = max(peaks["total"], cur)
        for name, a, b in ranges:
            if a <= t <= b:
                key = name.removeprefix("autoseg.")
                peaks[key] = max(peaks.get(key, 0), cur)
    return out, peaks


def peak_tensor_bytes(fn: Callable[[], T]) -> tuple[T, int]:
    """CPU: ``(fn(), peak bytes allocated above what was live when fn started)``. (On CUDA
    ``torch.cuda.max_memory_allocated`` says the same.)"""
    out, peaks = peak_tensor_bytes_by_range(fn)
    return out, peaks["total"]
