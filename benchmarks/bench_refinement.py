"""Iterative saliency refinement on CT phantoms: pancreas DSC with and without the refinement stage.

One organ stage on the body crop (CPUPlanner sizes) and the refinement stage the planner adds for the
pancreas. Per training seed: the organ stage is trained (fold ``all``), its predictions on the training
cases become the refinement stage's coarse saliency (``autoseg.preprocessing.coarse_saliency``), then
the refinement stage is trained twice with the same iterations: with the default schedule (perturbed
ground truth, then the organ stage's predictions) and with ground-truth saliency only (what autoseg
did before). The test phantoms are predicted by the organ stage alone and by organ + refinement.

    python -m benchmarks.bench_refinement prepare --work W
    flock /tmp/autoseg-cpu.lock nice -n 10 python -m benchmarks.bench_refinement organ --work W --seed S
    flock /tmp/autoseg-cpu.lock nice -n 10 python -m benchmarks.bench_refinement refine --work W --seed S
    flock /tmp/autoseg-cpu.lock nice -n 10 python -m benchmarks.bench_refinement evaluate --work W --seed S
    python -m benchmarks.bench_refinement report --work W --out benchmarks/RESULTS_refinement.md

Each step is one locked job of a few minutes; ``seed`` runs organ, refine and evaluate of one seed as one
job (``benchmarks/bench_refinement.sh`` chains prepare and the seeds).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

DATASET_ID = 515
NAME = "Dataset515_RefineBench"
ORGAN, REFINE = "organ", "refine_pancreas"
PLANNER = '''from autoseg.planners.cpu_planner import CPUPlanner


class RefineBenchPlanner(CPUPlanner):
    """The CPU planner with the refinement stage for small organs switched back on."""

    refine_small_organs = True
'''


# arm -> (gt_saliency_until: None = the trainer's default schedule, iterations x --refine-epochs)
ARMS = {"schedule": (None, 1), "gtonly": (1.0, 1), "schedule_x3": (None, 3)}


def _pre(work: Path, seed: int | None = None) -> Path:
    """The shared cache, or one seed's copy (each seed caches its own organ model's predictions)."""
    return work / "preprocessed" / NAME if seed is None else work / f"seed{seed}" / "preprocessed"


def _plans(work: Path) -> dict:
    from autoseg.plans import load_plans

    return load_plans(_pre(work) / "plans.json")


def prepare(work: Path, num_train: int, num_test: int, organ_patch: list[int]) -> None:
    """Phantoms, plans (organ stage on the body crop + the pancreas refinement stage) and the cache."""
    from autoseg.datasets import RawDataset
    from autoseg.planners import plan_and_preprocess
    from autoseg.plans import save_plans
    from autoseg.preprocessing.preprocessor import preprocess_dataset
    from autoseg.synthetic import make_phantom_dataset

    make_phantom_dataset(work / "raw", DATASET_ID, name="RefineBench", num_train=num_train, num_test=num_test,
                         seed=0, size="small", num_workers=1, progress=False)
    (work / "planners").mkdir(parents=True, exist_ok=True)
    (work / "planners" / "refine_bench_planner.py").write_text(PLANNER)
    plan_and_preprocess(DATASET_ID, planner="RefineBenchPlanner", stages=[ORGAN], num_workers=1,
                        raw=work / "raw", preprocessed=work / "preprocessed", progress=False,
                        planner_path=[str(work / "planners")])
    plans = _plans(work)
    if REFINE not in plans["stages"]:
        raise SystemExit(f"the planner made no {REFINE} stage: {list(plans['stages'])}")
    st = plans["stages"][ORGAN]
    st["patch_size"] = [min(a, b) for a, b in zip(st["patch_size"], organ_patch)]
    save_plans(plans, _pre(work) / "plans.json")
    preprocess_dataset(RawDataset.load(work / "raw" / NAME), plans, _pre(work), [REFINE], 1, progress=False)
    print(json.dumps({s: {k: plans["stages"][s][k] for k in ("target_spacing", "patch_size", "batch_size")}
                      for s in plans["stages"]}))


def _train(plans: dict, stage: str, folder: Path, out: Path, seed: int, epochs: int, iters: int,
           gt_until: float | None = None) -> dict:
    from autoseg.trainers.fast import TrainerFast

    class Bench(TrainerFast):
        def final_validation(self) -> None:  # the test phantoms are the evaluation
            pass

    if gt_until is not None:
        Bench.gt_saliency_until = gt_until
    t0 = time.perf_counter()
    tr = Bench(plans, stage, "all", folder, "cpu", out, num_epochs=epochs, iters_per_epoch=iters,
               num_workers=1, seed=seed)
    tr.fit()
    info = {"wall_s": round(time.perf_counter() - t0, 1), "iterations": epochs * iters, "seed": seed,
            "gt_saliency_until": gt_until, "load_avg": os.getloadavg()[0]}
    (out / "bench_train.json").write_text(json.dumps(info))
    return info


def organ(work: Path, seed: int, epochs: int, iters: int) -> None:
    """Train the organ stage for one seed and give the seed its own copy of the cache."""
    dest = _pre(work, seed)
    if not dest.is_dir():
        shutil.copytree(_pre(work), dest)
    out = work / f"seed{seed}" / "results" / ORGAN
    if not (out / "checkpoint_final.pt").is_file():
        print(json.dumps(_train(_plans(work), ORGAN, dest, out, seed, epochs, iters)))


def refine(work: Path, seed: int, epochs: int, iters: int, arms: list[str]) -> None:
    """Coarse saliency from this seed's organ model, then the refinement stage per schedule arm."""
    from autoseg.preprocessing.coarse_saliency import predict_coarse_saliency

    pre, res = _pre(work, seed), work / f"seed{seed}" / "results"
    t0 = time.perf_counter()
    made = predict_coarse_saliency(_plans(work), REFINE, pre, res / ORGAN / "checkpoint_final.pt", "all", "cpu")
    print(f"coarse saliency of {len(made)} case(s) in {time.perf_counter() - t0:.1f} s")
    for arm in arms:
        out = res / f"{REFINE}_{arm}"
        if not (out / "checkpoint_final.pt").is_file():
            gt_until, times = ARMS[arm]
            print(arm, json.dumps(_train(_plans(work), REFINE, pre, out, seed, epochs * times, iters, gt_until)))


