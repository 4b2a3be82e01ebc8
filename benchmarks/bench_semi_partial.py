"""Imperfect-data benchmark (issue 14): semi-supervised CPS + uncertainty filter, and partial labels.

Everything runs through the ``autoseg`` CLI on phantoms, organ stage only (body crop), one small
plans file per dataset (coarse spacing, small patch and network, so 2 CPU cores finish), the same
trainer recipe (TrainerFast's AdamW) and the same iteration budget in every arm, fold ``all``, and
held-out test phantoms predicted with ``run_inference`` and scored with ``autoseg evaluate``.

Arms (each over ``--seeds``):
- ssl: 4 labelled + 32 unlabelled. ``labelled``: TrainerFast on the 4; ``cps_all``: TrainerFastCPS
  on all 32; ``cps_filtered``: ``select_unlabelled`` (scored with that seed's cps_all model) keeps
  ``--keep`` of them, then TrainerFastCPS again, which reads the selection and uses the kept images only.
- partial: 16 cases, each annotating a random 3 of the 6 organs. ``full``: the same 16 fully
  labelled; ``marginal``: the partial labels with the default (marginal + exclusion) loss;
  ``as_background``: the partial labels with unannotated organs trained as background.

``python -m benchmarks.bench_semi_partial --work DIR [--part ssl|partial|all]`` writes
``DIR/results_<part>.json`` (one entry per arm and seed, appended as runs finish, so a rerun
resumes; ``--report`` prints the table).
``python -m benchmarks.bench_semi_partial --work DIR --step-time`` measures CPS vs single-network
train_step time on the ssl cache (run it under the shared lock).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ORGANS = [1, 2, 3, 4, 5, 6]
SSL_ID, FULL_ID, PART_ID = 781, 782, 783
TRAINER_PATH = Path(__file__).parent / "semi_partial_trainers"


def sh(args: list[str], env: dict, log: Path) -> None:
    """Run one autoseg command (logged with its output); stop the benchmark if it fails."""
    cmd = [sys.executable, "-m", "autoseg", *args]
    with open(log, "a") as f:
        f.write("$ autoseg " + " ".join(args) + "\n")
        f.flush()
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"failed ({rc}): autoseg {' '.join(args)}; see {log}")


def environment(work: Path, results: str, pre: str = "pre") -> dict:
    env = dict(os.environ, AUTOSEG_RAW=str(work / "raw"), AUTOSEG_PREPROCESSED=str(work / pre),
               AUTOSEG_RESULTS=str(work / results), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["AUTOSEG_TRAINER_PATH"] = str(TRAINER_PATH)
    return env


def make_data(work: Path, env: dict, log: Path) -> None:
    raw = work / "raw"
    sh(["make_phantoms", "-o", str(raw), "--id", str(SSL_ID), "--name", "Semi", "--num-train", "4",
        "--num-test", "6", "--num-unlabelled", "32", "--seed", "7", "-np", "1", "--no-progress"], env, log)
    sh(["make_phantoms", "-o", str(raw), "--id", str(FULL_ID), "--name", "Full", "--num-train", "16",
        "--num-test", "6", "--seed", "11", "-np", "1", "--no-progress"], env, log)
    part = raw / f"Dataset{PART_ID}_Part"
    if not (part / "dataset.json").is_file():
        derive_partial(raw / f"Dataset{FULL_ID}_Full", part, seed=11, organs=3)


def derive_partial(full: Path, part: Path, seed: int, organs: int) -> None:
    """The full dataset's images and test labels with training labels cut to ``organs`` random organs
    each (exactly what ``make_phantoms --partial-organs`` writes for the same seed, without
    generating the images again)."""
    from autoseg.io import read_image, write_image
    from autoseg.synthetic.dataset import annotated_classes

    tmp = part.with_name(part.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("imagesTr", "imagesTs", "labelsTs"):
        shutil.copytree(full / sub, tmp / sub, copy_function=os.link)
    (tmp / "labelsTr").mkdir()
    dj = json.loads((full / "dataset.json").read_text())
    dj["labelled_classes"] = {}
    for p in sorted((full / "labelsTr").glob("*.nii.gz")):
        cid = p.name[: -len(".nii.gz")]
        keep = annotated_classes(seed, int(cid.rsplit("_", 1)[1]), organs)
        lab, geo = read_image(p)
        write_image(np.where(np.isin(lab, keep), lab, 0).astype(lab.dtype), geo, tmp / "labelsTr" / p.name)
        dj["labelled_classes"][cid] = keep
    dj["name"] = "Part"
    (tmp / "dataset.json").write_text(json.dumps(dj, indent=1))
    tmp.rename(part)


def small_plans(plans_path: Path) -> None:
    """Shrink the organ stage to a CPU-sized patch and network (the contract allows hand edits)."""
    plans = json.loads(plans_path.read_text())
    st = plans["stages"]["organ"]
    st["patch_size"] = [16, 40, 40]
    st["batch_size"] = 2
    net = st["network"]
    n = 4
    net["features"] = [8, 16, 32, 48][:n]
    net["kernel_sizes"] = net["kernel_sizes"][:n]
    net["strides"] = net["strides"][:n]
    plans_path.write_text(json.dumps(plans, indent=1))


def preprocess(work: Path, env: dict, log: Path) -> None:
    base = ["--planner", "CPUPlanner", "--stages", "organ", "--target-spacing", "5", "4", "4", "-np", "1",
            "--no-progress"]
    for task in (SSL_ID, FULL_ID):
        name = {SSL_ID: "Semi", FULL_ID: "Full"}[task]
        plans = work / "pre" / f"Dataset{task}_{name}" / "plans.json"
        if not plans.is_file():
            sh(["plan_and_preprocess", "-t", str(task), *base], env, log)
            small_plans(plans)
    part_plans = work / "plans_part.json"  # the full dataset's plans under the partial dataset's name
    plans = json.loads((work / "pre" / f"Dataset{FULL_ID}_Full" / "plans.json").read_text())
    part_plans.write_text(json.dumps({**plans, "dataset_name": f"Dataset{PART_ID}_Part"}, indent=1))
    sh(["plan_and_preprocess", "-t", str(PART_ID), "--plans", str(part_plans), "-np", "1", "--no-progress",
        "--stages", "organ"], env, log)


def seed_preprocessed(work: Path, task: int, name: str, seed: int) -> str:
    """A per-seed copy (hard links) of a preprocessed dataset: the selection file and splits of one
    seed's runs must not leak into another's when seeds run side by side."""
    pre = f"pre_seed{seed}"
    dst = work / pre / f"Dataset{task}_{name}"
    if not dst.is_dir():
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(work / "pre" / dst.name, tmp, copy_function=os.link,
                        ignore=shutil.ignore_patterns("unlabelled_selection_*.json", "splits.json"))
        tmp.rename(dst)
    return pre


def train_and_score(work: Path, arm: str, task: int, name: str, trainer: str, seed: int, epochs: int, iters: int,
                    log: Path) -> dict:
    results = f"res_seed{seed}_{arm}"
    env = environment(work, results, seed_preprocessed(work, task, name, seed))
    t0 = time.time()
    sh(["run_training", "organ", trainer, str(task), "all", "--epochs", str(epochs), "--iters-per-epoch",
        str(iters), "--seed", str(seed), "-nw", "0", "--device", "cpu"], env, log)
    train_s = time.time() - t0
    pred = work / results / "pred"
    raw = work / "raw" / f"Dataset{task}_{name}"
    sh(["run_inference", "-i", str(raw / "imagesTs"), "-o", str(pred), "-t", str(task), "-tr", trainer,
        "-f", "all", "--device", "cpu"], env, log)
    sh(["evaluate", "-g", str(raw / "labelsTs"), "-p", str(pred), "-j", "1", "--no-progress"], env, log)
    summary = json.loads((pred / "summary.json").read_text())
    dsc = {c["label"]: c["dsc"]["mean"] for c in summary["per_class"].values()}
    organ = float(np.mean([dsc.get(v) or 0.0 for v in ORGANS]))
    return {"arm": arm, "seed": seed, "mean_organ_dsc": organ, "per_class_dsc": dsc, "train_seconds": train_s,
            "trainer": trainer, "task": task, "epochs": epochs, "iters_per_epoch": iters}


def run_arms(work: Path, part: str, seeds: list[int], epochs: int, iters: int, keep: float) -> None:
    out = work / f"results_{part}_seeds{'-'.join(map(str, seeds))}.json"  # parts/seeds may run side by side
    done = json.loads(out.read_text()) if out.is_file() else []
    have = {(r["arm"], r["seed"]) for r in done}
    log = work / "commands.log"
    arms = []
    if part in ("ssl", "all"):
        arms += [("labelled", SSL_ID, "Semi", "TrainerFast"), ("cps_all", SSL_ID, "Semi", "TrainerFastCPS"),
                 ("cps_filtered", SSL_ID, "Semi", "TrainerFastCPS")]
    if part in ("partial", "all"):
        arms += [("full", FULL_ID, "Full", "TrainerFast"), ("marginal", PART_ID, "Part", "TrainerFast"),
                 ("as_background", PART_ID, "Part", "TrainerFastPartialAsBackground")]
    for seed in seeds:
        for arm, task, name, trainer in arms:
            if (arm, seed) in have:
                continue
            selection = work / f"pre_seed{seed}" / f"Dataset{SSL_ID}_Semi" / "unlabelled_selection_organ.json"
            if arm == "cps_all":
                selection.unlink(missing_ok=True)  # all 32 images
            if arm == "cps_filtered":
                select(work, seed, keep, log)  # TrainerFastCPS now trains on the kept images only
            row = train_and_score(work, arm, task, name, trainer, seed, epochs, iters, log)
            if arm == "cps_filtered":
                row["selected"] = json.loads(selection.read_text())["selected"]
                selection.unlink()
            done.append(row)
            out.write_text(json.dumps(done, indent=1))
            print(f"{arm} seed {seed}: mean organ DSC {row['mean_organ_dsc']:.4f} ({row['train_seconds']:.0f} s)",
                  flush=True)


def select(work: Path, seed: int, keep: float, log: Path) -> None:
    """Score the 32 unlabelled images with this seed's cps_all model (a copy of the scores is kept per seed)."""
    env = environment(work, f"res_seed{seed}_cps_all", seed_preprocessed(work, SSL_ID, "Semi", seed))
    sh(["select_unlabelled", "-t", str(SSL_ID), "-tr", "TrainerFastCPS", "-f", "all", "--keep", str(keep),
        "--device", "cpu", "--no-progress"], env, log)
    sel = work / f"pre_seed{seed}" / f"Dataset{SSL_ID}_Semi" / "unlabelled_selection_organ.json"
    shutil.copy(sel, work / f"selection_seed{seed}.json")


