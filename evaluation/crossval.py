"""End-to-end cross-validation of a trained cascade: ``autoseg evaluate_cv -t ID [-tr NAME]``.

Each stage is validated alone during training, on its own grid and with ground-truth crops; that says
little about the cascade a user runs. Here every fold's held-out cases go through the full cascade
(roi -> organ -> tumour) of that fold's models at the original resolution, connected-component rules
are learned on those out-of-fold predictions, and DSC/NSD are reported per class across folds, before
and after the rules. The rules land in ``crossval/<config>/postprocessing.json``, which the predictor
then uses for fold ``all`` and for fold ensembles (see ``autoseg.inference.rule_sources``).
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from autoseg import AutosegError
from autoseg.paths import find_dataset_folder, preprocessed_root, raw_root
from autoseg.utils import load_json, save_json

log = logging.getLogger(__name__)


def config_name(trainer: str, stage_trainers: dict | None = None) -> str:
    """Folder name of one configuration: the trainer, plus any per-stage overrides."""
    extra = "".join(f"__{s}-{t}" for s, t in sorted((stage_trainers or {}).items()) if t != trainer)
    return f"{trainer}{extra}"


def cv_folder(results_dataset: Path, name: str) -> Path:
    return Path(results_dataset) / "crossval" / name


def fold_checkpoints(results_dataset: Path, stages: Sequence[str], trainer: str, stage_trainers: dict | None,
                     num_folds: int) -> tuple[dict[int, dict[str, Path]], list[str]]:
    """``{fold: {stage: checkpoint_final}}`` and the list of what is missing for a complete CV."""
    found: dict[int, dict[str, Path]] = {}
    missing = []
    for k in range(num_folds):
        for stage in stages:
            tr = (stage_trainers or {}).get(stage, trainer)
            ckpt = Path(results_dataset) / stage / tr / f"fold_{k}" / "checkpoint_final.pt"
            if ckpt.is_file():
                found.setdefault(k, {})[stage] = ckpt
            else:
                missing.append(f"{stage}/{tr}/fold_{k}")
    return found, missing


def _checkpoint_stamp(folds: dict[int, dict[str, Path]]) -> dict[str, float]:
    return {str(p): os.path.getmtime(p) for per in folds.values() for p in per.values()}


class CrossValidation:
    """One configuration's out-of-fold predictions, rules and metrics (all under ``cv_folder``)."""

    def __init__(self, task: str | int, trainer: str = "Trainer", stage_trainers: dict | None = None,
                 raw: str | os.PathLike | None = None, preprocessed: str | os.PathLike | None = None,
                 results: str | os.PathLike | None = None, device: str = "auto", tolerances: str = "flare22",
                 num_workers: int = 2):
        from autoseg.datasets import RawDataset
        from autoseg.inference.models import resolve_dataset_dir
        from autoseg.plans import load_plans

        self.pre = find_dataset_folder(task, preprocessed_root(preprocessed))
        self.plans = load_plans(self.pre / "plans.json")
        splits_path = self.pre / "splits.json"
        if not splits_path.is_file():
            raise AutosegError(f"{splits_path}: no splits (train folds 0-4 first)")
        self.splits = load_json(splits_path)
        self.raw = RawDataset.load(find_dataset_folder(task, raw_root(raw)))
        self.results_dataset = resolve_dataset_dir(task, results)
        self.trainer, self.stage_trainers = trainer, dict(stage_trainers or {})
        self.name = config_name(trainer, stage_trainers)
        self.folder = cv_folder(self.results_dataset, self.name)
        self.device, self.tolerances, self.num_workers = device, tolerances, num_workers
        self.folds, missing = fold_checkpoints(self.results_dataset, list(self.plans["stages"]), trainer,
                                               stage_trainers, len(self.splits))
        if missing:
            raise AutosegError(f"{self.results_dataset}: cross-validation of {self.name} is incomplete; "
                               f"no checkpoint_final.pt for {', '.join(missing[:6])}"
                               + (" ..." if len(missing) > 6 else ""))

    @property
    def foreground_labels(self) -> list[int]:
        return sorted(v for v in self.plans["labels"].values() if v > 0)

    def up_to_date(self) -> bool:
        """True when a summary exists for exactly these checkpoints (a retrained fold redoes the CV)."""
        path = self.folder / "summary.json"
        return path.is_file() and load_json(path).get("checkpoints") == _checkpoint_stamp(self.folds)

    def run(self, force: bool = False, progress: bool = True) -> dict:
        """Predict, learn rules, evaluate; returns (and writes) ``summary.json``."""
        if not force and self.up_to_date():
            log.info("%s: cross-validation up to date", self.folder)
            return load_json(self.folder / "summary.json")
        raw_dir, pp_dir, gt_dir = self.folder / "predictions", self.folder / "postprocessed", self.folder / "gt"
        for d in (raw_dir, pp_dir, gt_dir):
            shutil.rmtree(d, ignore_errors=True)
        case_fold = self.predict_folds(raw_dir, progress)
        link_ground_truth(self.raw, case_fold, gt_dir)
        rules = self.learn_rules(raw_dir, gt_dir, list(case_fold))
        apply_rules_to_folder(raw_dir, pp_dir, rules)
        summary = self.summarise(raw_dir, pp_dir, gt_dir, case_fold, rules)
        save_json({"source": f"cross-validation of {self.name} ({len(self.folds)} folds, "
                             f"{len(case_fold)} cases, full cascade at original resolution)", **rules},
                  self.folder / "postprocessing.json")
        save_json(summary, self.folder / "summary.json")
        return summary

    def predict_folds(self, out_dir: Path, progress: bool) -> dict[str, int]:
        """Every fold's validation cases through that fold's cascade (no clean-up, probabilities kept)."""
        from tqdm import tqdm

        from autoseg.inference.predictor import CascadePredictor

        images = {c.case_id: c.images[0] for c in self.raw.cases}
        out_dir.mkdir(parents=True, exist_ok=True)
        case_fold: dict[str, int] = {}
        todo = [(k, cid) for k in sorted(self.folds) for cid in self.splits[k]["val"] if cid in images]
        bar = tqdm(total=len(todo), desc=f"cross-validation {self.name}", unit="case", disable=not progress)
        try:
            for k in sorted(self.folds):
                predictor = CascadePredictor({s: [p] for s, p in self.folds[k].items()}, device=self.device,
                                             postprocess=False, save_probabilities=True)
                for cid in self.splits[k]["val"]:
                    if cid not in images:
                        log.warning("fold %d: validation case %s not in %s; skipped", k, cid, self.raw.folder)
                        continue
                    case_fold[cid] = k
                    try:
                        predictor.predict_file(images[cid], out_dir / f"{cid}.nii.gz")
                    except Exception as e:  # one bad case must not lose the others; it scores 0 below
                        log.error("fold %d: %s failed: %s", k, cid, e)
                    bar.update()
        finally:
            bar.close()
        return case_fold

    def learn_rules(self, raw_dir: Path, gt_dir: Path, cases: list[str]) -> dict:
        return learn_rules_from_folders(raw_dir, gt_dir, cases, self.foreground_labels)

    def summarise(self, raw_dir: Path, pp_dir: Path, gt_dir: Path, case_fold: dict[str, int], rules: dict) -> dict:
        from autoseg.evaluation.folder import evaluate_folder

        out = {"config": self.name, "trainer": self.trainer, "stage_trainers": self.stage_trainers,
               "dataset": self.plans["dataset_name"], "num_folds": len(self.folds), "case_fold": case_fold,
               "checkpoints": _checkpoint_stamp(self.folds), "postprocessing": rules.get("rules", {})}
        workers = self.num_workers if len(case_fold) >= 8 else 1  # a process pool costs more than a few cases
        for key, d in (("before_postprocessing", raw_dir), ("after_postprocessing", pp_dir)):
            s = evaluate_folder(gt_dir, d, self.folder / f"evaluation_{key.split('_')[0]}",
                                labels=self.plans["labels"], tolerances=self.tolerances,
                                num_workers=workers, progress=False)
            out[key] = fold_statistics(s, self.folder / f"evaluation_{key.split('_')[0]}" / "metrics.csv",
                                       case_fold)
        return out


