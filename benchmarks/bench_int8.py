"""int8 post-training quantisation on the CPU: speed per case and held-out DSC against float32 and bf16.

For each trained model: ``autoseg.inference.quantize.quantize_model`` calibrates on the first 8 training
images (32 windows sampled from what the predictor feeds the network), quantises the convolutions and
keeps the int8 network only if the held-out phantoms lose <= 0.01 mean DSC. Then the held-out cases are
predicted in one process per configuration (float32 eager, float32 with engine auto, the defaults:
precision auto + engine auto, and int8): time per case = median over the cases after one untimed
warm-up case (model loading, engine choice and start-up out; reading and writing files out: arrays in
memory), DSC per organ against the labels. Writes ``benchmarks/RESULTS_int8.md``.

    flock /tmp/autoseg-cpu.lock python -m benchmarks.bench_int8 --work /work/bench/int8 \\
        --model NAME=RESULTS_ROOT:TASK:TRAINER:FOLD:RAW_DATASET ...
    # or a bare checkpoint: --model NAME=CKPT:RAW_DATASET
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"fp32 eager": dict(precision="fp32", engine="eager"),
           "fp32 engine auto": dict(precision="fp32", engine="auto"),
           "defaults (auto precision, engine auto)": dict(precision="auto", engine="auto"),
           "int8 (--engine openvino_int8)": dict(precision="auto", engine="openvino_int8")}


def _predictor(spec: str, **kwargs):
    from autoseg.inference import CascadePredictor

    parts = spec.split(":")
    if len(parts) == 2:  # CKPT:RAW
        return CascadePredictor({"organ": [Path(parts[0])]}, device="cpu", **kwargs), Path(parts[1])
    root, task, trainer, fold, raw = parts
    os.environ["AUTOSEG_RESULTS"] = root
    return CascadePredictor.from_results(task, trainer=trainer, folds=[fold], device="cpu", **kwargs), Path(raw)


def _cases(raw: Path) -> list[tuple[np.ndarray, tuple, np.ndarray]]:
    from autoseg.io import read_image

    out = []
    for p in sorted((raw / "imagesTs").glob("*_0000.nii.gz")):
        img, geo = read_image(p)
        out.append((img, geo.spacing, read_image(raw / "labelsTs" / p.name.replace("_0000", ""))[0]))
    return out


def measure(spec: str) -> dict:
    from autoseg.evaluation.metrics import dice
    from autoseg.inference.quantize import image_cases, quantize_model

    pred, raw = _predictor(spec, precision="fp32", engine="eager")
    record = quantize_model(pred, image_cases(raw / "imagesTr", 8), image_cases(raw / "imagesTs"), raw / "labelsTs")
    cases = _cases(raw)
    rows = {}
    for name, kw in CONFIGS.items():
        if name.startswith("int8") and not record["accepted"]:
            continue
        pred, _ = _predictor(spec, **kw)
        organs = sorted({v for s in pred.labellers for v in pred.stages[s].classes})
        pred.predict_array(cases[0][0], cases[0][1])  # warm-up
        times, dscs = [], []
        for img, spacing, gt in cases:
            t0 = time.perf_counter()
            seg = pred.predict_array(img, spacing)
            times.append(time.perf_counter() - t0)
            dscs.append([dice(gt == c, seg == c) for c in organs])
        rows[name] = {"case_s": statistics.median(times), "dsc": float(np.mean(dscs)),
                      "engines": {s: r["engine"] for s, r in pred.engines.items()}}
        print(spec, name, json.dumps(rows[name]), flush=True)
    return {"quantize": record, "rows": rows, "cases": len(cases)}


def report(results: dict, out: Path) -> None:
    from benchmarks.equal_work_report import _cpu_name

    lines = ["# int8 post-training quantisation on the CPU (issue 18)", "",
             f"- **date**: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- **machine**: {_cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"Python {platform.python_version()}", "- **regenerate**: `benchmarks/bench_int8.py` (its docstring)",
             "", "Time per case: median over the held-out cases, arrays in memory (no file reading or writing), "
             "after one untimed warm-up case (model loading and the engine choice out). Precision: fp32 rows "
             "compute in float32; 'auto precision' is bf16 on a CPU with native bf16 (this one); int8 runs int8 "
             "convolutions with the other layers in bf16 here. DSC: mean over organs and cases against the "
             "phantoms' labels. No memory (RSS or PSS) was measured. Rows against int8: see the hand-written "
             "section at the end.", ""]
    for name, r in results.items():
        q = r["quantize"]
        st = ", ".join(f"{s}: one window {i['window_s_fp32'] * 1e3:.0f} ms fp32 eager vs {i['window_s_int8'] * 1e3:.0f}"
                       f" ms int8 ({i['calibration_windows']} calibration windows)" for s, i in q["stages"].items())
        lines += [f"## {name}", "", f"- quantise: {len(q['calibration_cases'])} calibration (training) cases, "
                  f"{len(q['validation_cases'])} held-out cases; held-out DSC fp32 {q['dsc_fp32']:.4f} vs int8 "
                  f"{q['dsc_int8']:.4f}: drop {q['drop']:+.4f} (allowed {q['max_drop']}) -> "
                  f"**{'kept' if q['accepted'] else 'rejected'}**; took {q['seconds']:.0f} s", f"- {st}", "",
                  "| configuration | engine(s) | s / case | vs fp32 eager | mean organ DSC |", "|---|---|---|---|---|"]
        base = r["rows"]["fp32 eager"]["case_s"]
        for cfg, row in r["rows"].items():
            eng = ", ".join(f"{s} {e}" for s, e in row["engines"].items())
            lines.append(f"| {cfg} | {eng} | {row['case_s']:.3f} | {base / row['case_s']:.2f}x | {row['dsc']:.4f} |")
        lines.append("")
    out.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--model", action="append", required=True, help="NAME=SPEC (see the module docstring)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS_int8.md")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    a.work.mkdir(parents=True, exist_ok=True)
    state_file = a.work / "int8.json"
    results = json.loads(state_file.read_text()) if state_file.is_file() else {}
    for item in a.model:
        name, spec = item.split("=", 1)
        if name not in results:
            results[name] = measure(spec)
            state_file.write_text(json.dumps(results, indent=2))
    report(results, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
