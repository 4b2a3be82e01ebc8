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

- tuned: ``cps_all_tuned`` / ``cps_filtered_tuned``, the same with ``TrainerFastCPSTuned``
  (semi_partial_trainers/cps_tuned.py: class attributes only), reported beside the default.

``python -m benchmarks.bench_semi_partial --work DIR --part all|ssl|partial|tuned|all+tuned --jobs 2
--stop-after 540`` (under the CPU lock) runs every missing (seed, arm), all arms of a seed before the
next seed, ``--jobs`` side by side, starting none after ``--stop-after`` s; rows go to
``DIR/results.json`` as runs finish, so the next call resumes. ``--report`` prints the tables;
``--step-time`` measures CPS vs single-network train_step time on the ssl cache (under the lock).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ORGANS = [1, 2, 3, 4, 5, 6]
SSL_ID, FULL_ID, PART_ID = 781, 782, 783
TRAINER_PATH = Path(__file__).parent / "semi_partial_trainers"
_COPY_LOCK = threading.Lock()


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
    if (raw / f"Dataset{PART_ID}_Part" / "dataset.json").is_file():
        return  # written last: everything before it is complete
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
    if (work / "pre" / f"Dataset{PART_ID}_Part" / "plans.json").is_file():
        return
    part_plans = work / "plans_part.json"  # the full dataset's plans under the partial dataset's name
    plans = json.loads((work / "pre" / f"Dataset{FULL_ID}_Full" / "plans.json").read_text())
    part_plans.write_text(json.dumps({**plans, "dataset_name": f"Dataset{PART_ID}_Part"}, indent=1))
    sh(["plan_and_preprocess", "-t", str(PART_ID), "--plans", str(part_plans), "-np", "1", "--no-progress",
        "--stages", "organ"], env, log)


def seed_preprocessed(work: Path, task: int, name: str, seed: int, arm: str = "") -> str:
    """A per-seed copy (hard links) of a preprocessed dataset: the selection file and splits of one
    seed's runs must not leak into another's when seeds run side by side (tuned CPS arms get their own)."""
    pre = f"pre_seed{seed}" + ("_tuned" if arm.endswith("_tuned") else "")
    dst = work / pre / f"Dataset{task}_{name}"
    with _COPY_LOCK:  # two arms of one dataset and seed may start side by side
        if dst.is_dir():
            return pre
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(work / "pre" / dst.name, tmp, copy_function=os.link,
                        ignore=shutil.ignore_patterns("unlabelled_selection_*.json", "splits.json"))
        tmp.rename(dst)
    return pre