def link_ground_truth(raw, case_fold: dict[str, int], gt_dir: Path) -> None:
    """The validated cases' label files in one folder (links where possible), so unvalidated ones are not scored."""
    gt_dir.mkdir(parents=True, exist_ok=True)
    labels = {c.case_id: c.label for c in raw.cases}
    for cid in case_fold:
        src = Path(labels[cid]).resolve()
        dst = gt_dir / f"{cid}.nii.gz" if src.name.endswith(".nii.gz") else gt_dir / src.name
        try:
            os.symlink(src, dst)
        except OSError:
            shutil.copy(src, dst)


def _read_pair(pred_path: Path, gt_path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Prediction (empty when missing) and GT cropped to the box of their union: rules only look there."""
    from autoseg.io import read_image

    gt, geo = read_image(gt_path)
    pred = read_image(pred_path)[0] if pred_path.is_file() else np.zeros_like(gt)
    fg = (gt > 0) | (pred > 0)
    if not fg.any():
        return pred[:1, :1, :1], gt[:1, :1, :1], geo.spacing
    idx = [np.flatnonzero(fg.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    box = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)
    return pred[box], gt[box], geo.spacing


def learn_rules_from_folders(pred_dir: Path, gt_dir: Path, cases: list[str], labels: list[int]) -> dict:
    """Postprocessing rules learned on out-of-fold predictions at original resolution. Size thresholds
    are in voxels of the median spacing and stored as volumes (``min_volume_mm3``)."""
    from autoseg.io import strip_suffix
    from autoseg.inference.postprocessing import learn_postprocessing

    gts = {strip_suffix(p.name): p for p in gt_dir.iterdir()}
    pairs, spacings = [], []
    for cid in cases:
        pred, gt, spacing = _read_pair(pred_dir / f"{cid}.nii.gz", gts[cid])
        pairs.append((pred, gt))
        spacings.append(spacing)
    median = [float(s) for s in np.median(np.asarray(spacings), axis=0)] if spacings else None
    return learn_postprocessing(pairs, labels, spacing=median)


def apply_rules_to_folder(src: Path, dst: Path, rules: dict) -> None:
    """Each mask of ``src`` with the rules applied, written with its own geometry to ``dst``."""
    from autoseg.io import read_image, write_image
    from autoseg.inference.postprocessing import apply_postprocessing

    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.glob("*.nii.gz")):
        seg, geo = read_image(p)
        write_image(apply_postprocessing(seg, rules, geo.spacing), geo, dst / p.name)


def fold_statistics(summary: dict, metrics_csv: Path, case_fold: dict[str, int]) -> dict:
    """Per class: mean/std over all cases, the mean of each fold, and every case's DSC/NSD."""
    import csv

    per_class: dict[str, dict] = {}
    with open(metrics_csv, encoding="utf-8") as f:
        for row in csv.DictReader(f):
            entry = per_class.setdefault(row["name"], {"per_case": {}, "per_fold": {}})
            entry["per_case"][row["case"]] = {"dsc": float(row["dsc"]), "nsd": float(row["nsd"])}
    for name, entry in per_class.items():
        for metric in ("dsc", "nsd"):
            values = [v[metric] for v in entry["per_case"].values()]
            entry[metric] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
        for k in sorted(set(case_fold.values())):
            vals = [v["dsc"] for c, v in entry["per_case"].items() if case_fold.get(c) == k]
            if vals:
                entry["per_fold"][str(k)] = float(np.mean(vals))
    return {"per_class": per_class, "mean_dsc": summary["mean"]["dsc"], "mean_nsd": summary["mean"]["nsd"],
            "scored_as_empty": summary["scored_as_empty"], "num_cases": summary["num_cases"]}


def format_cv_table(summary: dict) -> str:
    """Per class: DSC and NSD mean ± std across the folds' cases, before -> after postprocessing."""
    before, after = summary["before_postprocessing"], summary["after_postprocessing"]
    rows = [("class", "DSC before pp", "DSC after pp", "NSD after pp", "DSC per fold (after pp)")]
    for name, a in after["per_class"].items():
        b = before["per_class"][name]
        folds = " ".join(f"{v:.3f}" for v in a["per_fold"].values())
        rows.append((name, f"{b['dsc']['mean']:.4f} ± {b['dsc']['std']:.4f}",
                     f"{a['dsc']['mean']:.4f} ± {a['dsc']['std']:.4f}",
                     f"{a['nsd']['mean']:.4f} ± {a['nsd']['std']:.4f}", folds))
    rows.append(("mean", f"{before['mean_dsc']:.4f}", f"{after['mean_dsc']:.4f}", f"{after['mean_nsd']:.4f}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(s.ljust(w) for s, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"{summary['config']}: {summary['num_folds']} folds, {after['num_cases']} cases; "
                 f"postprocessing {summary['postprocessing'] or 'none (no rule beat doing nothing)'}")
    if after["scored_as_empty"]:
        lines.append(f"{len(after['scored_as_empty'])} case(s) failed and count as 0: "
                     + ", ".join(after["scored_as_empty"]))
    return "\n".join(lines)


def evaluate_cv(task: str | int, trainer: str = "Trainer", stage_trainers: dict | None = None,
                force: bool = False, progress: bool = True, **kwargs) -> dict:
    """Run (or reuse) one configuration's cross-validation; returns its summary."""
    return CrossValidation(task, trainer, stage_trainers, **kwargs).run(force=force, progress=progress)


def maybe_evaluate_cv(task: str | int, trainer: str, **kwargs) -> dict | None:
    """After a fold finishes: run the cross-validation once every fold of every stage is complete."""
    try:
        cv = CrossValidation(task, trainer, **kwargs)
    except AutosegError as e:
        log.debug("no cross-validation yet: %s", e)
        return None
    log.info("every fold of every stage of %s is trained: running the end-to-end cross-validation", trainer)
    try:
        return cv.run(progress=False)
    except AutosegError as e:  # the training itself succeeded; say what to rerun instead of failing it
        log.error("cross-validation of %s failed: %s (rerun: autoseg evaluate_cv -t %s -tr %s)", trainer, e, task,
                  trainer)
        return None
