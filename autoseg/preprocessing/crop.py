"""Bounding boxes: crop to the body, boxes around label masks plus a margin in mm.

A bbox is ``[[z0, z1], [y0, y1], [x0, x1]]``: half-open, in voxel indices of the array it was computed
on. Preprocessing and inference crop with the same functions so a model sees at test time exactly the
kind of crop it was trained on.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

BBox = list[list[int]]

BODY_THRESHOLD_HU = -500.0


def full_bbox(shape: Sequence[int]) -> BBox:
    return [[0, int(s)] for s in shape]


def bbox_of_mask(mask: np.ndarray) -> BBox | None:
    """Tight bbox of the nonzero voxels, or None for an empty mask (cheap: one projection per axis)."""
    if mask.dtype != np.bool_:
        mask = mask != 0
    out: BBox = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=others))
        if idx.size == 0:
            return None
        out.append([int(idx[0]), int(idx[-1]) + 1])
    return out


def union_bbox(a: BBox | None, b: BBox | None) -> BBox | None:
    if a is None:
        return b
    if b is None:
        return a
    return [[min(p[0], q[0]), max(p[1], q[1])] for p, q in zip(a, b)]


def bbox_shape(bbox: BBox) -> list[int]:
    return [int(hi - lo) for lo, hi in bbox]


def label_bboxes(lab: np.ndarray, slab: int = 16) -> dict[int, BBox]:
    """Bbox of every nonzero label value, scanning ``slab`` slices at a time (bounded memory: one
    boolean slab, where ``scipy.ndimage.find_objects`` copies the whole volume)."""
    found: dict[int, list] = {}
    for a in range(0, lab.shape[0], slab):
        sl = np.asarray(lab[a:a + slab])
        for v in np.unique(sl).tolist():
            if v == 0:
                continue
            m = sl == v
            z = np.flatnonzero(m.any(axis=(1, 2)))
            y, x = m.any(axis=(0, 2)), m.any(axis=(0, 1))
            if v not in found:
                found[v] = [a + int(z[0]), a + int(z[-1]) + 1, y, x]
            else:
                f = found[v]
                f[1] = a + int(z[-1]) + 1
                f[2] = f[2] | y
                f[3] = f[3] | x
    out = {}
    for v, (z0, z1, y, x) in found.items():
        yi, xi = np.flatnonzero(y), np.flatnonzero(x)
        out[int(v)] = [[z0, z1], [int(yi[0]), int(yi[-1]) + 1], [int(xi[0]), int(xi[-1]) + 1]]
    return out


def crop_array(arr: np.ndarray, bbox: BBox) -> np.ndarray:
    """View of ``arr`` (…, Z, Y, X) inside ``bbox`` (no copy)."""
    sl = tuple(slice(lo, hi) for lo, hi in bbox)
    return arr[(Ellipsis, *sl)]


def _downsample_factors(shape: Sequence[int], factor: int) -> list[int]:
    # Thin axes (a few thick slices) are not subsampled: a 4x step could skip the whole body.
    return [factor if s >= 16 * factor else 1 for s in shape]


def crop_to_body(image: np.ndarray, threshold: float = BODY_THRESHOLD_HU, factor: int = 4) -> BBox:
    """Bbox of the largest connected region brighter than ``threshold`` HU (the patient, not the air).

    Works on a strided view (every ``factor``-th voxel) so it costs a few ms even on 512x512x800
    volumes; the box is widened by one step on each side to cover the voxels skipped. When nothing
    exceeds the threshold (not CT, or an all-air phantom) the whole image is kept.
    """
    body, steps = body_component(image, threshold, factor)
    if body is None:
        return full_bbox(image.shape)
    box = bbox_of_mask(body)
    assert box is not None  # the largest component is non-empty by construction
    return [[max(0, lo * st - st), min(int(n), hi * st + st)]
            for (lo, hi), st, n in zip(box, steps, image.shape)]


def body_component(image: np.ndarray, threshold: float = BODY_THRESHOLD_HU,
                   factor: int = 4) -> tuple[np.ndarray | None, list[int]]:
    """The largest region brighter than ``threshold`` on the strided grid (voxel ``i`` of it is voxel
    ``i * step`` of the image), and the steps; None when nothing exceeds the threshold."""
    import cc3d

    steps = _downsample_factors(image.shape, factor)
    small = image[:: steps[0], :: steps[1], :: steps[2]] > threshold
    if not small.any():
        return None, steps
    labels = cc3d.connected_components(small.astype(np.uint8), connectivity=26)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return labels == int(np.argmax(counts)), steps


def margin_voxels(spacing_zyx: Sequence[float], margin_mm: Sequence[float] | float) -> list[int]:
    m = [float(margin_mm)] * 3 if isinstance(margin_mm, (int, float)) else [float(v) for v in margin_mm]
    return [int(math.ceil(mm / float(sp) - 1e-6)) for mm, sp in zip(m, spacing_zyx)]


def bbox_with_margin(mask_or_bbox: np.ndarray | BBox, spacing_zyx: Sequence[float],
                     margin_mm: Sequence[float] | float, shape: Sequence[int]) -> BBox:
    """Bbox of a mask (or a given bbox) grown by ``margin_mm`` per axis and clipped to ``shape``.

    An empty mask gives the whole image: when the ROI model finds nothing, the next stage must look
    everywhere rather than nowhere.
    """
    if isinstance(mask_or_bbox, np.ndarray):
        box = bbox_of_mask(mask_or_bbox)
        if box is None:
            return full_bbox(shape)
    else:
        box = [[int(lo), int(hi)] for lo, hi in mask_or_bbox]
    mv = margin_voxels(spacing_zyx, margin_mm)
    return [[max(0, lo - m), min(int(n), hi + m)] for (lo, hi), m, n in zip(box, mv, shape)]
