"""The predictor's side of imported nnU-Net models: the axis order nnU-Net works in and bringing the
logits back to the crop's grid with nnU-Net's export rule (``resampling_fn_probabilities``).

``CascadePredictor`` calls these only for a stage with an ``nnunet`` block; autoseg-trained stages
are untouched.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from autoseg.inference.fused_resample import SlabArgmaxResampler, channel_argmax
from autoseg.nnunet.preprocessing import logits_z_mode, nearest_z_indices, resample


def model_frame(image: np.ndarray, spacing: Sequence[float], block: dict) -> tuple[np.ndarray, list[float]]:
    """The image and spacing in nnU-Net's axis order (``transpose_forward``); a view, no copy."""
    tf = [int(a) for a in block.get("transpose_forward", [0, 1, 2])]
    if tf == [0, 1, 2]:
        return image, list(spacing)
    return image.transpose(tf), [float(spacing[a]) for a in tf]


def original_frame(labels: np.ndarray, block: dict) -> np.ndarray:
    tb = [int(a) for a in block.get("transpose_backward", [0, 1, 2])]
    return labels if tb == [0, 1, 2] else np.ascontiguousarray(labels.transpose(tb))


@lru_cache(maxsize=4)
def _gaussian(patch: tuple[int, ...]) -> torch.Tensor:
    from scipy.ndimage import gaussian_filter

    delta = np.zeros(patch)
    delta[tuple(p // 2 for p in patch)] = 1
    g = gaussian_filter(delta, [p / 8 for p in patch], 0, mode="constant", cval=0)
    g = torch.from_numpy(g / g.max() * 10).half()
    g[g == 0] = g[g > 0].min()
    return g.float()


def nnunet_gaussian(patch_size: Sequence[int]) -> torch.Tensor:
    """nnU-Net's sliding-window importance map: a Gaussian (sigma patch/8, truncated at 4 sigma) centred
    on voxel patch//2, scaled to 10 and stored in float16 with zeros raised to the smallest weight."""
    return _gaussian(tuple(int(p) for p in patch_size))


class NearestZResampler(SlabArgmaxResampler):
    """Bilinear in-plane, nearest along z (nnU-Net's separate-z export with ``order_z = 0``)."""

    def __init__(self, in_shape: Sequence[int], out: torch.Tensor, *args, **kwargs):
        super().__init__(in_shape, out, *args, **kwargs)
        idx = nearest_z_indices(self.in_shape[0], self.out_shape[0])
        self.i0 = self.i1 = idx.to(out.device)
        self.i0_list = self.i1_list = idx.tolist()
        self.w_dev = torch.zeros(len(idx), device=out.device)


class WholeVolumeResampler:
    """Any other export rule (another order, a low-resolution axis other than z): collect the logits,
    resample them with nnU-Net's rule in one go, then argmax. Costs the full-resolution logits in memory."""

    def __init__(self, in_shape: Sequence[int], out: torch.Tensor, num_classes: int, opts: dict,
                 net_spacing: Sequence[float], spacing: Sequence[float], probabilities: torch.Tensor | None = None,
                 lut: torch.Tensor | None = None):
        self.out, self.opts, self.lut, self.probs = out, opts, lut, probabilities
        self.net_spacing, self.spacing = list(net_spacing), list(spacing)
        self.logits = torch.empty((num_classes, *in_shape), dtype=torch.float32, device=out.device)
        self.received = 0

    def push(self, z0: int, z1: int, slab: torch.Tensor) -> None:
        self.logits[:, z0:z1] = slab.to(self.logits.device, torch.float32)
        self.received = z1
        if z1 == self.logits.shape[1]:
            full = resample(self.logits, list(self.out.shape), self.net_spacing, self.spacing, self.opts)
            idx = channel_argmax(full[None])[0]
            self.out[...] = self.lut[idx.long()] if self.lut is not None else idx.to(self.out.dtype)
            if self.probs is not None:
                self.probs[...] = torch.softmax(full, 0).to(self.probs.device, self.probs.dtype)
            del self.logits


def logits_resampler(block: dict, net_spacing: Sequence[float], spacing: Sequence[float], in_shape: Sequence[int],
                     out: torch.Tensor, num_classes: int, work_dtype: torch.dtype, budget_bytes: int,
                     probabilities: torch.Tensor | None, lut: torch.Tensor | None):
    """The slab resampler that reproduces nnU-Net's export for this case's spacing."""
    mode = logits_z_mode(block, net_spacing, spacing)
    if mode == "linear":
        return SlabArgmaxResampler(in_shape, out, num_classes, work_dtype, budget_bytes, probabilities, lut)
    if mode == "nearest":
        return NearestZResampler(in_shape, out, num_classes, work_dtype, budget_bytes, probabilities, lut)
    return WholeVolumeResampler(in_shape, out, num_classes, block["resampling_probabilities"], net_spacing, spacing,
                                probabilities, lut)
