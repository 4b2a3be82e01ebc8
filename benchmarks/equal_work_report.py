"""Report and roofline for ``benchmarks.bench_equal_work`` (writes ``benchmarks/RESULTS_equal_work.md``)."""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

import numpy as np

from benchmarks.measure import median_seconds

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "benchmarks" / "RESULTS_equal_work.md"


def _labels(path: Path) -> np.ndarray:
    from autoseg.io import read_image

    return read_image(path)[0]


def _dsc(a: np.ndarray, b: np.ndarray) -> float:
    """Mean DSC over the labels either map holds (b is the reference)."""
    vals = []
    for c in np.union1d(np.unique(a[a > 0]), np.unique(b[b > 0])):
        p, g = a == c, b == c
        vals.append(2 * np.logical_and(p, g).sum() / max(1, p.sum() + g.sum()))
    return float(np.mean(vals)) if vals else 1.0


def agreement(a_dir: Path, b_dir: Path) -> dict:
    """Voxel agreement and mean DSC of a's labels against b's, over the cases both hold."""
    agree, dsc, vox = [], [], 0
    for f in sorted(b_dir.glob("*.nii.gz")):
        if not (a_dir / f.name).is_file():
            continue
        a, b = _labels(a_dir / f.name), _labels(f)
        agree.append((a == b).sum())
        vox += a.size
        dsc.append(_dsc(a, b))
    return {"voxels": vox, "agree": float(sum(agree) / max(1, vox)), "dsc": float(np.mean(dsc)) if dsc else float("nan"),
            "cases": len(dsc)}


def _flops(net, x) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(x)
    return float(fc.get_total_flops())


def peak_gflops(dtype) -> float:
    """Practical peak: a large square matmul (oneDNN/MKL's best case) on every core."""
    import torch

    n = 2048
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n ** 3 / median_seconds(lambda: a @ b, 3) / 1e9


def roofline(w, case_shape: tuple[int, int, int] = (134, 379, 458)) -> dict:
    """The CPU's practical peak and each imported network's FLOPs per window and windows per case (the
    report divides by the measured steady-state times)."""
    import torch

    from autoseg.inference.models import find_stage_checkpoints, load_stage_model
    from autoseg.inference.sliding_window import compute_steps

    out = {"threads": torch.get_num_threads(), "cpu": _cpu_name(),
           "peak_matmul_gflops": {"fp32": peak_gflops(torch.float32), "bf16": peak_gflops(torch.bfloat16)},
           "load": os.getloadavg()[0], "networks": {}}
    for folder in sorted((w.work / "autoseg_results").glob("*/organ/*")):
        ckpts = find_stage_checkpoints(502, folder.name, results=w.work / "autoseg_results")["organ"]
        sm = load_stage_model("organ", ckpts, torch.device("cpu"))
        steps = compute_steps(case_shape, sm.patch_size, 0.5)
        out["networks"][folder.name] = {
            "patch": list(sm.patch_size), "windows_per_case": int(np.prod([len(s) for s in steps])),
            "gflop_per_window": _flops(sm.network.eval(), torch.zeros(1, 1, *sm.patch_size)) / 1e9}
    w.work.joinpath("roofline.json").write_text(json.dumps(out, indent=2))
    return out


def _cpu_name() -> str:
    try:
        txt = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(ln.split(":", 1)[1].strip() for ln in txt.splitlines() if ln.startswith("Model name"))
        flags = next(ln for ln in txt.splitlines() if ln.startswith("Flags"))
        ext = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
        return f"{name} ({', '.join(ext)})"
    except (OSError, StopIteration):
        return platform.processor()


def _native_bf16() -> bool:
    from autoseg.devices import cpu_bf16_supported

    return cpu_bf16_supported()


