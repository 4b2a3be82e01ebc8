"""``autoseg find_best_configuration -t ID`` and ``autoseg ensemble``.

Every trainer configuration with a complete cross-validation is scored end to end (``evaluate_cv``);
every pair is also tried as an ensemble that averages the two cascades' probabilities stage by stage
(organ probabilities averaged, then tumour probabilities averaged; tumour labels override organs, as in
the predictor). The best mean DSC after postprocessing wins, and the commands to run it are printed.
"""
from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from autoseg import AutosegError
from autoseg.plans import STAGES
from autoseg.utils import load_json, save_json
from autoseg.evaluation.crossval import (CrossValidation, apply_rules_to_folder, cv_folder, fold_statistics,
                                         learn_rules_from_folders, link_ground_truth)

log = logging.getLogger(__name__)


def _load_probabilities(npz_path: Path) -> dict[str, dict]:
    """``{stage: {"p": (C, *box) float32, "bbox", "classes"}}`` from a ``CASE.npz`` the predictor wrote."""
    if not npz_path.is_file():
        raise AutosegError(f"{npz_path}: no probabilities (predict with --save-probabilities)")
    with np.load(npz_path) as z:
        return {s: {"p": z[f"{s}_probabilities"].astype(np.float32), "bbox": z[f"{s}_bbox"].tolist(),
                    "classes": z[f"{s}_classes"].tolist()}
                for s in STAGES if s != "roi" and f"{s}_probabilities" in z.files}


def fuse_members(members: Sequence[dict[str, dict]], shape: Sequence[int]) -> np.ndarray:
    """Labels of an ensemble from each member's per-stage probabilities (each inside its own crop).

    Outside a member's crop its probability is background 1, which is what its cascade decided there."""
    stages = [s for s in STAGES if all(s in m for m in members)]
    if "organ" not in stages:
        raise AutosegError("ensemble members must all have organ probabilities")
    labels = np.zeros(shape, dtype=np.int16)
    for stage in stages:
        classes = members[0][stage]["classes"]
        if any(m[stage]["classes"] != classes for m in members):
            raise AutosegError(f"ensemble members predict different {stage} classes")
        boxes = np.asarray([m[stage]["bbox"] for m in members])
        box = [[int(boxes[:, a, 0].min()), int(boxes[:, a, 1].max())] for a in range(3)]
        acc = np.zeros((len(classes), *[hi - lo for lo, hi in box]), dtype=np.float32)
        for m in members:
            local = tuple(slice(lo - b[0], hi - b[0]) for (lo, hi), b in zip(m[stage]["bbox"], box))
            acc[0] += 1.0
            acc[0][local] -= 1.0
            acc[(slice(None), *local)] += m[stage]["p"]
        lut = np.asarray(classes, dtype=np.int16)
        stage_labels = lut[acc.argmax(0)]
        region = labels[tuple(slice(lo, hi) for lo, hi in box)]
        if stage == "organ":
            region[...] = stage_labels
        else:
            hit = stage_labels > 0
            region[hit] = stage_labels[hit]
    return labels


def ensemble_folders(inputs: Sequence[Path], output: Path, rules: dict | None = None,
                     cases: Sequence[str] | None = None) -> list[str]:
    """Fuse the predictions of several folders (``CASE.nii.gz`` + ``CASE.npz`` each) into ``output``;
    returns the cases written. The first folder's masks give each case's geometry."""
    from autoseg.io import read_header, write_image
    from autoseg.inference.postprocessing import apply_postprocessing

    inputs = [Path(p) for p in inputs]
    if cases is None:
        cases = sorted(p.name[: -len(".npz")] for p in inputs[0].glob("*.npz"))
    output.mkdir(parents=True, exist_ok=True)
    done = []
    for cid in cases:
        mask = inputs[0] / f"{cid}.nii.gz"
        try:
            geo = read_header(mask)
            labels = fuse_members([_load_probabilities(d / f"{cid}.npz") for d in inputs], geo.shape)
        except AutosegError as e:
            log.error("%s: not ensembled: %s", cid, e)
            continue
        if rules:
            labels = apply_postprocessing(labels, rules, geo.spacing)
        write_image(labels, geo, output / f"{cid}.nii.gz")
        done.append(cid)
    return done


def ensemble_name(names: Sequence[str]) -> str:
    return "ensemble__" + "__".join(names)