def evaluate(work: Path, seed: int, arms: list[str]) -> dict:
    """Pancreas DSC of organ alone and organ + refinement on the test phantoms, with the profile."""
    from autoseg.evaluation.metrics import dice
    from autoseg.inference import CascadePredictor
    from autoseg.inference.profiling import CaseProfile
    from autoseg.io import read_image

    torch.set_num_threads(2)
    raw = work / "raw" / NAME
    res = work / f"seed{seed}" / "results"
    pancreas = _plans(work)["labels"]["pancreas"]
    cases = sorted(raw.glob("imagesTs/*_0000.nii.gz"))
    setups = {"organ": {ORGAN: [res / ORGAN / "checkpoint_final.pt"]}}
    for arm in arms:
        setups[arm] = {**setups["organ"], REFINE: [res / f"{REFINE}_{arm}" / "checkpoint_final.pt"]}
    for arm in arms:  # the same models stopped after one round: does iterating help?
        setups[f"{arm}@1"] = setups[arm]
    out: dict = {}
    for name, models in setups.items():
        pred = CascadePredictor(models, device="cpu")
        if name.endswith("@1"):
            pred.stages[REFINE].config["refine"] = {**pred.stages[REFINE].config.get("refine", {}), "max_rounds": 1}
        pred.predict_array(*_load(cases[0], read_image))  # warm-up (first-call allocations)
        rows = []
        for path in cases:
            img, spacing = _load(path, read_image)
            gt, _ = read_image(raw / "labelsTs" / path.name.replace("_0000", ""))
            prof = CaseProfile(torch.device("cpu"))
            seg = pred.predict_array(img, spacing, prof)
            s = prof.summary()
            info = s.get("stage_info", {}).get(REFINE, {})
            rows.append({"case": path.name, "dsc": dice(gt == pancreas, seg == pancreas), "organ_s": s.get(ORGAN),
                         "refine_s": s.get(REFINE), "total_s": s["total"], "rounds": info.get("rounds"),
                         "seconds_per_round": info.get("seconds_per_round"),
                         "dsc_to_previous": info.get("dsc_to_previous")})
        out[name] = rows
        print(name, json.dumps({"dsc": float(np.mean([r["dsc"] for r in rows]))}))
    out["load_avg"] = os.getloadavg()[0]
    out["cli_profile"] = cli_profile(work, seed, arms[0], cases[0])
    (work / f"seed{seed}" / "evaluation.json").write_text(json.dumps(out, indent=1))
    return out


