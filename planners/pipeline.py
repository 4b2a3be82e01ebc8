"""``plan_and_preprocess``: integrity check -> fingerprint (cached) -> plans.json -> .npz caches."""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from autoseg import AutosegError
from autoseg.datasets import RawDataset, check_integrity
from autoseg.fingerprint import compute_fingerprint
from autoseg.paths import find_dataset_folder, preprocessed_root, raw_root
from autoseg.plans import STAGES, load_plans, save_plans
from autoseg.preprocessing.preprocessor import preprocess_dataset
from autoseg.utils import atomic_path
from autoseg.planners.registry import find_planner

log = logging.getLogger(__name__)


def _resolve_plans(ds: RawDataset, fp: dict, out: Path, planner: str, stages: list[str] | None,
                   target_spacing: list[float] | None, gpu_memory_gb: float, plans_file: str | None,
                   overwrite_plans: bool, planner_path: list[str] | str | None) -> dict:
    """A given plans file, else an existing (maybe hand-edited) plans.json, else fresh plans."""
    dest = out / "plans.json"
    if plans_file:
        plans = load_plans(plans_file)
        if Path(plans_file).resolve() != dest.resolve():
            save_plans(plans, dest)
        log.info("using plans from %s", plans_file)
    elif dest.is_file() and not overwrite_plans:
        plans = load_plans(dest)
        if target_spacing or (stages and not set(stages) <= set(plans["stages"])):
            log.warning("%s exists and is kept (it may be hand-edited); pass --overwrite-plans to replan "
                        "with the new --target-spacing/--stages", dest)
        log.info("using existing plans %s", dest)
    else:
        cls = find_planner(planner, planner_path)
        plans = cls(fp, gpu_memory_gb=gpu_memory_gb, target_spacing=target_spacing, stages=stages).plan()
        save_plans(plans, dest)
        log.info("wrote %s (%s: stages %s)", dest, cls.__name__, ", ".join(plans["stages"]))
    if {k: int(v) for k, v in plans["labels"].items()} != {k: int(v) for k, v in ds.labels.items()}:
        raise AutosegError(f"{dest}: plans labels {plans['labels']} differ from {ds.folder / 'dataset.json'} "
                           f"labels {ds.labels}; pass --overwrite-plans to replan")
    return plans


def plan_and_preprocess(task: str | int, planner: str = "ExperimentPlanner", stages: list[str] | None = None,
                        target_spacing: list[float] | None = None, gpu_memory_gb: float = 8.0,
                        num_workers: int = 2, raw: str | os.PathLike | None = None,
                        preprocessed: str | os.PathLike | None = None, verify: bool = True,
                        plans_file: str | None = None, progress: bool = True, overwrite_plans: bool = False,
                        planner_path: list[str] | str | None = None) -> Path:
    """Check, fingerprint, plan and preprocess dataset ``task``; returns its preprocessed folder."""
    if stages:
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise AutosegError(f"--stages: unknown stage(s) {unknown}; known: {', '.join(STAGES)}")
    ds = RawDataset.load(find_dataset_folder(task, raw_root(raw)))
    out = preprocessed_root(preprocessed) / ds.name
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if verify:
        problems = check_integrity(ds, num_workers)
        if problems:
            raise AutosegError(f"{ds.folder}: {len(problems)} problem(s) found; fix them or pass --no-verify:\n  "
                               + "\n  ".join(problems))
    t1 = time.perf_counter()
    fp = compute_fingerprint(ds, out / "dataset_fingerprint.json", num_workers, progress)
    t2 = time.perf_counter()
    plans = _resolve_plans(ds, fp, out, planner, stages, target_spacing, gpu_memory_gb, plans_file,
                           overwrite_plans, planner_path)
    t3 = time.perf_counter()
    todo = [s for s in plans["stages"] if not stages or s in stages]
    preprocess_dataset(ds, plans, out, todo, num_workers, progress)
    if ds.unlabelled:
        from autoseg.preprocessing.unlabelled import model_crop_boxes, preprocess_unlabelled

        boxes, source = model_crop_boxes(ds.name)
        n = preprocess_unlabelled(ds, plans, out, todo, boxes, source, progress)
        log.info("%d unlabelled image(s) preprocessed (crops from %s)", n, source.split(":")[0])
    t4 = time.perf_counter()
    src, dst = ds.folder / "dataset.json", out / "dataset.json"
    if not dst.exists() or dst.read_bytes() != src.read_bytes():  # label names travel with the cache
        with atomic_path(dst, ".json") as tmp:
            shutil.copyfile(src, tmp)
    log.info("plan_and_preprocess %s: verify %.1fs, fingerprint %.1fs, plan %.1fs, preprocess %.1fs", ds.name,
             t1 - t0, t2 - t1, t3 - t2, t4 - t3)
    return out
