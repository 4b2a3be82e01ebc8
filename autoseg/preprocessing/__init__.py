"""Preprocessing shared by training and inference: crop, resample, normalise, and the .npz cache.

Inference imports the same functions (on any torch device) so test-time inputs match training.
Names are resolved lazily so that numpy-only users (the fingerprint's worker processes) do not pay
for importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "autoseg.preprocessing.resample": ("resample_image", "resample_labels", "resample_logits", "compute_new_shape",
                                       "needs_anisotropic"),
    "autoseg.preprocessing.normalize": ("normalize_ct", "normalize_zscore", "normalize"),
    "autoseg.preprocessing.crop": ("crop_to_body", "bbox_with_margin", "bbox_of_mask", "crop_array", "full_bbox",
                                   "margin_voxels", "union_bbox"),
    "autoseg.preprocessing.cache": ("case_paths", "is_valid", "load_case", "stage_hash"),
    "autoseg.preprocessing.preprocessor": ("preprocess_case", "preprocess_dataset", "stage_bbox"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'autoseg.preprocessing' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