def cli_profile(work: Path, seed: int, arm: str, image: Path) -> str:
    """What ``autoseg run_inference --profile`` prints for one test case (checkpoints linked into the
    results layout the CLI reads)."""
    res, cli = work / f"seed{seed}" / "results", work / f"seed{seed}" / "cli_results"
    for stage, src in ((ORGAN, res / ORGAN), (REFINE, res / f"{REFINE}_{arm}")):
        d = cli / NAME / stage / "Bench" / "fold_all"
        d.mkdir(parents=True, exist_ok=True)
        if not (d / "checkpoint_final.pt").exists():
            (d / "checkpoint_final.pt").symlink_to(src / "checkpoint_final.pt")
    single = work / f"seed{seed}" / "cli_in"
    single.mkdir(exist_ok=True)
    if not (single / image.name).exists():
        (single / image.name).symlink_to(image)
    cmd = ["autoseg", "run_inference", "-i", str(single), "-o", str(work / f"seed{seed}" / "cli_out"), "-t", NAME,
           "-tr", "Bench", "-f", "all", "--results", str(cli), "--device", "cpu", "--profile"]
    run = subprocess.run([sys.executable, "-m", "autoseg", *cmd[1:]], capture_output=True, text=True)
    lines = [ln for ln in run.stdout.splitlines() if "rounds" in ln]
    return lines[0] if lines else f"(no profile line; rc {run.returncode}: {run.stderr.strip()[-300:]})"


def _load(path: Path, read_image) -> tuple[np.ndarray, list[float]]:
    img, geo = read_image(path)
    return img, list(geo.spacing)


def coarse_dsc(work: Path, seed: int) -> float | None:
    """Mean pancreas DSC of the cached coarse saliency against the ground truth (training cases)."""
    folder = _pre(work, seed) / REFINE / "coarse_saliency" / "fold_all"
    vals = [json.loads(p.read_text()).get("dsc_to_ground_truth", [None])[0] for p in folder.glob("*.json")]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


ARM_TITLES = {"schedule": "schedule: GT, then coarse", "gtonly": "GT saliency only",
              "schedule_x3": "schedule, 3x the iterations"}


