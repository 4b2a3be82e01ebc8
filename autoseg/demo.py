"""`autoseg demo`: the whole pipeline on CT phantoms on this machine, printing the equivalent commands.

It is the newcomer's first contact with autoseg, so it must finish in minutes on a laptop CPU and
leave every artefact (plans, models, predictions, metrics, pictures) in one folder to look at.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DATASET_ID = 501


@dataclass
class DemoConfig:
    """Sizes and schedules chosen so 2 CPU cores finish in about 10 minutes."""

    num_train: int = 12
    num_test: int = 4
    seed: int = 0
    phantom_size: str = "small"
    planner: str = "CPUPlanner"
    # stage -> (epochs, iterations per epoch)
    schedule: dict = field(default_factory=lambda: {"roi": (3, 25), "organ": (20, 25), "tumour": (10, 25)})
    trainer: str = "TrainerFast"
    num_workers: int = 2


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work-dir", default="autoseg_demo", help="folder for everything the demo makes (default: ./autoseg_demo)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="where to train and predict")
    p.add_argument("--fresh", action="store_true", help="delete the work dir first instead of resuming")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply every training schedule (epochs and iterations; e.g. 0.05 for a smoke run)")
    p.add_argument("--num-train", type=int, default=DemoConfig.num_train, help="training phantoms")
    p.add_argument("--num-test", type=int, default=DemoConfig.num_test, help="held-out phantoms")


def run_from_args(args: argparse.Namespace) -> int:
    cfg = DemoConfig(num_train=args.num_train, num_test=args.num_test)
    if args.scale != 1.0:
        cfg.schedule = {k: (max(1, round(e * args.scale)), max(2, round(it * min(1.0, args.scale))))
                        for k, (e, it) in cfg.schedule.items()}
    return run_demo(Path(args.work_dir), cfg, device=args.device, fresh=args.fresh)


def _say(cmd: str) -> None:
    print(f"\n$ {cmd}", flush=True)


def run_demo(work: Path, cfg: DemoConfig, device: str = "cpu", fresh: bool = False) -> int:
    from autoseg.synthetic import make_phantom_dataset
    from autoseg.evaluation import evaluate_folder, format_summary_table
    from autoseg.inference import run_inference
    from autoseg.planners import plan_and_preprocess
    from autoseg.trainers import run_training

    if fresh and work.exists():
        shutil.rmtree(work)
    work = work.resolve()
    raw, pre, res = work / "raw", work / "preprocessed", work / "results"
    os.environ.update(AUTOSEG_RAW=str(raw), AUTOSEG_PREPROCESSED=str(pre), AUTOSEG_RESULTS=str(res))
    print(f"autoseg demo in {work}\n(export AUTOSEG_RAW={raw} AUTOSEG_PREPROCESSED={pre} AUTOSEG_RESULTS={res})")
    t0 = time.perf_counter()

    _say(f"autoseg make_phantoms -o {raw} --id {DATASET_ID} --num-train {cfg.num_train} "
         f"--num-test {cfg.num_test} --seed {cfg.seed} --size {cfg.phantom_size}")
    ds_folder = make_phantom_dataset(raw, DATASET_ID, num_train=cfg.num_train, num_test=cfg.num_test,
                                     seed=cfg.seed, size=cfg.phantom_size, num_workers=cfg.num_workers)

    _say(f"autoseg plan_and_preprocess -t {DATASET_ID} --planner {cfg.planner} -np {cfg.num_workers}")
    plan_and_preprocess(DATASET_ID, planner=cfg.planner, num_workers=cfg.num_workers)

    from autoseg.plans import load_plans
    plans = load_plans(pre / ds_folder.name / "plans.json")
    for stage in plans["stages"]:
        epochs, iters = cfg.schedule[stage]
        _say(f"autoseg run_training {stage} {cfg.trainer} {DATASET_ID} all --epochs {epochs} "
             f"--iters-per-epoch {iters} --device {device}")
        run_training(stage, cfg.trainer, DATASET_ID, "all", epochs=epochs, iters_per_epoch=iters, device=device)

    pred = work / "predictions"
    _say(f"autoseg run_inference -i {ds_folder / 'imagesTs'} -o {pred} -t {DATASET_ID} -tr {cfg.trainer} "
         f"--device {device} --profile")
    rc = run_inference(ds_folder / "imagesTs", pred, DATASET_ID, trainer=cfg.trainer, device=device, profile=True)

    _say(f"autoseg evaluate -g {ds_folder / 'labelsTs'} -p {pred} -o {work / 'evaluation'}")
    summary = evaluate_folder(ds_folder / "labelsTs", pred, work / "evaluation", labels=plans["labels"],
                              tolerances="flare22")
    print(format_summary_table(summary))
    from autoseg.demo_figures import save_overlay, save_training_curves
    save_overlay(ds_folder, pred, work / "overlay.png", plans)
    save_training_curves(res / ds_folder.name, work / "training_curves.png")
    shutil.copy(work / "evaluation" / "summary.json", work / "summary.json")
    _report(summary, plans, time.perf_counter() - t0, work, cfg)
    return rc


def _report(summary: dict, plans: dict, seconds: float, work: Path, cfg: DemoConfig) -> None:
    """Print the headline figures and keep them in demo_record.json: the README quotes a recorded run."""
    import platform

    from autoseg import __version__
    from autoseg.plans import organ_label_values, tumour_label_values
    from autoseg.utils import save_json

    names = {v: k for k, v in plans["labels"].items()}
    per_class = summary["per_class"]
    organ = [per_class[names[v]]["dsc"]["mean"] for v in organ_label_values(plans) if names[v] in per_class]
    tumour = [per_class[names[v]]["dsc"]["mean"] for v in tumour_label_values(plans) if names[v] in per_class]
    iterations = {s: cfg.schedule[s][0] * cfg.schedule[s][1] for s in plans["stages"]}
    print(f"\nmean organ DSC {np.mean(organ):.3f}" + (f", tumour DSC {np.mean(tumour):.3f}" if tumour else "")
          + f" on {summary['num_cases']} held-out phantoms; {sum(iterations.values())} training iterations "
          f"({', '.join(f'{s} {n}' for s, n in iterations.items())}); whole demo {seconds / 60:.1f} min")
    print(f"look at {work / 'overlay.png'}, {work / 'training_curves.png'} and {work / 'summary.json'}")
    save_json({"autoseg": __version__, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
               "num_train": cfg.num_train, "num_test": summary["num_cases"], "planner": cfg.planner,
               "trainer": cfg.trainer, "training_iterations": iterations, "minutes": round(seconds / 60, 2),
               "mean_organ_dsc": float(np.mean(organ)) if organ else None,
               "mean_tumour_dsc": float(np.mean(tumour)) if tumour else None,
               "dsc_per_class": {n: c["dsc"]["mean"] for n, c in per_class.items()},
               "scored_as_empty": summary.get("scored_as_empty", [])}, work / "demo_record.json")
