"""Boxes the predictor reads off masks: on the mask's device (no copy), or from its main components."""
from __future__ import annotations

import cc3d
import numpy as np
import torch

from autoseg.preprocessing.crop import BBox, bbox_of_mask


def main_components_bbox(mask: np.ndarray, fraction: float) -> BBox | None:
    """Bbox of the mask's 26-connected components holding at least ``fraction`` of the largest one's voxels."""
    if not mask.any():
        return None
    comp, n = cc3d.connected_components(mask.astype(np.uint8, copy=False), connectivity=26, return_N=True)
    counts = np.bincount(comp.ravel(), minlength=n + 1)
    counts[0] = 0
    keep = counts >= fraction * counts.max()
    keep[0] = False
    return bbox_of_mask(keep[comp])


def device_bbox(mask: torch.Tensor) -> BBox | None:
    """Tight bbox of a boolean (Z, Y, X) tensor on its device; None if empty."""
    out = []
    for axis in range(3):
        proj = mask.any(dim=tuple(a for a in range(3) if a != axis))
        idx = torch.nonzero(proj).flatten()
        if idx.numel() == 0:
            return None
        out.append([int(idx[0]), int(idx[-1]) + 1])
    return out