def report(work: Path, out_path: Path, arms: list[str]) -> None:
    seeds = sorted(int(p.name[4:]) for p in work.glob("seed*") if (p / "evaluation.json").is_file())
    if not seeds:
        raise SystemExit(f"{work}: no seed has an evaluation.json yet")
    ev = {s: json.loads((work / f"seed{s}" / "evaluation.json").read_text()) for s in seeds}
    plans = _plans(work)
    organ_it = json.loads((work / f"seed{seeds[0]}" / "results" / ORGAN / "bench_train.json").read_text())
    ref_info = {a: [json.loads((work / f"seed{s}" / "results" / f"{REFINE}_{a}" / "bench_train.json").read_text())
                    for s in seeds] for a in arms}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()

    def mean_dsc(setup: str, s: int) -> float:
        return float(np.mean([r["dsc"] for r in ev[s][setup]]))

    lines = ["# Iterative saliency refinement on CT phantoms", "",
             f"- **date**: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit {commit}; "
             f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}, CPU only",
             f"- **data**: `make_phantoms` size small, seed 0, {len(list((work / 'raw' / NAME / 'imagesTr').glob('*')))} "
             f"training and {len(ev[seeds[0]]['organ'])} test phantoms",
             f"- **plans**: CPUPlanner + refinement ({ORGAN}: spacing {plans['stages'][ORGAN]['target_spacing']}, "
             f"patch {plans['stages'][ORGAN]['patch_size']}; {REFINE}: spacing "
             f"{plans['stages'][REFINE]['target_spacing']}, patch {plans['stages'][REFINE]['patch_size']}, "
             f"max_rounds {plans['stages'][REFINE]['refine']['max_rounds']}, stop_dsc "
             f"{plans['stages'][REFINE]['refine']['stop_dsc']})",
             f"- **budget**: TrainerFast, fold all, organ {organ_it['iterations']} iterations; refinement "
             + ", ".join(f"{a} {ref_info[a][0]['iterations']}" for a in arms)
             + f" iterations; seeds {seeds} (training seeds; same phantoms)",
             "- **regenerate**: `bash benchmarks/bench_refinement.sh W` then "
             "`python -m benchmarks.bench_refinement report --work W`", "",
             "## Pancreas DSC on the test phantoms (mean over cases)", "",
             "| seed | organ stage alone | " + " | ".join(f"+ refinement ({ARM_TITLES.get(a, a)})" for a in arms)
             + " | coarse saliency DSC on training cases |", "|---|---|" + "---|" * len(arms) + "---|"]
    for s in seeds:
        cells = [f"{mean_dsc(a, s):.4f}" if a in ev[s] else "–" for a in ("organ", *arms)]
        cd = coarse_dsc(work, s)
        lines.append(f"| {s} | " + " | ".join(cells) + (f" | {cd:.4f} |" if cd is not None else " | – |"))
    for a in ("organ", *arms):
        vals = [mean_dsc(a, s) for s in seeds if a in ev[s]]
        if a != "organ":
            deltas = [mean_dsc(a, s) - mean_dsc("organ", s) for s in seeds if a in ev[s]]
            lines.append(f"\n- **{a}**: mean {np.mean(vals):.4f}; change vs organ alone "
                         f"{np.mean(deltas):+.4f} (per seed {', '.join(f'{d:+.4f}' for d in deltas)})")
            one = [mean_dsc(f"{a}@1", s) - mean_dsc("organ", s) for s in seeds if f"{a}@1" in ev[s]]
            if one:
                lines.append(f"  - stopped after one round: change vs organ alone {np.mean(one):+.4f} "
                             f"(per seed {', '.join(f'{d:+.4f}' for d in one)})")
    lines += ["", "## Rounds and cost (test phantoms, all seeds)", "",
              "| arm | rounds (median, max) | s per round (median) | refinement s / case (median) "
              "| organ stage s / case (median) | refinement / organ time | load avg during evaluation |",
              "|---|---|---|---|---|---|---|"]
    for a in arms:
        rows = [r for s in seeds for r in ev[s].get(a, [])]
        if not rows:
            continue
        rounds = [r["rounds"] for r in rows]
        per_round = [t for r in rows for t in r["seconds_per_round"]]
        ref_s, org_s = [r["refine_s"] for r in rows], [r["organ_s"] for r in rows]
        ratio = statistics.median([a_ / b_ for a_, b_ in zip(ref_s, org_s)])
        loads = ", ".join(f"{ev[s]['load_avg']:.1f}" for s in seeds)
        lines.append(f"| {a} | {statistics.median(rounds):g}, {max(rounds)} | {statistics.median(per_round):.3f} | "
                     f"{statistics.median(ref_s):.3f} | {statistics.median(org_s):.3f} | {ratio:.2f}x | {loads} |")
    lines += ["", "Training wall time (s, per seed): organ " + ", ".join(
        str(json.loads((work / f"seed{s}" / "results" / ORGAN / "bench_train.json").read_text())["wall_s"])
        for s in seeds) + "; " + "; ".join(f"{a} " + ", ".join(str(i["wall_s"]) for i in ref_info[a])
                                        for a in arms) + "."]
    lines += ["", "`autoseg run_inference --profile` on one test phantom (seed " + str(seeds[0]) + ", arm " + arms[0] + "):",
              "", "```", ev[seeds[0]].get("cli_profile", "(not run)"), "```"]
    out_path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["prepare", "organ", "refine", "evaluate", "seed", "report"])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=10, help="training phantoms")
    ap.add_argument("--test", type=int, default=5, help="test phantoms")
    ap.add_argument("--organ-patch", default="32,64,64", help="cap of the organ stage's patch (z,y,x)")
    ap.add_argument("--organ-epochs", type=int, default=12)
    ap.add_argument("--refine-epochs", type=int, default=8)
    ap.add_argument("--iters", type=int, default=25, help="iterations per epoch")
    ap.add_argument("--arms", default="schedule,gtonly")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/RESULTS_refinement.md"))
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    arms = a.arms.split(",")
    if a.command == "prepare":
        prepare(a.work, a.train, a.test, [int(v) for v in a.organ_patch.split(",")])
    elif a.command == "organ":
        organ(a.work, a.seed, a.organ_epochs, a.iters)
    elif a.command == "refine":
        refine(a.work, a.seed, a.refine_epochs, a.iters, arms)
    elif a.command == "evaluate":
        evaluate(a.work, a.seed, arms)
    elif a.command == "seed":  # organ, refine and evaluate in one locked job
        organ(a.work, a.seed, a.organ_epochs, a.iters)
        refine(a.work, a.seed, a.refine_epochs, a.iters, arms)
        evaluate(a.work, a.seed, arms)
    else:
        report(a.work, a.out, arms)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
