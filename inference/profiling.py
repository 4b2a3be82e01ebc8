"""Per-case timings and peak memory for ``--profile``.

Stage times are wall clock with the device synchronised at both ends (CUDA kernels are asynchronous,
so an unsynchronised timer would charge one stage's work to the next). Peak memory: process RSS from
``getrusage`` and a sampler thread reading ``/proc/self/status`` every 0.1 s (the sampler sees the
per-case peak; getrusage only the lifetime one), and on CUDA both ``max_memory_allocated`` (PyTorch's
allocator) and the device-wide usage sampled every 0.1 s from ``mem_get_info`` as FLARE measures it.
"""
from __future__ import annotations

import resource
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import torch


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _device_used_bytes(device: torch.device) -> int:
    free, total = torch.cuda.mem_get_info(device)
    return total - free


class MemorySampler:
    """Background thread recording peak RSS (and peak device usage on CUDA) every ``interval`` s."""

    def __init__(self, device: torch.device, interval: float = 0.1):
        self.device = device
        self.interval = interval
        self.peak_rss = 0
        self.peak_device = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        self.peak_rss = max(self.peak_rss, current_rss_bytes())
        if self.device.type == "cuda":
            self.peak_device = max(self.peak_device, _device_used_bytes(self.device))

    def reset(self) -> None:
        self.peak_rss = self.peak_device = 0
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> "MemorySampler":
        self.reset()
        self._thread = threading.Thread(target=self._run, name="autoseg-mem-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


class CaseProfile:
    """Timings (s) and peaks (MB) of one case; ``enabled=False`` makes every call nearly free."""

    STAGES = ("read", "prepare", "roi", "organ", "tumour", "postprocess", "write")

    def __init__(self, device: torch.device, enabled: bool = True, sampler: MemorySampler | None = None):
        self.device = device
        self.enabled = enabled
        self.sampler = sampler
        self.times: dict[str, float] = {}
        self.notes: list[str] = []
        self.info: dict[str, dict] = {}  # per stage extras, e.g. refinement rounds and time per round
        self.windows: dict[str, dict] = {}  # per stage sliding windows computed and skipped (outside the body)
        if enabled:
            if sampler is not None:
                sampler.reset()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
        self._t0 = time.perf_counter()

    def _sync(self) -> None:
        if self.enabled and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        self._sync()
        t = time.perf_counter()
        try:
            with torch.profiler.record_function(f"autoseg.{name}"):  # a named range in torch.profiler traces
                yield
        finally:
            self._sync()
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t

    def add_time(self, name: str, seconds: float) -> None:
        self.times[name] = self.times.get(name, 0.0) + seconds

    def summary(self) -> dict:
        mb = 1024.0 ** 2
        names = [*self.STAGES[:-2], *(k for k in self.times if k not in self.STAGES), *self.STAGES[-2:]]
        out: dict = {k: round(self.times.get(k, 0.0), 4) for k in names}  # plans may name other stages
        out["total"] = round(sum(self.times.values()), 4)
        rss = max(self.sampler.peak_rss if self.sampler else 0, current_rss_bytes())
        out["peak_rss_mb"] = round(rss / mb, 1)
        out["max_rss_lifetime_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
        if self.device.type == "cuda":
            out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(self.device) / mb, 1)
            out["cuda_peak_used_mb"] = round((self.sampler.peak_device if self.sampler else 0) / mb, 1)
        if self.notes:
            out["notes"] = list(self.notes)
        if self.info:
            out["stage_info"] = dict(self.info)
        if self.windows:
            out["windows"] = {k: dict(v) for k, v in self.windows.items()}
        return out


def format_profile(name: str, summary: dict) -> str:
    """One human-readable line per case."""
    skip = {"total", "peak_rss_mb", "max_rss_lifetime_mb", "cuda_max_allocated_mb", "cuda_peak_used_mb"}
    parts = [f"{k} {v:.2f}s" for k, v in summary.items() if k not in skip and isinstance(v, float)]
    mem = f"peak RSS {summary['peak_rss_mb']:.0f} MB"
    if "cuda_max_allocated_mb" in summary:
        mem += (f", CUDA max allocated {summary['cuda_max_allocated_mb']:.0f} MB, "
                f"device peak used {summary['cuda_peak_used_mb']:.0f} MB")
    for stage, w in summary.get("windows", {}).items():
        parts.append(f"{stage} windows {w['computed']} ({w['skipped']} skipped)")
    for stage, info in summary.get("stage_info", {}).items():
        if "rounds" in info:
            parts.append(f"{stage} rounds {info['rounds']} ({', '.join(f'{t:.2f}' for t in info['seconds_per_round'])}s)")
    return f"{name}: " + ", ".join(parts) + f" | total {summary['total']:.2f}s | {mem}"
