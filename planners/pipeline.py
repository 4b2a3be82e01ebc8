"""``plan_and_preprocess``: integrity check -> fingerprint (cached) -> plans.json -> .npz caches."""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path

from autoseg import AutosegError
from autoseg.datasets import RawDataset, check_integrity
from autoseg.fingerprint import compute_fingerprint
from autoseg.paths import find_dataset_folder, preprocessed_root, raw_root
from autoseg.plans import load_plans, plans_file_name, plans_subdir, save_plans
from autoseg.preprocessing.preprocessor import preprocess_dataset
from autoseg.utils import atomic_path, shard
from autoseg.planners.registry import find_planner

log = logging.getLogger(__name__)
DEFAULT_PLANNER = "ExperimentPlanner"


def _check_kept_plans(dest: Path, plans: dict, planner: str | None, stages: list[str] | None,
                      target_spacing: list[float] | None) -> None:
    """Existing plans are kept (they may hold hand edits), so a flag that would plan differently stops
    the run instead of being ignored."""
    asked = []
    if planner and planner != plans.get("planner"):
        asked.append(f"--planner {planner} (the plans were made by {plans.get('planner')!r})")
    organ = plans["stages"].get("organ", {}).get("target_spacing")
    if target_spacing and [float(s) for s in target_spacing] != [float(s) for s in organ or []]:
        asked.append(f"--target-spacing {' '.join(f'{s:g}' for s in target_spacing)} (planned: {organ})")
    missing = [s for s in stages or [] if s not in plans["stages"]]
    if missing:
        asked.append(f"--stages {' '.join(missing)} (planned: {', '.join(plans['stages'])})")
    if asked:
        raise AutosegError(f"{dest} exists and is kept (it may hold hand edits), so {'; '.join(asked)} would "
                           "not take effect; pass --overwrite-plans to replan (hand edits are lost), or drop the flag")


def _resolve_plans(ds: RawDataset, fp: dict, out: Path, planner: str | None, stages: list[str] | None,
                   target_spacing: list[float] | None, gpu_memory_gb: float, plans_file: str | None,
                   overwrite_plans: bool, planner_path: list[str] | str | None, plans_name: str | None = None) -> dict:
    """A given plans file, else an existing (maybe hand-edited) plans file, else fresh plans."""
    dest = out / plans_file_name(plans_name)
    if plans_file:
        plans = load_plans(plans_file)
        if plans["dataset_name"] != ds.name:
            raise AutosegError(f"{plans_file}: plans key 'dataset_name' is {plans['dataset_name']!r}, this dataset "
                               f"is {ds.name!r}; set it to {ds.name!r} to reuse these plans")
        if Path(plans_file).resolve() != dest.resolve():
            save_plans(plans, dest)
        log.info("using plans from %s", plans_file)
    elif dest.is_file() and not overwrite_plans:
        plans = load_plans(dest)
        _check_kept_plans(dest, plans, planner, stages, target_spacing)
        log.info("using existing plans %s", dest)
    else:
        cls = find_planner(planner or DEFAULT_PLANNER, planner_path)
        plans = cls(fp, gpu_memory_gb=gpu_memory_gb, target_spacing=target_spacing, stages=stages).plan()
        save_plans(plans, dest)
        log.info("wrote %s (%s: stages %s)", dest, cls.__name__, ", ".join(plans["stages"]))
    if {k: int(v) for k, v in plans["labels"].items()} != {k: int(v) for k, v in ds.labels.items()}:
        raise AutosegError(f"{dest}: plans labels {plans['labels']} differ from {ds.folder / 'dataset.json'} "
                           f"labels {ds.labels}; pass --overwrite-plans to replan")
    return plans


def plan_and_preprocess(task: str | int, planner: str | None = None, stages: list[str] | None = None,
                        target_spacing: list[float] | None = None, gpu_memory_gb: float = 8.0,
                        num_workers: int = 2, raw: str | os.PathLike | None = None,
                        preprocessed: str | os.PathLike | None = None, verify: bool = True,
                        plans_file: str | None = None, progress: bool = True, overwrite_plans: bool = False,
                        planner_path: list[str] | str | None = None, num_parts: int = 1, part_id: int = 0,
                        plans_name: str | None = None) -> Path:
    """Check, fingerprint, plan and preprocess dataset ``task``; returns its preprocessed folder.

    ``planner`` defaults to ``DEFAULT_PLANNER``. An existing plans.json is kept unless
    ``overwrite_plans``; a ``planner``, ``target_spacing`` or ``stages`` it does not match is an error.
    ``num_parts``/``part_id``: preprocess only that shard of the cases (the fingerprint and plans, cached
    and deterministic, are the whole dataset's: every part computes or reuses the same).
    ``plans_name`` (as nnU-Net's -p): plans in ``plans_NAME.json``, caches in ``plans_NAME/``."""
    plans_file_name(plans_name)  # a bad name fails before any work
    ds = RawDataset.load(find_dataset_folder(task, raw_root(raw)))
    if ds.num_channels != 1:  # the networks, caches and predictor carry one input channel
        raise AutosegError(f"{ds.folder / 'dataset.json'}: {ds.num_channels} input channels "
                           f"({', '.join(map(str, ds.channel_names.values()))}); autoseg segments single-channel "
                           "CT only: keep one channel (e.g. the venous phase) as CASE_0000")
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
                           overwrite_plans, planner_path, plans_name)
    t3 = time.perf_counter()
    unknown = [s for s in stages or [] if s not in plans["stages"]]
    if unknown:
        raise AutosegError(f"--stages: stage(s) {unknown} not in the plans (stages: {', '.join(plans['stages'])})")
    todo = [s for s in plans["stages"] if not stages or s in stages]
    part = dataclasses.replace(ds, cases=shard(ds.cases, num_parts, part_id, key=lambda c: c.case_id))
    preprocess_dataset(part, plans, out / plans_subdir(plans_name), todo, num_workers, progress)
    if ds.unlabelled:
        from autoseg.preprocessing.unlabelled import model_crop_boxes, preprocess_unlabelled

        boxes, source = model_crop_boxes(ds.name)
        n = preprocess_unlabelled(ds, plans, out / plans_subdir(plans_name), todo, boxes, source, progress)
        log.info("%d unlabelled image(s) preprocessed (crops from %s)", n, source.split(":")[0])
    t4 = time.perf_counter()
    src, dst = ds.folder / "dataset.json", out / "dataset.json"
    if not dst.exists() or dst.read_bytes() != src.read_bytes():  # label names travel with the cache
        with atomic_path(dst, ".json") as tmp:
            shutil.copyfile(src, tmp)
    log.info("plan_and_preprocess %s: verify %.1fs, fingerprint %.1fs, plan %.1fs, preprocess %.1fs", ds.name,
             t1 - t0, t2 - t1, t3 - t2, t4 - t3)
    return out