def step_time(work: Path, steps: int = 20, warmup: int = 3) -> dict:
    """Median train_step time of TrainerFast and TrainerFastCPS on the same plans (the plans' batch of 2
    patches: 2 labelled vs 1 labelled + 1 unlabelled), batches fetched before timing (data loading
    excluded), one torch thread. Wall time and this process's CPU time per step are both recorded:
    on a shared machine the CPU time is the steadier measure of compute."""
    import torch

    from autoseg.plans import load_plans
    from autoseg.trainers.fast import TrainerFast
    from autoseg.trainers.semi import TrainerFastCPS

    torch.set_num_threads(1)
    folder = work / "pre" / f"Dataset{SSL_ID}_Semi"
    plans = load_plans(folder / "plans.json")
    res: dict = {}
    for cls in (TrainerFast, TrainerFastCPS):
        t = cls(plans, "organ", "all", folder, "cpu", work / "steptime" / cls.__name__, num_epochs=1,
                iters_per_epoch=steps, num_workers=0)
        t.initialize()
        t.on_epoch_start()
        train, val = t.get_dataloaders()
        with train, val:
            batches = [next(train) for _ in range(steps + warmup)]
        wall, cpu = [], []
        for i, b in enumerate(batches):
            t0, c0 = time.perf_counter(), time.process_time()
            t.train_step(b)
            if i >= warmup:
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
        res[cls.__name__] = {"median_wall_s": statistics.median(wall), "median_cpu_s": statistics.median(cpu),
                             "wall_s": wall, "cpu_s": cpu, "amp": str(t.amp_dtype)}
    for k in ("wall", "cpu"):
        res[f"ratio_{k}"] = res["TrainerFastCPS"][f"median_{k}_s"] / res["TrainerFast"][f"median_{k}_s"]
    res["load_average"] = os.getloadavg()
    (work / "step_time.json").write_text(json.dumps(res, indent=1))
    return res


