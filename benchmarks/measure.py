"""Wall time and peak memory of a whole process tree, sampled from /proc (Linux, no psutil).

Each benchmarked command starts in its own session (``start_new_session``), so every process it
spawns — data-augmentation workers, preprocessing pools, orphans — shares its session id and is
found by scanning ``/proc/*/stat``. Every ``interval`` seconds we sum, over that tree, the resident
set (VmRSS) and the proportional set (Pss from ``smaps_rollup``). Summed RSS counts a shared library
once per process, which overstates multi-process tools; summed PSS splits shared pages between their
users, so it is the fairer whole-tree figure. Both peaks are reported. GPU memory, when asked for, is
polled with ``nvidia-smi`` for the tree's pids.
"""
from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

KB_PER_MB = 1024


@dataclass
class Measurement:
    """What one measured command cost."""

    cmd: list[str]
    returncode: int
    wall_s: float
    peak_rss_mb: float
    peak_pss_mb: float
    peak_gpu_mb: float | None = None
    max_processes: int = 1
    foreign_running_mean: float = 0.0   # processes outside the tree in state R, mean over samples
    log_path: str | None = None
    timed_out: bool = False
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may hold spaces)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    return raw[raw.rfind(")") + 2:].split()


def scan_session(sid: int) -> tuple[list[int], int]:
    """Live processes of session ``sid`` (the measured tree), and how many processes outside it
    (other than this one) are running right now: the competition for the CPU."""
    pids, foreign_running, me = [], 0, os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        f = _stat_fields(pid)
        # after the name: state(0) ppid(1) pgrp(2) session(3)
        if f is None or len(f) <= 3:
            continue
        if int(f[3]) == sid:
            if f[0] != "Z":
                pids.append(pid)
        elif f[0] == "R" and pid != me:
            foreign_running += 1
    return pids, foreign_running


def session_pids(sid: int) -> list[int]:
    """All live processes whose session id is ``sid`` (the measured tree)."""
    return scan_session(sid)[0]


def descendant_pids(root: int) -> list[int]:
    """``root`` and all its descendants by parent links (used when no session was made)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            f = _stat_fields(int(entry.name))
            if f is not None and len(f) > 1:
                children.setdefault(int(f[1]), []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_memory_kb(pids: Sequence[int]) -> tuple[int, int]:
    """(summed VmRSS, summed Pss) of ``pids`` in kB."""
    return sum(_status_kb(p, "VmRSS") for p in pids), sum(_pss_kb(p) for p in pids)


def gpu_memory_mb(pids: Sequence[int]) -> float | None:
    """GPU memory used by ``pids`` according to nvidia-smi; None when there is no nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    wanted, total = set(pids), 0.0
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) in wanted:
            try:
                total += float(parts[1])
            except ValueError:
                continue
    return total


class TreeSampler(threading.Thread):
    """Background thread sampling a session's memory until ``stop()``."""

    def __init__(self, sid: int, interval: float = 0.1, gpu: bool = False, gpu_interval: float = 0.5):
        super().__init__(daemon=True)
        self.sid, self.interval, self.gpu, self.gpu_interval = sid, interval, gpu, gpu_interval
        self.peak_rss_kb = self.peak_pss_kb = self.max_processes = 0
        self.peak_gpu_mb: float | None = None
        self.foreign_sum, self.samples = 0, 0
        self._halt = threading.Event()

    def sample(self) -> list[int]:
        pids, foreign = scan_session(self.sid)
        self.foreign_sum, self.samples = self.foreign_sum + foreign, self.samples + 1
        rss, pss = tree_memory_kb(pids)
        self.peak_rss_kb, self.peak_pss_kb = max(self.peak_rss_kb, rss), max(self.peak_pss_kb, pss)
        self.max_processes = max(self.max_processes, len(pids))
        return pids

    def run(self) -> None:
        next_gpu = 0.0
        while not self._halt.is_set():
            pids = self.sample()
            if self.gpu and time.monotonic() >= next_gpu:
                g = gpu_memory_mb(pids)
                if g is not None:
                    self.peak_gpu_mb = max(self.peak_gpu_mb or 0.0, g)
                next_gpu = time.monotonic() + self.gpu_interval
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def run_measured(cmd: Sequence[str | os.PathLike], env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike | None = None, log_path: str | os.PathLike | None = None,
                 interval: float = 0.1, timeout: float | None = None, gpu: bool = False) -> Measurement:
    """Run ``cmd`` in a new session, stdout+stderr to ``log_path``; measure wall time and tree memory.

    On timeout the whole session (only processes this call started) is killed and ``timed_out`` set.
    """
    cmd = [str(c) for c in cmd]
    log_file = open(log_path, "w") if log_path else subprocess.DEVNULL
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=dict(env) if env is not None else None, cwd=cwd, stdout=log_file,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        sampler = TreeSampler(proc.pid, interval, gpu)
        sampler.sample()
        sampler.start()
        timed_out = False
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_session(proc.pid)
            rc = proc.wait()
        wall = time.perf_counter() - t0
        sampler.stop()
        _kill_session(proc.pid)  # stray workers the command left behind
    finally:
        if log_path:
            log_file.close()
    return Measurement(cmd=cmd, returncode=rc, wall_s=wall, peak_rss_mb=sampler.peak_rss_kb / KB_PER_MB,
                       peak_pss_mb=sampler.peak_pss_kb / KB_PER_MB, peak_gpu_mb=sampler.peak_gpu_mb,
                       max_processes=sampler.max_processes,
                       foreign_running_mean=sampler.foreign_sum / max(1, sampler.samples), log_path=str(log_path) if log_path else None,
                       timed_out=timed_out)


def _kill_session(sid: int) -> None:
    """Kill the process group we created (its id is the leader's pid); silent when already gone."""
    try:
        os.killpg(sid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
