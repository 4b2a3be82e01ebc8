"""Markdown table for ``benchmarks.bench_networks`` (speed.json + evaluate.json -> RESULTS_networks.md)."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path


def _fmt(v: float | None, nd: int = 2) -> str:
    return "–" if v is None else f"{v:,.{nd}f}"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_report(work: Path, out: Path, cpu: str) -> None:
    speed = json.loads((work / "speed.json").read_text())
    ev = json.loads((work / "evaluate.json").read_text()) if (work / "evaluate.json").is_file() else {"rows": {}}
    names = {v: k for k, v in ev.get("labels", {}).items()}
    lines = [
        "# Network classes side by side (CPU)",
        "",
        f"- **date**: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit {_commit()}; "
        f"{os.cpu_count()} CPU cores visible ({cpu}), 2 torch threads",
        "- **GPU**: none was available in this session, so there is no GPU column; rerun "
        "`benchmarks.bench_networks speed` on a GPU machine to add one",
        f"- **topology**: the CPUPlanner's organ stage of `{work.name}` phantoms (`--stages organ`: whole body crop), "
        f"patch {speed['patch']}, batch {speed['batch']}, {speed['num_classes']} outputs, features "
        f"{speed['topology']['features']}, strides {speed['topology']['strides']}; only `network.class` differs",
        "- **regenerate**: `python -m benchmarks.bench_networks prepare|train|speed|evaluate|report --work W` "
        "(module docstring: train under `nice`, time under `flock /tmp/autoseg-cpu.lock`)",
        "",
        "## Size, FLOPs, CPU speed",
        "",
        "| network | parameters | GFLOPs / patch (forward) | infer s / patch fp32 | infer s / patch bf16 "
        "| train step s (bf16, batch) | infer peak tensor MB / patch (fp32) |",
        "|---|---|---|---|---|---|---|",
    ]
    for cls, r in speed["rows"].items():
        lines.append(f"| {cls} | {r['params']:,} | {_fmt(r['gflops_per_patch'], 1)} | {_fmt(r['infer_patch_s_fp32'], 3)} "
                     f"| {_fmt(r['infer_patch_s_bf16'], 3)} | {_fmt(r['train_step_s_bf16'], 3)} "
                     f"| {_fmt(r['infer_patch_peak_mb_fp32'], 0)} |")
    lines += [
        "",
        "Times are medians of repeated calls after one warm-up, taken under the shared CPU lock; FLOPs from "
        "`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products; 2 per multiply-add).",
        "",
        "## Training memory: planner estimate vs measured (CPU, fp32)",
        "",
        "| network | activations counted MB | autograd saved MB | counted / saved | estimate GiB (fp32) "
        "| measured step peak GiB | estimate / measured | planner estimate GiB (AMP, as planned) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cls, r in speed["rows"].items():
        lines.append(f"| {cls} | {_fmt(r['activations_counted_mb_fp32'], 1)} | {_fmt(r['autograd_saved_mb_fp32'], 1)} "
                     f"| {r['activations_counted_mb_fp32'] / r['autograd_saved_mb_fp32']:.3f} "
                     f"| {_fmt(r['estimate_gb_fp32'], 3)} | {_fmt(r['measured_step_peak_gb_fp32'], 3)} "
                     f"| {r['estimate_gb_fp32'] / r['measured_step_peak_gb_fp32']:.2f} "
                     f"| {_fmt(r['estimate_gb_amp_planner'], 3)} |")
    lines += [
        "",
        "Counted: `planners/network_memory.py` for the class. Autograd saved: every tensor the forward + deep-"
        "supervision loss keeps for backward (saved-tensor hooks, each storage once, weights excluded). Measured "
        "step peak: the CPU allocator's peak live bytes (profiler memory events) during one fp32 training step "
        "(zero_grad, forward, loss, backward, AdamW step) plus the weights and AdamW's two moments that were "
        f"already live. The estimate multiplies the count by the overhead factor "
        f"({next(iter(speed['rows'].values()))['overhead_factor']}, fitted on CUDA for cuDNN workspaces and "
        "allocator rounding) and adds 16 B per parameter, so on the CPU it should sit at or above the measurement.",
        "",
    ]
    if ev["rows"]:
        classes = ev["classes"]
        lines += ["## Phantom DSC under one budget", "",
                  "| network | iterations | train wall s | mean organ DSC | " + " | ".join(
                      names.get(c, str(c)) for c in classes) + " | infer s / case (bf16 auto) |",
                  "|---|---|---|---|" + "---|" * len(classes) + "---|"]
        for cls, r in ev["rows"].items():
            lines.append(f"| {cls} | {r['iterations']} | {_fmt(r['train_wall_s'], 0)} | {r['dsc_mean']:.3f} | "
                         + " | ".join(f"{d:.3f}" for d in r["dsc_per_class"]) + f" | {_fmt(r['infer_case_s'], 2)} |")
        n = next(iter(ev["rows"].values()))
        lines += ["", f"Each network trained with `TrainerFast` (AdamW 3e-3, poly decay, bf16 autocast, seed 0) for "
                  f"the same {n['iterations']} iterations on the same phantoms, then predicted the {n['cases']} test "
                  "phantoms through `CascadePredictor` (organ model alone on the body crop); DSC per organ "
                  "(`autoseg.evaluation.metrics.dice`), averaged over cases. Training wall time ran under the "
                  "lock too but includes start-up and per-epoch validation. A budget this short ranks how fast "
                  "each network learns, not where it ends.", ""]
    out.write_text("\n".join(lines) + "\n")
