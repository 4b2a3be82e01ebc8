"""Training input of a refinement stage: the saliency channels are ground-truth masks, degraded per
sample the way a coarse model errs (grown or shrunk by a few voxels, shifted, now and then missing),
so the network learns to correct a prediction rather than copy it; a share of samples keeps the clean
mask. Later in training, samples read the coarse stage's own predictions instead, undegraded
(``autoseg.trainers.saliency_schedule``, RSTN's modes).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from autoseg.stage_graph import stage_in_channels, stage_input


class SaliencyPerturbation:
    """Batch transform (``transform(**batch) -> batch``, as our loaders call them) on ``data[:, first_channel:]``."""

    def __init__(self, first_channel: int, p_clean: float = 0.25, max_radius: int = 3, max_shift: int = 4,
                 p_drop: float = 0.05) -> None:
        self.first, self.p_clean, self.max_radius = first_channel, p_clean, max_radius
        self.max_shift, self.p_drop = max_shift, p_drop

    def degrade(self, m: np.ndarray, rng: np.random.Generator | Any) -> np.ndarray:
        if rng.uniform() < self.p_drop:
            return np.zeros_like(m)
        size = 2 * int(rng.integers(0, self.max_radius + 1)) + 1
        if size > 1:
            m = (ndimage.maximum_filter if rng.uniform() < 0.5 else ndimage.minimum_filter)(m, size=size)
        shift = rng.integers(-self.max_shift, self.max_shift + 1, size=m.ndim)
        return ndimage.shift(m, shift, order=0, mode="constant", cval=0.0) if shift.any() else m

    def __call__(self, **batch: Any) -> dict:
        data = batch["data"]
        coarse = batch.pop("coarse", None)  # samples already reading a coarse prediction stay as they are
        rng = np.random.default_rng(np.random.randint(0, 2 ** 31))  # the worker's seeded global stream
        for b in range(data.shape[0]):
            if rng.uniform() < self.p_clean or (coarse is not None and coarse[b]):
                continue
            for c in range(self.first, data.shape[1]):
                data[b, c] = self.degrade(data[b, c], rng)
        return batch


def with_saliency_perturbation(transforms: Any, plans: dict, stage: str) -> Any:
    """``transforms`` with ``SaliencyPerturbation`` in front when ``stage`` reads saliency channels."""
    n_sal = len(stage_input(plans, stage).saliency_classes)
    if not n_sal:
        return transforms
    first = stage_in_channels(plans, stage) - n_sal
    return Chain([SaliencyPerturbation(first), *([ShieldSaliency(transforms, first)] if transforms is not None else [])])


class ShieldSaliency:
    """Runs the image transforms with the saliency channels carried as extra segmentation channels: they
    follow the spatial steps (mirroring) but not the intensity ones (noise, brightness, gamma...), which
    would turn a mask into something inference never feeds."""

    def __init__(self, transforms: Any, first_channel: int) -> None:
        self.transforms, self.first = transforms, first_channel

    def __call__(self, **batch: Any) -> dict:
        data, seg = batch["data"], batch["seg"]
        carried = np.concatenate([np.asarray(seg, np.float32), np.asarray(data[:, self.first:], np.float32)], 1)
        out = self.transforms(**{**batch, "data": np.ascontiguousarray(data[:, :self.first]), "seg": carried})
        s = np.asarray(out["seg"])
        return {**out, "data": np.concatenate([out["data"], s[:, seg.shape[1]:]], 1),
                "seg": np.rint(s[:, :seg.shape[1]]).astype(seg.dtype)}


class Chain:
    """Batch transforms applied in order (picklable, for loader workers)."""

    def __init__(self, transforms: list) -> None:
        self.transforms = transforms

    def __call__(self, **batch: Any) -> dict:
        for t in self.transforms:
            batch = t(**batch)
        return batch
