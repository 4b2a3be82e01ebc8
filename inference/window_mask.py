"""Which sliding windows a stage must compute: those touching the body, mapped into the stage's grid.

Windows in the air around a patient cost as much as windows through the liver and can only predict
background. The predictor already finds the body (the largest region above -500 HU, on a grid strided
by ``crop_to_body``); here that coarse mask is closed in-plane (lungs and bowel gas are inside the
body, not air to skip), grown by one coarse voxel (the voxels the stride skipped) and sampled, by
nearest neighbour, at the centre of every voxel of a stage's resampled crop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

from autoseg.preprocessing.crop import BBox, bbox_of_mask, body_component, crop_to_body, full_bbox


@dataclass
class CoarseBody:
    """The body on the strided grid (voxel ``i`` = image voxel ``i * step``), filled and dilated."""

    mask: np.ndarray
    steps: list[int]

    @classmethod
    def of(cls, image: np.ndarray) -> "CoarseBody | None":
        body, steps = body_component(image)
        if body is None:
            return None
        filled = np.stack([ndimage.binary_fill_holes(s) for s in body])  # axial: lungs stay inside
        return cls(ndimage.binary_dilation(filled, np.ones((3, 3, 3), bool)), steps)

    def in_grid(self, box: BBox, net_shape: Sequence[int], device: torch.device) -> torch.Tensor:
        """(Z, Y, X) bool mask of the stage grid ``net_shape`` that resamples image ``box``."""
        idx = []
        for (lo, hi), n, st, m in zip(box, net_shape, self.steps, self.mask.shape):
            centre = lo + (np.arange(n) + 0.5) * (hi - lo) / n - 0.5  # image coordinate of each voxel
            idx.append(np.clip(np.rint(centre / st).astype(np.int64), 0, m - 1))
        return torch.from_numpy(np.ascontiguousarray(self.mask[np.ix_(*idx)])).to(device)


@dataclass
class WindowScope:
    """One case's body mask, the frame the stages' boxes are in, and windows computed/skipped per stage."""

    body: CoarseBody | None = None
    origin: list[int] = field(default_factory=lambda: [0, 0, 0])  # the frame's first voxel in the image
    counts: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def for_case(cls, image: np.ndarray, skip: bool) -> tuple[BBox, "WindowScope"]:
        """The body crop of ``image`` and, with ``skip``, the scope that lets stages skip air windows."""
        if not skip:
            return crop_to_body(image), cls()
        body = CoarseBody.of(image)
        if body is None:
            return full_bbox(image.shape), cls()
        box = bbox_of_mask(body.mask)
        assert box is not None
        # crop_to_body's box: the component's coarse box widened by one step (the dilation's step)
        return [[lo * st, min(int(n), hi * st)]
                for (lo, hi), st, n in zip(box, body.steps, image.shape)], cls(body)

    def stage_mask(self, box: BBox, net_shape: Sequence[int], device: torch.device) -> torch.Tensor | None:
        """The body inside a stage's crop ``box`` (in the frame), on its network grid; None: no mask."""
        if self.body is None:
            return None
        return self.body.in_grid([[lo + o, hi + o] for (lo, hi), o in zip(box, self.origin)], net_shape, device)

    def stats(self, stage: str) -> dict:
        return self.counts.setdefault(stage, {"computed": 0, "skipped": 0})
