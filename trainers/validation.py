"""End-of-training validation: sliding-window prediction of the fold's held-out cases.

Predictions are made on the cached (preprocessed) volumes and scored there, at the stage's target
spacing, against the cached labels mapped back to original label values; voxels marked -1 (not
annotated) are excluded from both maps. Each rank predicts its share of the cases; rank 0 merges the
metrics, writes ``validation/metrics.csv`` + ``summary.json`` and learns ``postprocessing.json``.
Prediction files are written on the stage grid (origin derived from the crop box), for viewing.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch

from autoseg.io import Geometry, read_image, write_image
from autoseg.utils import load_json, save_json
from autoseg.trainers import distributed as ddp
from autoseg.trainers.data import open_case_arrays

if TYPE_CHECKING:
    from autoseg.trainers.trainer import Trainer

log = logging.getLogger(__name__)


def stage_grid_geometry(props: dict, shape: tuple[int, ...], spacing: list[float]) -> Geometry:
    """Physical placement of a cached array: the crop box's corner in the original image, resampled
    edge-to-edge to ``spacing`` (voxel centres move by half the spacing change)."""
    orig = Geometry.from_dict(props["original_geometry"])
    direction = np.asarray(orig.direction, dtype=float).reshape(3, 3)
    start_zyx = np.array([b[0] for b in props.get("crop_bbox", [[0, 0]] * 3)], dtype=float)
    old_xyz = np.asarray(orig.spacing, dtype=float)[::-1]
    new_xyz = np.asarray(spacing, dtype=float)[::-1]
    offset_xyz = start_zyx[::-1] * old_xyz + (new_xyz - old_xyz) / 2
    origin = np.asarray(orig.origin, dtype=float) + direction @ offset_xyz
    return Geometry(tuple(float(s) for s in spacing), tuple(float(o) for o in origin), orig.direction,
                    tuple(int(s) for s in shape))


def to_original_labels(local: np.ndarray, class_values: list[int]) -> np.ndarray:
    lut = np.asarray([0] + list(class_values), dtype=np.int16)
    return lut[np.clip(local, 0, len(class_values))]


def predict_case(trainer: "Trainer", data: np.ndarray) -> np.ndarray:
    """Stage-local argmax labels of one cached volume."""
    from autoseg.inference.sliding_window import predict_sliding_window

    image = torch.from_numpy(np.asarray(data, dtype=np.float32)).to(trainer.device)
    logits = predict_sliding_window(trainer.network, image, trainer.patch_size, trainer.num_classes,
                                    mirror_axes=trainer.validation_mirror_axes,
                                    amp=trainer.amp_dtype is not None)
    return logits.argmax(0).to(torch.int16).cpu().numpy()


def validate_fold(trainer: "Trainer") -> dict | None:
    """Predict and score this rank's share of the validation cases; rank 0 writes the merged results."""
    from autoseg.evaluation.folder import write_metrics_csv
    from autoseg.evaluation.metrics import compute_metrics
    from autoseg.evaluation.summary import summarise
    from autoseg.evaluation.tolerances import get_preset, resolve_tolerances

    if str(trainer.fold) == "all":
        trainer.write_log("fold 'all' has no held-out cases: final validation skipped")
        return None
    out_dir = trainer.output_folder / "validation"
    stage_dir = trainer.dataset_folder / trainer.stage
    labels = dict(zip(trainer.class_names, trainer.class_values))
    net = trainer.network
    was_ds = getattr(net, "deep_supervision", None)
    if was_ds is not None:
        net.deep_supervision = False
    net.eval()
    per_case: dict[str, dict] = {}
    try:
        for case in trainer.val_cases[trainer.rank::trainer.world_size]:
            data, seg = open_case_arrays(stage_dir / f"{case}.npz")
            props = load_json(stage_dir / f"{case}.json")
            local_gt = np.asarray(seg[0])
            pred = to_original_labels(predict_case(trainer, data), trainer.class_values)
            gt = to_original_labels(local_gt, trainer.class_values)
            ignore = local_gt < 0
            pred[ignore] = 0
            gt[ignore] = 0
            spacing = [float(s) for s in props.get("spacing", trainer.spacing)]
            write_image(pred.astype(np.uint8 if pred.max() < 256 else np.int16),
                        stage_grid_geometry(props, pred.shape, spacing), out_dir / f"{case}.nii.gz")
            per_case[case] = compute_metrics(gt, pred, spacing, labels, trainer.validation_tolerances)
            mean_dsc = np.mean([m["dsc"] for m in per_case[case].values()]) if per_case[case] else float("nan")
            trainer.write_log(f"validation {case}: mean DSC {mean_dsc:.4f}")
    finally:
        if was_ds is not None:
            net.deep_supervision = was_ds
    merged: dict[str, dict] = {}
    for part in ddp.all_gather_objects(per_case):
        merged.update(part)
    if not trainer.is_main or not merged:
        ddp.barrier()
        return None
    merged = dict(sorted(merged.items()))
    names = {v: n for n, v in labels.items()}
    tol, _ = resolve_tolerances(names, trainer.validation_tolerances)
    summary = summarise(merged, names, tol, get_preset(trainer.validation_tolerances).name)
    write_metrics_csv(out_dir / "metrics.csv", merged, names, tol)
    save_json(summary, out_dir / "summary.json")
    pairs = []
    for case in merged:
        pred, _ = read_image(out_dir / f"{case}.nii.gz")
        _, seg = open_case_arrays(stage_dir / f"{case}.npz")
        gt = to_original_labels(np.asarray(seg[0]), trainer.class_values)
        gt[np.asarray(seg[0]) < 0] = 0
        pairs.append((pred, gt))
    from autoseg.inference.postprocessing import learn_postprocessing

    rules = learn_postprocessing(pairs, trainer.class_values)
    save_json(rules, trainer.output_folder / "postprocessing.json")
    dsc = summary["mean"]["dsc"]
    trainer.write_log(f"validation of {len(merged)} cases: mean DSC {dsc if dsc is None else round(dsc, 4)}, "
                      f"NSD {summary['mean']['nsd']}; postprocessing rules {rules.get('rules')}")
    ddp.barrier()
    return summary
