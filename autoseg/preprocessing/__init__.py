"""Preprocessing shared by training and inference: crop, resample, normalise, and the .npz cache.

Inference imports the same functions (on any torch device) so test-time inputs match training.
Names are resolved lazily so that numpy-only users (the fingerprint's worker processes) do not pay
for importing torch.
"""
from __future__ import annotations

from autoseg.utils import lazy_exports

_EXPORTS = {
    "autoseg.preprocessing.resample": ("resample_image", "resample_labels", "resample_logits", "compute_new_shape",
                                       "needs_anisotropic"),
    "autoseg.preprocessing.normalize": ("normalize_ct", "normalize_zscore", "normalize"),
    "autoseg.preprocessing.crop": ("crop_to_body", "bbox_with_margin", "bbox_of_mask", "crop_array", "full_bbox",
                                   "margin_voxels", "union_bbox"),
    "autoseg.preprocessing.cache": ("case_paths", "is_valid", "load_case", "stage_hash"),
    "autoseg.preprocessing.preprocessor": ("preprocess_case", "preprocess_dataset", "stage_bbox"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
