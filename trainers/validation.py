"""End-of-training validation: sliding-window prediction of the fold's held-out cases.

``validate_cases(cases, predictor, stage folder, labels, tolerances)`` is the trainer-independent core:
predictions are made on the cached (preprocessed) volumes and scored there, at the stage's target
spacing, against the cached labels mapped back to original label values; voxels marked -1 (not
annotated) are excluded from both maps, and a partially labelled case is scored only on the classes
it annotates. ``validate_fold`` runs it for a trainer's fold: each rank predicts its share of the cases; rank 0 merges the
metrics, writes ``validation/metrics.csv`` + ``summary.json`` and learns ``postprocessing.json``.
Prediction files are written on the stage grid (origin derived from the crop box), for viewing.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np
import torch

from autoseg.io import Geometry, read_image, write_image
from autoseg.utils import load_json, save_json
from autoseg.trainers import distributed as ddp
from autoseg.trainers.data import open_case_arrays
from autoseg.evaluation.partial import annotated_case_counts

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


Predictor = Callable[[np.ndarray], np.ndarray]  # cached volume (C,Z,Y,X) -> stage-local labels (Z,Y,X)


def network_predictor(network: torch.nn.Module, patch_size: Sequence[int], num_classes: int,
                      device: torch.device, mirror_axes: Sequence[int] | None = None,
                      amp: bool = False) -> Predictor:
    """A sliding-window argmax predictor of one network (deep supervision off while it predicts)."""
    from autoseg.inference.sliding_window import predict_sliding_window

    def predict(data: np.ndarray) -> np.ndarray:
        image = torch.from_numpy(np.asarray(data, dtype=np.float32)).to(device)
        was_ds = getattr(network, "deep_supervision", None)
        if was_ds is not None:
            network.deep_supervision = False
        network.eval()
        try:
            with torch.no_grad():
                logits = predict_sliding_window(network, image, list(patch_size), num_classes,
                                                mirror_axes=mirror_axes, amp=amp)
        finally:
            if was_ds is not None:
                network.deep_supervision = was_ds
        return logits.argmax(0).to(torch.int16).cpu().numpy()

    return predict


def case_labels(labels: Mapping[str, int], class_values: list[int], props: Mapping) -> dict[str, int]:
    """The classes to score in one case: all, or only those a partially labelled case annotates."""
    annotated = props.get("annotated_classes")
    if annotated is None:
        return dict(labels)
    keep = {class_values[i - 1] for i in annotated if 0 < i <= len(class_values)}
    return {n: v for n, v in labels.items() if v in keep}


def validate_cases(cases: Sequence[str], predict: Predictor, stage_dir: Path, labels: Mapping[str, int],
                   tolerances: str | float, out_dir: Path | None = None,
                   report: Callable[[str], None] = log.info,
                   case_input: Callable[[str, np.ndarray], np.ndarray] | None = None) -> dict[str, dict]:
    """Predict and score cached cases of one stage; any trainer (or script) can call it.

    Returns ``{case: {label value: metrics}}``. Voxels marked -1 (not annotated) are excluded from both
    maps and a partially labelled case is scored on the classes it annotates only. With ``out_dir``
    the predictions are written there on the stage grid. ``case_input(case, data)`` may replace the cached
    volume the predictor sees (a refinement stage's saliency channels).
    """
    from autoseg.evaluation.metrics import compute_metrics

    class_values = list(labels.values())
    per_case: dict[str, dict] = {}
    for case in cases:
        data, seg = open_case_arrays(stage_dir / f"{case}.npz")
        props = load_json(stage_dir / f"{case}.json")
        if case_input is not None:
            data = case_input(case, data)
        local_gt = np.asarray(seg[0])
        pred = to_original_labels(predict(data), class_values)
        gt = to_original_labels(local_gt, class_values)
        ignore = local_gt < 0
        pred[ignore] = 0
        gt[ignore] = 0
        spacing = [float(s) for s in props["spacing"]]
        if out_dir is not None:
            write_image(pred.astype(np.uint8 if pred.max() < 256 else np.int16),
                        stage_grid_geometry(props, pred.shape, spacing), out_dir / f"{case}.nii.gz")
        per_case[case] = compute_metrics(gt, pred, spacing, case_labels(labels, class_values, props), tolerances)
        mean_dsc = np.mean([m["dsc"] for m in per_case[case].values()]) if per_case[case] else float("nan")
        report(f"validation {case}: mean DSC {mean_dsc:.4f}")
    return per_case


def validate_fold(trainer: "Trainer") -> dict | None:
    """Predict and score this rank's share of the validation cases; rank 0 writes the merged results."""
    from autoseg.evaluation.folder import write_metrics_csv
    from autoseg.evaluation.summary import summarise
    from autoseg.evaluation.tolerances import get_preset, resolve_tolerances

    if str(trainer.fold) == "all":
        trainer.write_log("fold 'all' has no held-out cases: final validation skipped")
        return None
    out_dir = trainer.output_folder / "validation"
    stage_dir = trainer.dataset_folder / trainer.stage
    labels = dict(zip(trainer.class_names, trainer.class_values))
    per_case = validate_cases(trainer.val_cases[trainer.rank::trainer.world_size], trainer.validation_predictor(),
                              stage_dir, labels, trainer.validation_tolerances, out_dir, trainer.write_log,
                              getattr(trainer, "validation_input", None))
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
    summary.update(annotated_case_counts(merged, names))
    write_metrics_csv(out_dir / "metrics.csv", merged, names, tol)
    save_json(summary, out_dir / "summary.json")
    pairs = []  # rules are learned on fully labelled cases: elsewhere an unannotated class looks like an error
    for case in merged:
        if load_json(stage_dir / f"{case}.json").get("annotated_classes") is not None:
            continue
        pred, _ = read_image(out_dir / f"{case}.nii.gz")
        _, seg = open_case_arrays(stage_dir / f"{case}.npz")
        gt = to_original_labels(np.asarray(seg[0]), trainer.class_values)
        gt[np.asarray(seg[0]) < 0] = 0
        pairs.append((pred, gt))
    from autoseg.inference.postprocessing import learn_postprocessing

    rules = learn_postprocessing(pairs, trainer.class_values) if pairs else {"rules": {}, "num_cases": 0}
    save_json(rules, trainer.output_folder / "postprocessing.json")
    dsc = summary["mean"]["dsc"]
    trainer.write_log(f"validation of {len(merged)} cases: mean DSC {dsc if dsc is None else round(dsc, 4)}, "
                      f"NSD {summary['mean']['nsd']}; postprocessing rules {rules.get('rules')}")
    ddp.barrier()
    return summary