def evaluate_ensemble(cvs: Sequence[CrossValidation], progress: bool = True) -> dict:
    """Cross-validation of the ensemble of already cross-validated configurations."""
    first = cvs[0]
    name = ensemble_name([c.name for c in cvs])
    folder = cv_folder(first.results_dataset, name)
    summaries = [load_json(c.folder / "summary.json") for c in cvs]
    case_fold = summaries[0]["case_fold"]
    raw_dir, pp_dir, gt_dir = folder / "predictions", folder / "postprocessed", folder / "gt"
    import shutil

    for d in (raw_dir, pp_dir, gt_dir):
        shutil.rmtree(d, ignore_errors=True)
    ensemble_folders([c.folder / "predictions" for c in cvs], raw_dir, cases=sorted(case_fold))
    link_ground_truth(first.raw, case_fold, gt_dir)
    rules = learn_rules_from_folders(raw_dir, gt_dir, sorted(case_fold), first.foreground_labels)
    apply_rules_to_folder(raw_dir, pp_dir, rules)
    from autoseg.evaluation.folder import evaluate_folder

    out = {"config": name, "members": [c.name for c in cvs], "dataset": first.plans["dataset_name"],
           "num_folds": len(first.folds), "case_fold": case_fold, "postprocessing": rules.get("rules", {})}
    for key, d in (("before_postprocessing", raw_dir), ("after_postprocessing", pp_dir)):
        ev = folder / f"evaluation_{key.split('_')[0]}"
        s = evaluate_folder(gt_dir, d, ev, labels=first.plans["labels"], tolerances=first.tolerances,
                            num_workers=first.num_workers if len(case_fold) >= 8 else 1, progress=False)
        out[key] = fold_statistics(s, ev / "metrics.csv", case_fold)
    save_json({"source": f"cross-validation of {name}", **rules}, folder / "postprocessing.json")
    save_json(out, folder / "summary.json")
    return out


def candidate_trainers(results_dataset: Path, stages: Sequence[str]) -> list[str]:
    """Trainer names with a folder in every planned stage (cross-validation may still be incomplete)."""
    per_stage = [{p.name for p in (results_dataset / s).iterdir() if p.is_dir()}
                 if (results_dataset / s).is_dir() else set() for s in stages]
    return sorted(set.intersection(*per_stage)) if per_stage else []


def find_best_configuration(task: str | int, trainers: Sequence[str] | None = None, ensembles: bool = True,
                            progress: bool = True, **kwargs) -> dict:
    """Cross-validate every complete configuration and their pairwise ensembles; pick the best."""
    from autoseg.inference.models import resolve_dataset_dir
    from autoseg.paths import find_dataset_folder, preprocessed_root
    from autoseg.plans import load_plans

    ds = resolve_dataset_dir(task, kwargs.get("results"))
    plans = load_plans(find_dataset_folder(task, preprocessed_root(kwargs.get("preprocessed"))) / "plans.json")
    names = list(trainers) if trainers else candidate_trainers(ds, list(plans["stages"]))
    cvs, skipped = [], {}
    for name in names:
        try:
            cvs.append(CrossValidation(task, name, **kwargs))
        except AutosegError as e:
            skipped[name] = str(e)
            log.warning("%s skipped: %s", name, e)
    if not cvs:
        raise AutosegError(f"{ds}: no configuration with a complete cross-validation "
                           f"({'; '.join(skipped.values()) or 'no trainer folders'})")
    results = {cv.name: cv.run(progress=progress) for cv in cvs}
    if ensembles and len(cvs) > 1:
        for pair in itertools.combinations(cvs, 2):
            s = evaluate_ensemble(pair, progress)
            results[s["config"]] = s
    scores = {n: s["after_postprocessing"]["mean_dsc"] for n, s in results.items()}
    best = max(scores, key=lambda n: scores[n])
    members = results[best].get("members", [best])
    out = {"dataset": plans["dataset_name"], "best": best, "members": members, "mean_dsc": scores,
           "skipped": skipped, "commands": inference_commands(task, members, ds, best)}
    save_json(out, ds / "crossval" / "best_configuration.json")
    return out


def inference_commands(task: str | int, members: Sequence[str], ds: Path, best: str) -> list[str]:
    """What a user types to predict with the chosen configuration (every fold, CV postprocessing)."""
    if len(members) == 1:
        return [f"autoseg run_inference -i INPUT_FOLDER -o OUTPUT_FOLDER -t {task} -tr {members[0]}"]
    cmds = [f"autoseg run_inference -i INPUT_FOLDER -o OUTPUT_FOLDER_{m} -t {task} -tr {m} --save-probabilities"
            for m in members]
    cmds.append(f"autoseg ensemble -i {' '.join(f'OUTPUT_FOLDER_{m}' for m in members)} -o OUTPUT_FOLDER "
                f"-pp {ds / 'crossval' / best / 'postprocessing.json'}")
    return cmds


def format_best(result: dict, summaries: dict[str, dict] | None = None) -> str:
    lines = ["configuration                          mean DSC (cross-validation, after postprocessing)"]
    for name, score in sorted(result["mean_dsc"].items(), key=lambda kv: -kv[1]):
        lines.append(f"{name:38s} {score:.4f}" + ("   <- best" if name == result["best"] else ""))
    for name, why in result["skipped"].items():
        lines.append(f"{name}: skipped ({why})")
    lines.append("\nto predict with it:")
    lines.extend(f"  {c}" for c in result["commands"])
    return "\n".join(lines)


def load_rules_file(path: str | os.PathLike | None) -> dict | None:
    return load_json(Path(path)) if path else None
