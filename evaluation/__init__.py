"""Segmentation metrics with the FLARE rules: DSC, NSD (surface dice at a tolerance), HD95, folder evaluation.

There is one implementation of each metric; the trainer, postprocessing, the demo and ``autoseg
evaluate`` all import it from here.
"""
from autoseg.evaluation.folder import evaluate_folder, labels_from_dataset_json
from autoseg.evaluation.metrics import compute_metrics, dice, score_class
from autoseg.evaluation.summary import format_summary_table
from autoseg.evaluation.surface import robust_hausdorff, surface_dice, surface_distances
from autoseg.evaluation.tolerances import PRESETS, TolerancePreset, canonical_organ, get_preset

__all__ = ["compute_metrics", "dice", "score_class", "evaluate_folder", "format_summary_table",
           "labels_from_dataset_json", "surface_distances", "surface_dice", "robust_hausdorff",
           "PRESETS", "TolerancePreset", "canonical_organ", "get_preset"]