def train_and_score(work: Path, arm: str, task: int, name: str, trainer: str, seed: int, epochs: int, iters: int,
                    log: Path) -> dict:
    results = f"res_seed{seed}_{arm}"
    env = environment(work, results, seed_preprocessed(work, task, name, seed, arm))
    marker = work / results / "train_seconds.txt"  # written once training has finished
    if not marker.is_file():
        shutil.rmtree(work / results, ignore_errors=True)  # a run killed mid-training starts from scratch
        t0 = time.time()
        sh(["run_training", "organ", trainer, str(task), "all", "--epochs", str(epochs), "--iters-per-epoch",
            str(iters), "--seed", str(seed), "-nw", "0", "--device", "cpu"], env, log)
        marker.write_text(f"{time.time() - t0:.1f}\n")
    train_s = float(marker.read_text())
    pred, scores = work / results / "pred", work / results / "evaluation"
    raw = work / "raw" / f"Dataset{task}_{name}"
    sh(["run_inference", "-i", str(raw / "imagesTs"), "-o", str(pred), "-t", str(task), "-tr", trainer,
        "-f", "all", "--device", "cpu"], env, log)
    sh(["evaluate", "-g", str(raw / "labelsTs"), "-p", str(pred), "-o", str(scores), "-j", "1", "--no-progress"],
       env, log)
    summary = json.loads((scores / "summary.json").read_text())
    dsc = {c["label"]: c["dsc"]["mean"] for c in summary["per_class"].values()}
    organ = float(np.mean([dsc.get(v) or 0.0 for v in ORGANS]))
    return {"arm": arm, "seed": seed, "mean_organ_dsc": organ, "per_class_dsc": dsc, "train_seconds": train_s,
            "trainer": trainer, "task": task, "epochs": epochs, "iters_per_epoch": iters,
            "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "load_average": os.getloadavg()}


SSL_ARMS = [("labelled", SSL_ID, "Semi", "TrainerFast"), ("cps_all", SSL_ID, "Semi", "TrainerFastCPS"),
            ("cps_filtered", SSL_ID, "Semi", "TrainerFastCPS")]
PARTIAL_ARMS = [("full", FULL_ID, "Full", "TrainerFast"), ("marginal", PART_ID, "Part", "TrainerFast"),
                ("as_background", PART_ID, "Part", "TrainerFastPartialAsBackground")]
TUNED_ARMS = [("cps_all_tuned", SSL_ID, "Semi", "TrainerFastCPSTuned"),
              ("cps_filtered_tuned", SSL_ID, "Semi", "TrainerFastCPSTuned")]
ARM_NAMES = [a[0] for a in SSL_ARMS + PARTIAL_ARMS + TUNED_ARMS]


def scored_with(arm: str) -> str | None:
    """The arm whose model scores the unlabelled images for a filtered arm (it must finish first)."""
    return arm.replace("filtered", "all") if "filtered" in arm else None


def run_one(work: Path, arm: str, task: int, name: str, trainer: str, seed: int, epochs: int, iters: int,
            keep: float) -> dict:
    log = work / f"commands_seed{seed}_{arm}.log"
    selection = work / seed_preprocessed(work, task, name, seed, arm) / f"Dataset{SSL_ID}_Semi" / \
        "unlabelled_selection_organ.json"
    source = scored_with(arm)
    if arm.startswith("cps_all"):
        selection.unlink(missing_ok=True)  # all 32 images
    if source:
        select(work, seed, keep, log, source, trainer)  # the CPS trainer now trains on the kept images only
    row = train_and_score(work, arm, task, name, trainer, seed, epochs, iters, log)
    if source:
        row["selected"] = json.loads(selection.read_text())["selected"]
        selection.unlink()
    return row


def run_arms(work: Path, arms: list[tuple], seeds: list[int], epochs: int, iters: int, keep: float, jobs: int = 1,
             stop_after: float | None = None) -> None:
    """Run every (seed, arm) not yet in ``results.json``, seed by seed (all arms of seed 0 first), with
    ``jobs`` runs side by side (one torch thread each); cps_filtered waits for its seed's cps_all (its
    selection is scored with that model). No run starts after ``stop_after`` seconds, so one call fits
    a turn on the shared CPU lock; the next call resumes."""
    out = work / "results.json"
    done = json.loads(out.read_text()) if out.is_file() else []
    have = {(r["arm"], r["seed"]) for r in done}
    arms = sorted(arms, key=lambda a: not a[0].startswith("cps_all"))  # longest first: workers finish together
    pending = [(seed, a) for seed in seeds for a in arms if (a[0], seed) not in have]
    pending.sort(key=lambda t: t[0] + t[1][0].endswith("_tuned"))  # a tuned seed after the next default one
    running: set[tuple[str, int]] = set()
    cond, t_start = threading.Condition(), time.time()

    def next_task() -> tuple[int, tuple] | None:
        with cond:
            while pending:
                if stop_after is not None and time.time() - t_start > stop_after:
                    return None
                for i, (seed, a) in enumerate(pending):
                    if not scored_with(a[0]) or (scored_with(a[0]), seed) in have:
                        running.add((a[0], seed))
                        return pending.pop(i)
                if not any(r == (scored_with(a[0]), s) for r in running for (s, a) in pending):
                    return None  # filtered arms whose cps_all failed or was not run
                cond.wait()
            return None

    def worker() -> None:
        while (task := next_task()) is not None:
            seed, (arm, tid, name, trainer) = task
            try:
                row = run_one(work, arm, tid, name, trainer, seed, epochs, iters, keep)
            except BaseException as e:  # noqa: BLE001 - one failed run must not stop the others
                print(f"{arm} seed {seed}: FAILED: {e}", flush=True)
                row = None
            with cond:
                running.discard((arm, seed))
                if row is not None:
                    done.append(row)
                    have.add((arm, seed))
                    tmp = out.with_suffix(".tmp")
                    tmp.write_text(json.dumps(done, indent=1))
                    tmp.replace(out)
                    print(f"{arm} seed {seed}: mean organ DSC {row['mean_organ_dsc']:.4f} "
                          f"({row['train_seconds']:.0f} s training)", flush=True)
                cond.notify_all()

    threads = [threading.Thread(target=worker) for _ in range(max(1, jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    left = [(a[0], s) for s, a in pending]
    print(f"{len(done)} run(s) done; not started: {left or 'none'}", flush=True)


def select(work: Path, seed: int, keep: float, log: Path, source: str = "cps_all",
           trainer: str = "TrainerFastCPS") -> None:
    """Score the 32 unlabelled images with this seed's ``source`` model (a copy of the scores is kept)."""
    pre = seed_preprocessed(work, SSL_ID, "Semi", seed, source)
    env = environment(work, f"res_seed{seed}_{source}", pre)
    sh(["select_unlabelled", "-t", str(SSL_ID), "-tr", trainer, "-f", "all", "--keep", str(keep),
        "--device", "cpu", "--no-progress"], env, log)
    sel = work / pre / f"Dataset{SSL_ID}_Semi" / "unlabelled_selection_organ.json"
    shutil.copy(sel, work / f"selection_seed{seed}_{source}.json")


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
    rows = [r for p in sorted(work.glob("results*.json")) for r in json.loads(p.read_text())]
    lines = ["| arm | trainer | dataset | seeds | mean organ DSC | per seed | per organ (mean over seeds) |",
             "|---|---|---|---|---|---|---|"]
    names = {1: "liver", 2: "spleen", 3: "kidney_r", 4: "kidney_l", 5: "pancreas", 6: "aorta"}
    for arm in ARM_NAMES:
        rs = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["seed"])
        if not rs:
            continue
        v = np.array([r["mean_organ_dsc"] for r in rs])
        per = ", ".join(f"{names[o]} {np.mean([(r['per_class_dsc'].get(str(o)) or 0.0) for r in rs]):.3f}"
                        for o in ORGANS)
        lines.append(f"| {arm} | {rs[0]['trainer']} | {rs[0]['task']} | {len(rs)} | {v.mean():.4f} ± {v.std():.4f} | "
                     f"{', '.join(f'{x:.3f}' for x in v)} | {per} |")
    return "\n".join(lines + ["", target_report(rows), "", selection_report(work)])


TARGETS = [  # (what, arm a, arm b, test on mean(a) - mean(b), threshold)
    ("CPS + filter >= labelled-only + 0.03", "cps_filtered", "labelled", ">=", 0.03),
    ("filtered >= all 32 unlabelled", "cps_filtered", "cps_all", ">=", 0.0),
    ("tuned CPS + filter >= labelled-only + 0.03", "cps_filtered_tuned", "labelled", ">=", 0.03),
    ("tuned: filtered >= all 32 unlabelled", "cps_filtered_tuned", "cps_all_tuned", ">=", 0.0),
    ("partial (marginal) within 0.02 of full", "marginal", "full", "|.|<=", 0.02),
    ("partial (marginal) >= as-background + 0.05", "marginal", "as_background", ">=", 0.05),
]


def target_report(rows: list[dict]) -> str:
    """Each target on the seeds both arms finished: mean ± std of the per-seed differences, verdict."""
    lines = ["| target | a − b, mean ± std over common seeds | per seed a − b | seeds | verdict |",
             "|---|---|---|---|---|"]
    for what, a, b, test, thr in TARGETS:
        va = {r["seed"]: r["mean_organ_dsc"] for r in rows if r["arm"] == a}
        vb = {r["seed"]: r["mean_organ_dsc"] for r in rows if r["arm"] == b}
        common = sorted(set(va) & set(vb))
        if not common:
            continue
        per = np.array([va[s] - vb[s] for s in common])
        d = float(per.mean())
        ok = abs(d) <= thr if test == "|.|<=" else d >= thr
        lines.append(f"| {what} | {d:+.4f} ± {per.std():.4f} | {', '.join(f'{x:+.3f}' for x in per)} | "
                     f"{', '.join(map(str, common))} | {'met' if ok else 'missed'} (on {len(common)} seed(s)) |")
    return "\n".join(lines)


def selection_report(work: Path) -> str:
    """One row per selection: the kept images and how the two uncertainty scores compare."""
    lines = ["| scored with | seed | kept | mean entropy kept / all | mean disagreement kept / all | "
             "Spearman(entropy, disagreement) |", "|---|---|---|---|---|---|"]
    for p in sorted(work.glob("selection_seed*_*.json")):
        sel = json.loads(p.read_text())
        seed, source = p.stem[len("selection_seed"):].split("_", 1)
        ids = sorted(sel["scores"])
        ent = np.array([sel["scores"][i]["entropy"] for i in ids])
        dis = np.array([sel["scores"][i]["disagreement"] for i in ids], dtype=float)
        kept = np.isin(ids, sel["selected"])
        rho = np.corrcoef(ent.argsort().argsort(), dis.argsort().argsort())[0, 1]
        lines.append(f"| {source} | {seed} | {' '.join(i.rsplit('_', 1)[1] for i in sel['selected'])} | "
                     f"{ent[kept].mean():.3f} / {ent.mean():.3f} | {dis[kept].mean():.3f} / {dis.mean():.3f} | "
                     f"{rho:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--part", choices=("ssl", "partial", "all", "tuned", "all+tuned", "data"), default="all",
                    help="all = ssl + partial (the default arms); tuned = the TrainerFastCPSTuned arms")
    ap.add_argument("--arms", nargs="+", choices=ARM_NAMES, default=None, help="only these arms of --part")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--iters", type=int, default=75)
    ap.add_argument("--keep", type=float, default=0.25)
    ap.add_argument("--jobs", type=int, default=1, help="runs side by side (one torch thread each)")
    ap.add_argument("--stop-after", type=float, default=None,
                    help="seconds after which no new run starts (one turn on the shared CPU lock)")
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
        arms = {"ssl": SSL_ARMS, "partial": PARTIAL_ARMS, "all": PARTIAL_ARMS + SSL_ARMS,
                "tuned": TUNED_ARMS, "all+tuned": PARTIAL_ARMS + SSL_ARMS + TUNED_ARMS}[args.part]
        arms = [a for a in arms if args.arms is None or a[0] in args.arms]
        run_arms(args.work, arms, args.seeds, args.epochs, args.iters, args.keep, args.jobs, args.stop_after)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