def _precision_note() -> str:
    if _native_bf16():
        return ("- **Precision**: fp32 rows and bf16 rows. This CPU computes bf16 natively (AVX512-BF16), so "
                "nnU-Net runs bf16 through `benchmarks/peer/predict_bf16.py` (its own predictor under CPU bf16 "
                "autocast) and autoseg with `--precision bf16`; autoseg's default precision here is bf16, and its "
                "engine race is then against eager bf16 (`RESULTS_compiled.md`).")
    return ("- **Precision**: fp32 in every row. This CPU has no native bf16 (no AVX512-BF16/AMX): bf16 is "
            "emulated and far slower than fp32 (`RESULTS_compiled.md`), so the bf16 rows are not meaningful here; "
            "autoseg's default precision here is fp32.")


def report(w) -> None:
    state = w.state()
    lines = ["# Equal work: autoseg vs nnU-Net v2.8.1 on the same network, windows and precision (issue 18)", "",
             f"- **date**: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- **machine**: {_cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}",
             "- **regenerate**: see `benchmarks/bench_equal_work.py` (prepare, then run under "
             "`flock /tmp/autoseg-cpu.lock`, then report)", "",
             "## What is compared", "",
             "- **Cases**: `../shared/data/totalseg/example_ct` resampled to 0.8x0.8x2.5 mm (134x379x458 voxels, "
             "z y x) in five variants (as is, mirrored, Gaussian noise, intensity-scaled, half-voxel shift); each "
             "table says how many of them its rows used. Each tool predicts them at nnU-Net's planned spacing "
             "(2.5x0.8x0.8), i.e. no resampling of the volume beyond the tools' own checks.",
             "- **Network and windows**: nnU-Net's own plan for this dataset (PlainConvUNet, 6 stages, patch "
             "64x160x192, step 0.5: 64 windows per case), built with nnU-Net's code, random weights, imported "
             "with `autoseg import_nnunet`. The rows use the same network with every stage's features scaled "
             "by 0.25 (8..80, `nnUNetPlansScaled25`): the full-width 32..320 network costs several times more "
             "per window and every row did not fit a session on 2 cores. Time per case is still "
             "dominated by the 64 network windows in both tools.",
             "- **Steady state per case** = (command on N cases - command on 1 case) / (N - 1): start-up, model "
             "loading and autoseg's one-off engine measurement cancel for both tools alike.",
             _precision_note(),
             "- **autoseg defaults** = `run_inference` with no options: precision auto, engine `auto` (the "
             "fastest engine that agrees with eager, measured once and cached, see `RESULTS_compiled.md`), step "
             "and windows as the imported plans say (0.5; nnU-Net models keep nnU-Net's own preprocessing, so no "
             "body-window skipping). *Equal windows* rows force `--engine eager` (plain PyTorch) and "
             "`--skip-windows off`.",
             "- Labels: random weights make the labels noise-like, so the agreement rows test that both tools "
             "compute the same function, not segmentation quality; bf16 flips many of these near-tied voxels.", ""]
    for key, rows in state.items():
        plans, n = key.split(":")
        lines += [f"## {plans}, {n} cases", "",
                  "| row | command, 1 case (s) | command, all (s) | steady state per case (s) | vs nnU-Net fp32 "
                  "defaults | load before/after |", "|---|---|---|---|---|---|"]
        ref = rows.get("nnU-Net fp32 (defaults)", {}).get("steady")
        for row, r in rows.items():
            ratio = f"{ref / r['steady']:.2f}x" if ref and r["steady"] > 0 else ""
            lines.append(f"| {row} | {r['one']:.1f} | {r['all']:.1f} | {r['steady']:.2f} | {ratio} | "
                         f"{r['load_before']:.1f}/{r['load_after']:.1f} |")
        for row, r in rows.items():
            if "one_cold" in r:
                lines += ["", f"*{row}*: its first one-case command ({r['one_cold']:.1f} s) included engine auto's "
                          "one-off measurement (export, build, time each engine), which the all-cases command then "
                          "read from the cache; the one-case command was timed again with the cache warm "
                          f"({r['one']:.1f} s), so both commands pay the same start-up. With the cold figure the "
                          "steady state would read far faster than it is."]
        pred = w.work / "predictions" / (plans + ("_large" if " large" in n else ""))
        pairs = [("autoseg fp32 vs nnU-Net fp32", "autoseg_fp32__equal_windows_all", "nnU_Net_fp32__defaults__all"),
                 ("autoseg fp32 engine auto vs nnU-Net fp32", "autoseg_fp32__engine_auto_all",
                  "nnU_Net_fp32__defaults__all"),
                 ("autoseg bf16 vs autoseg fp32", "autoseg_bf16__equal_windows_all", "autoseg_fp32__equal_windows_all"),
                 ("nnU-Net bf16 vs nnU-Net fp32", "nnU_Net_bf16_shim__npp_0__nps_0_all", "nnU_Net_fp32__defaults__all"),
                 ("autoseg bf16 vs nnU-Net bf16", "autoseg_bf16__equal_windows_all", "nnU_Net_bf16_shim__npp_0__nps_0_all"),
                 ("autoseg defaults vs nnU-Net fp32", "autoseg_defaults__engine_auto__all", "nnU_Net_fp32__defaults__all"),
                 ("autoseg defaults vs autoseg bf16 eager", "autoseg_defaults__engine_auto__all",
                  "autoseg_bf16__equal_windows_all"),
                 ("autoseg int8 vs autoseg fp32", "autoseg_int8____engine_openvino_int8__all",
                  "autoseg_fp32__equal_windows_all")]
        # the prediction folders hold the latest run of each row: compare labels under that run's table only
        found = [agreement(pred / a, pred / b) | {"tag": t} for t, a, b in pairs if (pred / a).is_dir() and (pred / b).is_dir()]
        if n.split()[0].isdigit() and len(n.split()) == 1 + ("large" in n) and all(
                g["cases"] == int(n.split()[0]) for g in found):
            lines += ["", "| labels compared | cases | voxels | agreement | mean DSC |", "|---|---|---|---|---|"]
            lines += [f"| {g['tag']} | {g['cases']} | {g['voxels']:,} | {100 * g['agree']:.3f} % | {g['dsc']:.4f} |"
                      for g in found]
        else:
            lines += ["", "(Label agreement: under the run whose predictions the folders now hold.)"]
        lines.append("")
    roof = w.work / "roofline.json"
    if roof.is_file():
        r = json.loads(roof.read_text())
        pk = r["peak_matmul_gflops"]
        lines += ["## Roofline: achieved GFLOP/s against the CPU's practical peak", "",
                  f"Practical peak = a 2048x2048 matmul on {r['threads']} threads (load {r['load']:.1f}): fp32 "
                  f"{pk['fp32']:.0f} GFLOP/s, bf16 {pk['bf16']:.1f} GFLOP/s. Achieved = "
                  "FLOPs of the case's windows (torch's FlopCounterMode on one window: convolutions, 2 FLOP per "
                  "multiply-add) / steady-state time per case. The time includes reading, preprocessing, "
                  "accumulation and export, so these are lower bounds on the network's own rate.", "",
                  "A row's percentage is of the peak at the precision it computes in (bf16 rows, and the defaults "
                  "where they run bf16, against the bf16 peak).", "",
                  "| plans | cases | row | GFLOP per window | windows per case | achieved GFLOP/s | % of peak |",
                  "|---|---|---|---|---|---|---|"]
        for name, n in r["networks"].items():
            for key, rows in state.items():
                if not key.startswith(name + ":"):
                    continue
                for row, t in rows.items():
                    g = n["gflop_per_window"] * n["windows_per_case"] / t["steady"]
                    prec = "bf16" if ("bf16" in row or ("autoseg defaults" in row and _native_bf16())) else "fp32"
                    share = ("int8 peak not measured" if "int8" in row else f"{100 * g / pk[prec]:.0f} % of {prec}")
                    lines.append(f"| {name} | {key.split(':', 1)[1]} | {row} | {n['gflop_per_window']:.1f} | {n['windows_per_case']} | "
                                 f"{g:.1f} | {share} |")
        lines.append("")
    OUTPUT.write_text("\n".join(lines) + "\n")
    print(OUTPUT.read_text())