def report(work: Path) -> str:
    """Markdown table: mean ± std (population std over seeds) of mean organ DSC per arm, per-class means."""
    rows = [r for p in sorted(work.glob("results_*.json")) for r in json.loads(p.read_text())]
    lines = ["| arm | trainer | dataset | seeds | mean organ DSC | per seed | per organ (mean over seeds) |",
             "|---|---|---|---|---|---|---|"]
    names = {1: "liver", 2: "spleen", 3: "kidney_r", 4: "kidney_l", 5: "pancreas", 6: "aorta"}
    for arm in ("labelled", "cps_all", "cps_filtered", "full", "marginal", "as_background"):
        rs = [r for r in rows if r["arm"] == arm]
        if not rs:
            continue
        v = np.array([r["mean_organ_dsc"] for r in rs])
        per = ", ".join(f"{names[o]} {np.mean([(r['per_class_dsc'].get(str(o)) or 0.0) for r in rs]):.3f}"
                        for o in ORGANS)
        lines.append(f"| {arm} | {rs[0]['trainer']} | {rs[0]['task']} | {len(rs)} | {v.mean():.4f} ± {v.std():.4f} | "
                     f"{', '.join(f'{x:.3f}' for x in v)} | {per} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--part", choices=("ssl", "partial", "all", "data"), default="all")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--keep", type=float, default=0.25)
    ap.add_argument("--step-time", action="store_true")
    ap.add_argument("--report", action="store_true", help="print the markdown table of results.json")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.report:
        print(report(args.work))
        return 0
    if args.step_time:
        print(json.dumps(step_time(args.work), indent=1))
        return 0
    log = args.work / "commands.log"
    env = environment(args.work, "res")
    make_data(args.work, env, log)
    preprocess(args.work, env, log)
    if args.part != "data":
        run_arms(args.work, args.part, args.seeds, args.epochs, args.iters, args.keep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
