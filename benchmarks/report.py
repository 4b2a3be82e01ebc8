"""Medians, ratios and the markdown of ``benchmarks/RESULTS.md``.

Every measurement is a :class:`Sample` (stage, metric, tool, repeat, value). A table row names one
(stage, metric) pair; its cells are the median over repeats of each tool and the ratio of the medians,
ours / theirs. A row that was not measured says why (for example "not run in --quick") instead of
showing a number: nothing is extrapolated.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

OURS, THEIRS = "ours", "theirs"


@dataclass
class Sample:
    stage: str
    metric: str
    tool: str
    value: float
    repeat: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Row:
    """One table row: which samples it summarises and how to print them."""

    stage: str
    metric: str
    label: str
    unit: str
    better: str = "lower"      # "lower" or "higher": which direction is better for this metric
    digits: int = 2
    note: str = ""             # shown when a tool has no samples (e.g. "not run in --quick")
    reading: str = ""          # fixed text for the last column instead of a better/worse verdict


@dataclass
class Report:
    title: str
    samples: list[Sample] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)     # machine, date, commit, ...
    setup: list[str] = field(default_factory=list)         # bullet lines: what both tools were given
    commands: list[str] = field(default_factory=list)      # exact commands, in the order they ran
    notes: list[str] = field(default_factory=list)

    def add(self, stage: str, metric: str, tool: str, value: float | None, repeat: int = 0) -> None:
        if value is not None:
            self.samples.append(Sample(stage, metric, tool, float(value), repeat))


def to_json(report: Report) -> dict:
    """Everything needed to render the report again (``python -m benchmarks.run --render-only``)."""
    return {"title": report.title, "meta": report.meta, "setup": report.setup, "notes": report.notes,
            "commands": report.commands, "rows": [asdict(r) for r in report.rows],
            "samples": [s.to_dict() for s in report.samples]}


def from_json(data: dict) -> Report:
    return Report(title=data["title"], samples=[Sample(**s) for s in data["samples"]],
                  rows=[Row(**r) for r in data["rows"]], meta=data["meta"], setup=data["setup"],
                  commands=data["commands"], notes=data["notes"])


def median_of(samples: Iterable[Sample], stage: str, metric: str, tool: str) -> tuple[float | None, int]:
    """Median value and count of the matching samples (None, 0 when there are none)."""
    vals = [s.value for s in samples if s.stage == stage and s.metric == metric and s.tool == tool]
    return (statistics.median(vals), len(vals)) if vals else (None, 0)


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def _num(v: float | None, digits: int) -> str:
    if v is None:
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def _verdict(r: float | None, better: str) -> str:
    if r is None:
        return ""
    if abs(r - 1.0) < 0.05:
        return "about equal"
    faster = r < 1 if better == "lower" else r > 1
    factor = 1 / r if r < 1 else r
    return f"ours {'better' if faster else 'worse'} ×{factor:.2f}"


def table(report: Report) -> list[str]:
    lines = ["| stage | metric | ours (median, n) | nnU-Net (median, n) | ours / nnU-Net | better is | reading |",
             "|---|---|---|---|---|---|---|"]
    for row in report.rows:
        o, no = median_of(report.samples, row.stage, row.metric, OURS)
        t, nt = median_of(report.samples, row.stage, row.metric, THEIRS)
        r = ratio(o, t)
        unit = f" {row.unit}" if row.unit else ""
        cell_o = f"{_num(o, row.digits)}{unit} (n={no})" if o is not None else (row.note or "not measured")
        cell_t = f"{_num(t, row.digits)}{unit} (n={nt})" if t is not None else (row.note or "not measured")
        lines.append(f"| {row.stage} | {row.label} | {cell_o} | {cell_t} | "
                     f"{'–' if r is None else f'{r:.3f}'} | {row.better} | {row.reading or _verdict(r, row.better)} |")
    return lines


def render(report: Report) -> str:
    """The whole RESULTS.md text."""
    out = [f"# {report.title}", ""]
    out += [f"- **{k}**: {v}" for k, v in report.meta.items()]
    out += ["", "## Results", ""] + table(report)
    if report.setup:
        out += ["", "## What both tools were given", ""] + [f"- {s}" for s in report.setup]
    if report.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    if report.commands:
        out += ["", "## Exact commands (in the order they ran)", "", "```"] + report.commands + ["```"]
    return "\n".join(out) + "\n"


# ----- the machine and the code -------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 ** 2
    except (OSError, ValueError):
        pass
    return None


def _gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().replace("\n", "; ") or None if out.returncode == 0 else None


def machine_info() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = _mem_gib()
    parts = [f"{_cpu_model()}, {cores} cores", f"{mem:.1f} GiB RAM" if mem else "RAM unknown",
             f"{platform.system()} {platform.release()}", f"Python {platform.python_version()}"]
    gpu = _gpu_name()
    if gpu:
        parts.append(f"GPU {gpu}")
    return "; ".join(parts)


def git_commit(repo: str | os.PathLike) -> str:
    """HEAD's hash, plus '(+ uncommitted changes)' when the tree is dirty."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=20).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True,
                               timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + (" (+ uncommitted changes)" if dirty else "")


def load_average() -> str:
    """1/5/15-minute load averages: other work on a shared machine shows up here, not in the ratios."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def shell_join(cmd: Sequence[str], env: dict[str, str] | None = None) -> str:
    """A copy-pasteable command line with the variables that matter in front."""
    import shlex

    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    return (prefix + " " if prefix else "") + " ".join(shlex.quote(str(c)) for c in cmd)
