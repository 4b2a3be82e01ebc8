"""Is an image something the models can segment? Out-of-scope inputs get a warning naming the case
rather than a plausible-looking mask: a CT with no body in it gets an empty mask (the networks would
otherwise paint organs into air), and an image much smaller than a stage's patch (one slice, a tiny
crop) is segmented but flagged, since most of what the network sees is then padding."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

import numpy as np

from autoseg.preprocessing.crop import BODY_THRESHOLD_HU

if TYPE_CHECKING:
    from autoseg.inference.models import StageModel

log = logging.getLogger(__name__)
MIN_PATCH_FRACTION = 0.5  # warn when the image spans less than this fraction of a patch along an axis


def has_body(image: np.ndarray, intensity: dict) -> bool:
    """False only for CT (HU) images with no voxel above the body threshold: air or padding only.
    Every 4th row and column of every slice is enough to find a patient."""
    if intensity.get("scheme") != "ct":
        return True
    return bool((image[:, ::4, ::4] > BODY_THRESHOLD_HU).any() or (image > BODY_THRESHOLD_HU).any())


def small_axes(shape: Sequence[int], spacing: Sequence[float], patch_size: Sequence[int],
               target_spacing: Sequence[float]) -> list[str]:
    """Axes (z, y, x) along which the image covers less than MIN_PATCH_FRACTION of a patch (in mm)."""
    return [axis for axis, n, sp, p, tsp in zip("zyx", shape, spacing, patch_size, target_spacing)
            if n * sp < MIN_PATCH_FRACTION * p * tsp]


def warn_if_small(name: str, shape: Sequence[int], spacing: Sequence[float], stage: str,
                  patch_size: Sequence[int], target_spacing: Sequence[float]) -> str | None:
    """Log (and return) a warning naming the case when the image is too thin or small for ``stage``."""
    axes = small_axes(shape, spacing, patch_size, target_spacing)
    if not axes:
        return None
    size = " x ".join(f"{n * sp:.0f}" for n, sp in zip(shape, spacing))
    patch = " x ".join(f"{p * t:.0f}" for p, t in zip(patch_size, target_spacing))
    msg = (f"{name}: image ({'x'.join(map(str, shape))} voxels, {size} mm) covers less than half of the "
           f"{stage} model's patch ({patch} mm) along {', '.join(axes)}; it is padded and the mask may be "
           "unreliable")
    log.warning(msg)
    return msg


def in_scope(image: np.ndarray, spacing: Sequence[float], name: str, organ: "StageModel") -> bool:
    """False (with a warning) for a CT with no body: its mask is empty. Warns for images small for the
    organ model's patch, which are still segmented."""
    if not has_body(image, organ.plans["intensity"]):
        log.warning("%s: no body in the image (no voxel above %g HU): empty mask written", name, BODY_THRESHOLD_HU)
        return False
    warn_if_small(name, image.shape, spacing, "organ", organ.patch_size, organ.spacing)
    return True
