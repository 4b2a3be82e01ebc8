"""Sliding-window overlap per stage: organ DSC and time at step 0.5 / 0.65 / 0.8 and for one whole-crop
pass, with trained models (the ``autoseg demo`` cascade: CPUPlanner + TrainerFast on phantoms).

One stage's setting changes at a time, the others stay at step 0.5 (the ROI stage at its default
whole-volume pass when it fits). The DSC is that of the stage's own classes in the final fused labels
(the ROI stage: every organ), against the held-out phantoms' labels; time is the stage's wall time
(resampling, network and argmax) summed over the cases, plus the windows computed (a load-free cost).
A setting is acceptable when its mean DSC is at most ``--tolerance`` (0.002) below step 0.5's; the
cheapest acceptable one is the stage's choice.

    autoseg demo --work-dir /tmp/demo --num-test 6                         # trained models, once
    flock /tmp/autoseg-cpu.lock python benchmarks/bench_overlap.py --demo /tmp/demo --out overlap.json
    python benchmarks/bench_overlap.py --markdown overlap.json                # the RESULTS table
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = (0.5, 0.65, 0.8, "whole")
WHOLE_FITS = 16.0  # a whole-crop pass is tried when the crop is at most this many patches' voxels


def load_cases(demo: Path, limit: int | None) -> list[tuple[str, np.ndarray, list[float], np.ndarray]]:
    from autoseg.io import read_image

    ds = next((demo / "raw").glob("Dataset*"))
    out = []
    for img_path in sorted((ds / "imagesTs").glob("*_0000.nii.gz"))[:limit]:
        case = img_path.name[: -len("_0000.nii.gz")]
        img, geom = read_image(img_path)
        lab, _ = read_image(ds / "labelsTs" / f"{case}.nii.gz")
        out.append((case, img, list(geom.spacing), lab))
    return out


def dice(pred: np.ndarray, ref: np.ndarray, value: int) -> float | None:
    """DSC of one label value; None when both are empty (a case without that structure)."""
    p, r = pred == value, ref == value
    total = int(p.sum()) + int(r.sum())
    return None if total == 0 else 2.0 * int((p & r).sum()) / total


def configure(pred, stage: str, setting) -> None:
    """``stage`` at ``setting`` (a step, or 'whole': one pass over the whole crop), the others default."""
    pred.step_size = None
    steps = {stage: setting} if setting != "whole" else {}
    pred._step = lambda sm: float(steps.get(sm.stage, 0.5))
    cls = type(pred)
    pred.roi_single_pass_factor = cls.roi_single_pass_factor
    pred.single_pass_factor = cls.single_pass_factor
    roi = stage not in pred.labellers
    if setting == "whole":
        if roi:
            pred.roi_single_pass_factor = WHOLE_FITS
        else:
            pred.single_pass_factor = WHOLE_FITS
    elif roi:
        pred.roi_single_pass_factor = 0.0  # the ROI stage in windows of its patch


def measure(pred, cases: list, stage: str, setting, classes: list[int]) -> dict:
    import torch

    from autoseg.inference.profiling import CaseProfile

    configure(pred, stage, setting)
    rows = []
    for case, img, spacing, lab in cases:
        prof = CaseProfile(torch.device("cpu"))
        t = time.perf_counter()
        out = pred.predict_array(img, spacing, prof)
        wall = time.perf_counter() - t
        d = {c: dice(out, lab, c) for c in classes}
        rows.append({"case": case, "dsc": d, "stage_s": round(prof.times.get(stage, 0.0), 3),
                     "wall_s": round(wall, 3), "windows": prof.windows.get(stage, {})})
    scores = [v for r in rows for v in r["dsc"].values() if v is not None]
    return {"stage": stage, "setting": setting, "mean_dsc": round(statistics.fmean(scores), 5) if scores else None,
            "stage_s": round(sum(r["stage_s"] for r in rows), 3),
            "windows": sum(r["windows"].get("computed", 0) for r in rows),
            "skipped": sum(r["windows"].get("skipped", 0) for r in rows), "cases": rows}


def stage_classes(pred, stage: str) -> list[int]:
    if stage in pred.labellers:
        return list(pred.stages[stage].classes)
    return [c for s in pred.labellers for c in pred.stages[s].classes if s == "organ"]


def choose(results: list[dict], tolerance: float) -> dict:
    """Per stage: the largest step whose mean DSC is at most ``tolerance`` below step 0.5's (and whether
    the whole-crop pass is within it too, and cheaper)."""
    out = {}
    for stage in dict.fromkeys(r["stage"] for r in results):
        rows = {r["setting"]: r for r in results if r["stage"] == stage}
        base = rows[0.5]

        def ok(r: dict) -> bool:
            return r["mean_dsc"] is not None and base["mean_dsc"] - r["mean_dsc"] <= tolerance
        step = max(v for v, r in rows.items() if v != "whole" and ok(r))
        whole = rows.get("whole")
        out[stage] = {"step": step, "dsc_change": round(rows[step]["mean_dsc"] - base["mean_dsc"], 5),
                      "windows": rows[step]["windows"], "windows_at_0.5": base["windows"],
                      "stage_s": rows[step]["stage_s"], "stage_s_at_0.5": base["stage_s"],
                      "whole_ok": bool(whole and ok(whole)),
                      "whole_dsc_change": round(whole["mean_dsc"] - base["mean_dsc"], 5) if whole else None}
    return out


def markdown(path: Path) -> str:
    """The results file's table: one row per stage and setting."""
    res = json.loads(path.read_text())
    base = {r["stage"]: r["mean_dsc"] for r in res["results"] if r["setting"] == 0.5}
    lines = ["| stage | setting | mean DSC | change vs 0.5 | windows computed (skipped) | stage s |",
             "|---|---|---|---|---|---|"]
    for r in res["results"]:
        ch = "" if r["mean_dsc"] is None or base.get(r["stage"]) is None else f"{r['mean_dsc'] - base[r['stage']]:+.4f}"
        lines.append(f"| {r['stage']} | {r['setting']} | {r['mean_dsc']:.4f} | {ch} | {r['windows']} ({r['skipped']}) "
                     f"| {r['stage_s']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--markdown"]:
        print(markdown(Path(sys.argv[2])))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, required=True, help="an `autoseg demo --work-dir` folder (trained)")
    ap.add_argument("--trainer", default="TrainerFast")
    ap.add_argument("--cases", type=int, default=None, help="at most this many held-out cases")
    ap.add_argument("--stages", nargs="+", default=None, help="default: every loaded stage")
    ap.add_argument("--tolerance", type=float, default=0.002)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-cascade", action="store_true",
                    help="no ROI pass: the organ stage searches the whole body crop (more windows per case)")
    ap.add_argument("--out", type=Path, required=True, help="JSON results (rows are appended stage by stage)")
    args = ap.parse_args()

    import torch

    from autoseg.inference.predictor import CascadePredictor

    torch.set_num_threads(args.threads)
    pred = CascadePredictor.from_results("501", trainer=args.trainer, folds=["all"], results=str(args.demo / "results"),
                                         device="cpu", num_threads=args.threads, postprocess=False,
                                         cascade=not args.no_cascade)
    cases = load_cases(args.demo, args.cases)
    old = json.loads(args.out.read_text()) if args.out.is_file() else {"results": []}
    done = {(r["stage"], r["setting"]) for r in old["results"]}
    results = old["results"]
    pred.predict_array(cases[0][1], cases[0][2])  # warm-up (oneDNN kernels), not measured
    for stage in args.stages or pred.order:
        for setting in SETTINGS:
            if (stage, setting) in done:
                continue
            r = measure(pred, cases, stage, setting, stage_classes(pred, stage))
            results.append(r)
            print(f"{stage:8s} {str(setting):6s} DSC {r['mean_dsc']}  {r['stage_s']:.2f} s  "
                  f"windows {r['windows']} (+{r['skipped']} skipped)", flush=True)
            args.out.write_text(json.dumps({"results": results, "threads": args.threads,
                                            "cases": [c[0] for c in cases]}, indent=1))
    summary = choose([r for r in results if r["stage"] in (args.stages or pred.order)], args.tolerance)
    args.out.write_text(json.dumps({"results": results, "threads": args.threads, "cases": [c[0] for c in cases],
                                    "tolerance": args.tolerance, "choice": summary}, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
