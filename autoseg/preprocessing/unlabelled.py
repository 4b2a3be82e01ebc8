"""Unlabelled images (``imagesUnlabeled/``) preprocessed like test images, for semi-supervised trainers.

Caches go to ``<preprocessed>/<Dataset>/unlabelled/<stage>/CASE.{npz,json}`` (apart from the training
cases, so splits and ordinary trainers never see them), with every label voxel -1 and
``"unlabelled": true`` in the json. The roi stage is cut at the body, as at inference. The organ and
tumour crops come from a trained model's prediction of the image (foreground box + the roi margin,
host-organ box + the tumour margin: what the cascade crops at inference); before any model with an
organ stage exists they are the body crop. ``crop_source.json`` records which, and a rerun after a
model appears redoes the caches with model crops.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from autoseg.datasets import Case, RawDataset
from autoseg.preprocessing.crop import BBox, label_bboxes
from autoseg.preprocessing.preprocessor import preprocess_case
from autoseg.stage_graph import stage_order
from autoseg.utils import load_json, save_json

log = logging.getLogger(__name__)
UNLABELLED_DIR = "unlabelled"

CropBoxes = Callable[[Case], dict[int, BBox]]


def unlabelled_folder(dataset_folder: str | os.PathLike) -> Path:
    return Path(dataset_folder) / UNLABELLED_DIR


def unlabelled_case_ids(dataset_folder: str | os.PathLike, stage: str) -> list[str]:
    """Complete unlabelled caches of ``stage`` (the json is written last)."""
    d = unlabelled_folder(dataset_folder) / stage
    return sorted(p.stem for p in d.glob("*.json") if (d / f"{p.stem}.npz").is_file()) if d.is_dir() else []


def model_crop_boxes(dataset_name: str, results: str | os.PathLike | None = None,
                     device: str = "auto") -> tuple[CropBoxes | None, str]:
    """(boxes of a trained cascade's prediction, its description), or (None, "body") when no trainer
    folder of this dataset has an organ checkpoint yet. The first trainer (by name) with one is used."""
    from autoseg.paths import results_root

    organ_dir = results_root(results) / dataset_name / "organ"
    trainers = sorted(p.name for p in organ_dir.iterdir() if p.is_dir() and any(p.glob("fold_*/checkpoint_*.pt"))) \
        if organ_dir.is_dir() else []
    if not trainers:
        return None, "body"
    from autoseg.inference import CascadePredictor
    from autoseg.io import read_image

    predictor = CascadePredictor.from_results(dataset_name, trainers[0], results=results, device=device)
    stamp = sorted(str(c) + f"@{c.stat().st_mtime:.0f}" for sm in predictor.stages.values() for c in sm.checkpoints)

    def boxes(case: Case) -> dict[int, BBox]:
        image, geo = read_image(case.images[0])
        return label_bboxes(predictor.predict_array(image, geo.spacing))

    return boxes, f"model {trainers[0]}: " + ", ".join(stamp)


def preprocess_unlabelled(ds: RawDataset, plans: dict, folder: str | os.PathLike, stages: list[str] | None = None,
                          crop_boxes: CropBoxes | None = None, crop_source: str = "body",
                          progress: bool = True) -> int:
    """Cache every image of ``imagesUnlabeled/``; returns how many there are. One process: predicting
    crops with a model is already parallel inside torch."""
    if not ds.unlabelled:
        return 0
    from tqdm import tqdm

    out = unlabelled_folder(folder)
    planned = [s for s in stage_order(plans) if stages is None or s in stages]
    marker = out / "crop_source.json"
    force = marker.is_file() and load_json(marker).get("source") != crop_source
    if force:
        log.info("unlabelled crops now come from %s: redoing their caches", crop_source)
    for case in tqdm(ds.unlabelled, desc="unlabelled", unit="case", disable=not progress):
        boxes = crop_boxes(case) if crop_boxes is not None else {}
        preprocess_case(Case(case.case_id, case.images), plans, out, planned, force=force, crop_boxes=boxes)
    save_json({"source": crop_source, "num_cases": len(ds.unlabelled)}, marker)
    log.info("%d unlabelled image(s) cached in %s (crops: %s)", len(ds.unlabelled), out, crop_source.split(":")[0])
    return len(ds.unlabelled)

