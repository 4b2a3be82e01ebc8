"""Folder evaluation: pair ground-truth and predicted label maps by case name and score them all.

Writes ``metrics.csv`` (one row per case and class, one column per metric) and ``summary.json``
(per-class mean, std and median, their mean over classes, missing and failed cases). Geometry is
checked from the headers before any voxel is read, so a prediction on the wrong grid stops the run at
once with the case named, instead of yielding silently wrong numbers; ``align`` resamples such
predictions onto the GT grid (nearest neighbour, by physical position) instead.
"""
from __future__ import annotations

import csv
import logging
import math
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from autoseg import AutosegError
from autoseg.io import IMAGE_SUFFIXES, Geometry, read_header, strip_suffix
from autoseg.utils import atomic_path, load_json, save_json
from autoseg.evaluation.metrics import METRIC_KEYS, compute_metrics, label_names
from autoseg.evaluation.summary import summarise
from autoseg.evaluation.partial import annotated_case_counts, drop_unannotated, find_labelled_classes
from autoseg.evaluation.tolerances import get_preset, resolve_tolerances

log = logging.getLogger(__name__)


def list_cases(folder: str | os.PathLike, what: str) -> dict[str, Path]:
    """Case id -> image file for every image file in ``folder`` (any suffix autoseg.io reads)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AutosegError(f"{folder}: {what} folder not found")
    cases: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name.endswith(IMAGE_SUFFIXES) and not p.name.startswith("."):
            cid = strip_suffix(p.name)
            if cid in cases:
                raise AutosegError(f"{folder}: case '{cid}' appears twice ({cases[cid].name}, {p.name})")
            cases[cid] = p
    return cases


def labels_from_dataset_json(path: str | os.PathLike) -> dict[int, str]:
    """Foreground labels (value -> name) of an nnU-Net dataset.json, v2 (name: value) or v1 (value: name)."""
    path = Path(path)
    raw = load_json(path).get("labels")
    if not isinstance(raw, dict) or not raw:
        raise AutosegError(f"{path}: no 'labels' mapping")
    out: dict[int, str] = {}
    for k, v in raw.items():
        try:
            value, name = (int(k), str(v)) if isinstance(v, str) else (int(v), str(k))
        except (TypeError, ValueError):
            raise AutosegError(f"{path}: label {k!r}: {v!r} is not an integer label") from None
        if value > 0:
            out[value] = name
    return out


def find_labels(gt_dir: Path) -> dict[int, str] | None:
    """Labels from a dataset.json beside the GT folder (its parent) or inside it; None if there is none."""
    for cand in (gt_dir.parent / "dataset.json", gt_dir / "dataset.json"):
        if cand.is_file():
            log.info("labels from %s", cand)
            return labels_from_dataset_json(cand)
    return None


def check_geometry(pairs: Iterable[tuple[str, Path, Path]]) -> tuple[list[str], dict[str, str]]:
    """Cases whose prediction is not on the GT grid, and cases whose headers cannot be read."""
    mismatched, failed = [], {}
    for cid, g, p in pairs:
        try:
            gg, pg = read_header(g), read_header(p)
        except AutosegError as e:
            failed[cid] = str(e)
            continue
        if not gg.same_grid(pg):
            mismatched.append(f"{p}: grid differs from {g.name} ({_grid_difference(pg, gg)})")
    return mismatched, failed


def _fmt(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in values) + ")"


def _grid_difference(pred: Geometry, gt: Geometry) -> str:
    """'shape (..) vs (..), origin (..) vs (..)': only the attributes that differ."""
    parts = [f"{k} {_fmt(getattr(pred, k))} vs {_fmt(getattr(gt, k))}"
             for k in ("shape", "spacing", "origin", "direction")
             if np.shape(getattr(pred, k)) != np.shape(getattr(gt, k))
             or not np.allclose(getattr(pred, k), getattr(gt, k), rtol=1e-4, atol=1e-4)]
    return ", ".join(parts) or "close on each attribute, but not within the grid tolerance"


def read_pair(gt_path: Path, pred_path: Path, align: bool) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """GT and prediction arrays on the GT grid, with the GT spacing (z, y, x)."""
    import SimpleITK as sitk

    from autoseg.integrity import has_nonfinite
    from autoseg.io import geometry_of, read_sitk

    gt_img, pred_img = read_sitk(gt_path), read_sitk(pred_path)
    for path, img in ((gt_path, gt_img), (pred_path, pred_img)):
        if has_nonfinite(path, sitk.GetArrayViewFromImage(img)):
            raise AutosegError(f"{path}: contains NaN or infinite values; a label map holds whole numbers")
    geo = geometry_of(gt_img)
    if not geo.same_grid(geometry_of(pred_img)):
        if not align:
            raise AutosegError(f"{pred_path}: grid differs from {gt_path} (use --align to resample)")
        pred_img = sitk.Resample(pred_img, gt_img, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                 pred_img.GetPixelID())
    return sitk.GetArrayFromImage(gt_img), sitk.GetArrayFromImage(pred_img), geo.spacing


def present_labels(*arrays: np.ndarray) -> dict[int, None]:
    """Positive integer values present in any of the arrays (cheap: max, then one bbox pass)."""
    from scipy import ndimage

    from autoseg.evaluation.metrics import as_label_array

    found: set[int] = set()
    for a in arrays:
        a = as_label_array(a)
        top = int(a.max()) if a.size else 0
        if top > 0:
            found.update(i + 1 for i, box in enumerate(ndimage.find_objects(a, max_label=top)) if box is not None)
    return {v: None for v in sorted(found)}


def read_gt_only(gt_path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """GT and an empty prediction on its grid: a missing or failed prediction scores as an empty mask."""
    from autoseg.io import read_image

    gt, geo = read_image(gt_path)
    return gt, np.zeros_like(gt), geo.spacing


def score_case(case_id: str, gt_path: Path, pred_path: Path | None, labels: Mapping[int, str | None] | None,
               tolerances: Any, align: bool) -> tuple[str, dict[int, dict[str, float]] | None, str | None]:
    """Worker: (case id, per-label metrics, None) or (case id, None, error message). Never raises.
    ``pred_path`` None scores the case as predicted empty (FLARE: 0 for every class the GT holds)."""
    try:
        gt, pred, spacing = read_pair(gt_path, pred_path, align) if pred_path is not None else read_gt_only(gt_path)
        case_labels = labels if labels is not None else present_labels(gt, pred)
        return case_id, compute_metrics(gt, pred, spacing, case_labels, tolerances), None
    except AutosegError as e:
        return case_id, None, str(e)
    except Exception as e:  # one broken case must not stop the others
        return case_id, None, f"{pred_path}: {type(e).__name__}: {e}"


def _quiet_worker() -> None:
    """The parent has already warned about tolerances; workers would repeat it on stderr."""
    logging.getLogger("autoseg.evaluation.tolerances").setLevel(logging.ERROR)


def _run_cases(jobs: list[tuple], num_workers: int, progress: bool) -> list[tuple]:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="evaluate", unit="case", disable=not progress)
    out = []
    try:
        if num_workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                out.append(score_case(*job))
                bar.update()
        else:
            # spawn: workers must not inherit a parent's torch/OpenMP thread state through fork
            ctx = mp.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(num_workers, len(jobs)), mp_context=ctx,
                                     initializer=_quiet_worker) as pool:
                for fut in as_completed([pool.submit(score_case, *job) for job in jobs]):
                    out.append(fut.result())
                    bar.update()
    finally:
        bar.close()
    return sorted(out, key=lambda r: r[0])


def write_metrics_csv(path: Path, per_case: Mapping[str, Mapping[int, Mapping[str, float]]],
                      names: Mapping[int, str], tol: Mapping[int, float]) -> None:
    """One row per case and class; undefined values (HD95 with one side empty) are written 'nan'."""
    with atomic_path(path, ".csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["case", "label", "name", "tolerance_mm", *METRIC_KEYS])
            for cid, res in per_case.items():
                for v in sorted(res):
                    w.writerow([cid, v, names[v], f"{tol[v]:g}",
                                *(_num(res[v][k]) for k in METRIC_KEYS)])


def _num(x: float) -> str:
    x = float(x)
    return "nan" if math.isnan(x) else format(x, ".10g")


def evaluate_folder(gt_dir: str | os.PathLike, pred_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                    labels: Mapping[str, int] | None = None, tolerances: str | float = "flare22",
                    align: bool = False, num_workers: int = 2, progress: bool = True,
                    labelled_classes: Mapping[str, Iterable[int]] | None = None) -> dict:
    """Score every prediction in ``pred_dir`` against the same-named label map in ``gt_dir``.

    Writes metrics.csv and summary.json to ``out_dir`` (default: ``default_out_dir(pred_dir)``) and
    returns the summary. ``labels`` (name -> value) defaults to the dataset.json beside ``gt_dir``,
    else to the values present, named ``label_<v>``. A GT case without a usable prediction (missing
    file, unreadable, wrong grid without ``align``... ) is scored as an empty prediction, so it
    counts 0 for each class its GT holds and is listed in ``scored_as_empty``; it is never dropped. ``labelled_classes``
    ({case: annotated label ids}, default: that dataset.json's) limits partially labelled cases to the
    classes they annotate.
    """
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(pred_dir)
    get_preset(tolerances)  # a bad preset fails before any case is read
    gt_cases, pred_cases = list_cases(gt_dir, "ground-truth"), list_cases(pred_dir, "prediction")
    common = sorted(set(gt_cases) & set(pred_cases))
    missing_pred = sorted(set(gt_cases) - set(pred_cases))
    missing_gt = sorted(set(pred_cases) - set(gt_cases))
    if not common:
        raise AutosegError(f"{pred_dir}: no prediction matches a case in {gt_dir} "
                           f"({len(pred_cases)} predictions, {len(gt_cases)} ground truths)")
    for what, ids in (("no prediction", missing_pred), ("no ground truth", missing_gt)):
        if ids:
            shown = ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else "")
            log.warning("%d case(s) with %s: %s", len(ids), what, shown)
    pairs = [(c, gt_cases[c], pred_cases[c]) for c in common]
    failed: dict[str, str] = {}
    if not align:
        mismatched, failed = check_geometry(pairs)
        if mismatched:
            more = f" (and {len(mismatched) - 1} more case(s))" if len(mismatched) > 1 else ""
            raise AutosegError(f"{mismatched[0]}{more}; rerun with --align to resample predictions onto the GT grid")
    names: dict[int, str | None] | None = label_names(labels) if labels is not None else find_labels(gt_dir)
    if names is not None:
        resolve_tolerances(names, tolerances)  # warns here, once, about names no preset organ matches
    jobs = [(c, g, p, names, tolerances, align) for c, g, p in pairs if c not in failed]
    per_case: dict[str, dict[int, dict[str, float]]] = {}
    for cid, res, err in _run_cases(jobs, num_workers, progress):
        if err is not None:
            log.warning("case %s: prediction not usable, scored as empty: %s", cid, err)
            failed[cid] = err
        else:
            per_case[cid] = res  # type: ignore[assignment]
    empty = sorted(set(missing_pred) | set(failed))
    for cid, res, err in _run_cases([(c, gt_cases[c], None, names, tolerances, align) for c in empty], 1, False):
        if err is not None:
            raise AutosegError(f"{gt_cases[cid]}: ground truth unreadable: {err}")
        per_case[cid] = res  # type: ignore[assignment]
    per_case = dict(sorted(per_case.items()))
    names = _complete_labels(per_case, names)
    drop_unannotated(per_case, labelled_classes if labelled_classes is not None else find_labelled_classes(gt_dir))
    tol, _ = resolve_tolerances(names, tolerances)
    summary = summarise(per_case, names, tol, get_preset(tolerances).name)
    summary.update(annotated_case_counts(per_case, names))
    summary.update({"gt_dir": str(gt_dir), "pred_dir": str(pred_dir), "out_dir": str(out_dir),
                    "missing_predictions": missing_pred, "missing_ground_truth": missing_gt,
                    "failed": dict(sorted(failed.items())), "scored_as_empty": empty,
                    "tolerance_warnings": tolerance_warnings(names, tolerances)})
    write_metrics_csv(out_dir / "metrics.csv", per_case, names, tol)
    save_json(summary, out_dir / "summary.json")
    return summary


def default_out_dir(pred_dir: Path) -> Path:
    """Evaluation output never lands among the predictions (a later run would read it as a case)."""
    return pred_dir.parent / f"{pred_dir.name}_evaluation"


def tolerance_warnings(names: Mapping[int, str], tolerances: str | float) -> list[str]:
    """A loud line when a per-organ preset matched none of the label names (every NSD would use the
    preset's default: usually labels named label_N because no dataset.json was found)."""
    preset = get_preset(tolerances)
    if not preset.per_organ or not names:
        return []
    from autoseg.evaluation.tolerances import canonical_organ

    if any(canonical_organ(n) in preset.per_organ for n in names.values()):
        return []
    msg = (f"tolerance preset {preset.name} matched none of the labels ({', '.join(list(names.values())[:6])}): "
           f"every NSD uses {preset.default_mm:g} mm; pass -t ID or --dataset-json to name the labels")
    log.warning(msg)
    return [msg]


def _complete_labels(per_case: dict[str, dict[int, dict[str, float]]],
                     names: Mapping[int, str | None] | None) -> dict[int, str]:
    """Name every label; where labels were discovered per case, a class absent from a case counts as
    empty in both maps there (FLARE: DSC = NSD = 1), exactly as if it had been listed up front."""
    if names is None:
        values = sorted({v for res in per_case.values() for v in res})
        names = {v: None for v in values}
        for res in per_case.values():
            for v in values:
                res.setdefault(v, {"dsc": 1.0, "nsd": 1.0, "hd95": 0.0, "volume_gt_mm3": 0.0, "volume_pred_mm3": 0.0})
    return {v: (n if n else f"label_{v}") for v, n in names.items()}
