"""nnU-Net v2's inference preprocessing and export resampling, on torch, for imported models.

An imported stage carries an ``nnunet`` block (``autoseg.nnunet.plans.imported_plans``); the predictor
then does what ``nnUNetv2_predict`` does, in nnU-Net's order: transpose (``transpose_forward``), crop to
the bounding box of non-zero voxels, normalise on the original grid (the scheme's own rule), resample
to the network spacing (spline order ``order``; with the separate-z rule, ``order`` in-plane and
``order_z`` along the low-resolution axis), sliding window, resample the logits back (order 1 / 0 by
default), argmax, paste into the crop box, transpose back.

Resampling is separable, as scipy's spline zoom (which nnU-Net calls through ``skimage.transform.resize``
with ``mode='edge'``, ``anti_aliasing=False``) is: one dense (n_out x n_in) weight matrix per axis
applied with a matrix product. For cubic splines the matrix folds in the B-spline prefilter (its
exact inverse as a two-sided exponential, truncated where it is below 1e-9) with edge-replicated
borders, so the result matches scipy's to float32 rounding. skimage clips each resized image to the
input's range; nnU-Net's separate-z path resizes slice by slice, so there the clip is per slice.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from autoseg import AutosegError
from autoseg.preprocessing.crop import BBox, bbox_of_mask, full_bbox
from autoseg.nnunet.plans import NNUNET_KEY

_POLE = math.sqrt(3.0) - 2.0  # the cubic B-spline prefilter's pole
_FIR = 16  # |pole|^16 < 1e-9


def nnunet_block(config: dict) -> dict | None:
    """The stage's ``nnunet`` block, or None for an autoseg-trained stage."""
    block = config.get(NNUNET_KEY)
    return block if isinstance(block, dict) else None


def nonzero_box(image: np.ndarray) -> BBox:
    """nnU-Net's crop: the bounding box of voxels != 0 (hole filling does not change a box)."""
    return bbox_of_mask(image != 0) or full_bbox(image.shape)


def compute_new_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> list[int]:
    return [int(round(s / t * n)) for n, s, t in zip(shape, spacing, target)]


def separate_z_axis(current: Sequence[float], new: Sequence[float], opts: dict) -> int | None:
    """nnU-Net's rule: resample the low-resolution axis on its own when either grid is anisotropic
    (max/min spacing > threshold) and exactly one axis has the largest spacing."""
    force = opts.get("force_separate_z")
    thr = float(opts.get("anisotropy_threshold", 3.0))

    def lowres(sp: Sequence[float]) -> list[int]:
        return [i for i, s in enumerate(sp) if max(sp) / s == 1]

    if force is not None:
        axes = lowres(current) if force else []
    elif max(current) / min(current) > thr:
        axes = lowres(current)
    elif max(new) / min(new) > thr:
        axes = lowres(new)
    else:
        axes = []
    return axes[0] if len(axes) == 1 else None


def _cubic(x: np.ndarray) -> np.ndarray:
    a = np.abs(x)
    return np.where(a < 1, 2.0 / 3.0 - a ** 2 + a ** 3 / 2, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))


@lru_cache(maxsize=64)
def _axis_matrix_np(n_in: int, n_out: int, order: int) -> np.ndarray:
    """(n_out, n_in) weights of scipy's zoom (grid_mode=True, mode='nearest') along one axis."""
    u = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    w = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    if order == 0:
        np.add.at(w, (rows, np.clip(np.floor(u + 0.5).astype(int), 0, n_in - 1)), 1.0)
        return w
    base = np.floor(u).astype(int)
    if order == 1:
        frac = u - base
        np.add.at(w, (rows, np.clip(base, 0, n_in - 1)), 1.0 - frac)
        np.add.at(w, (rows, np.clip(base + 1, 0, n_in - 1)), frac)
        return w
    if order != 3:
        raise AutosegError(f"nnU-Net resampling order {order} is not supported (0, 1, 3)")
    m = np.arange(-_FIR, _FIR + 1)
    h = math.sqrt(3.0) * _POLE ** np.abs(m)  # inverse of the B-spline's (1, 4, 1)/6 sampling filter
    for t in range(-1, 3):
        coef = base + t  # spline coefficient index (may lie outside: edge-replicated signal)
        bw = _cubic(u - coef)
        for mm, hm in zip(m, h):
            np.add.at(w, (rows, np.clip(coef - mm, 0, n_in - 1)), bw * hm)
    return w


def axis_matrix(n_in: int, n_out: int, order: int, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(_axis_matrix_np(int(n_in), int(n_out), int(order))).float().to(device)


def _apply_axis(x: torch.Tensor, mat: torch.Tensor, dim: int) -> torch.Tensor:
    """Apply (n_out, n_in) ``mat`` along ``dim`` of x."""
    moved = x.movedim(dim, -1)
    return torch.matmul(moved, mat.T).movedim(-1, dim).contiguous()


def resample(x: torch.Tensor, new_shape: Sequence[int], current: Sequence[float], new: Sequence[float],
             opts: dict) -> torch.Tensor:
    """(C, Z, Y, X) float32 to ``new_shape`` as nnU-Net's ``resample_data_or_seg_to_shape`` (not segs)."""
    new_shape = [int(s) for s in new_shape]
    if list(x.shape[1:]) == new_shape:
        return x
    order, order_z = int(opts.get("order", 3)), int(opts.get("order_z", 0))
    axis = separate_z_axis(current, new, opts)
    clip = order != 0
    inplane = [d for d in range(3) if d != axis] if axis is not None else [0, 1, 2]
    # shrink the largest reductions first: less work for the axes that follow
    inplane.sort(key=lambda d: new_shape[d] / x.shape[d + 1])
    lo = hi = None
    if clip:
        if axis is None:
            lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
        else:
            others = tuple(d + 1 for d in range(3) if d != axis)
            lo, hi = x.amin(dim=others, keepdim=True), x.amax(dim=others, keepdim=True)
    for d in inplane:
        if x.shape[d + 1] != new_shape[d]:
            x = _apply_axis(x, axis_matrix(x.shape[d + 1], new_shape[d], order, x.device), d + 1)
    if clip:
        x = torch.maximum(torch.minimum(x, hi), lo)
    if axis is not None and x.shape[axis + 1] != new_shape[axis]:
        x = _apply_axis(x, axis_matrix(x.shape[axis + 1], new_shape[axis], order_z, x.device), axis + 1)
    return x


def normalise(x: torch.Tensor, norm: dict) -> torch.Tensor:
    """(C, Z, Y, X) float32, nnU-Net's scheme for channel 0, in place where possible."""
    scheme = norm["scheme"]
    if scheme == "CTNormalization":
        x.clamp_(norm["percentile_00_5"], norm["percentile_99_5"])
        return x.sub_(norm["mean"]).div_(max(norm["std"], 1e-8))
    if scheme == "ZScoreNormalization":
        if norm.get("use_mask"):
            from scipy.ndimage import binary_fill_holes

            mask = torch.from_numpy(binary_fill_holes((x[0] != 0).cpu().numpy())).to(x.device)
            vals = x[0][mask].double()
            if vals.numel():
                mean, std = float(vals.mean()), float(vals.std(unbiased=False))
                x[0][mask] = ((x[0][mask] - mean) / max(std, 1e-8)).float()
            return x
        v = x.double()
        mean, std = float(v.mean()), float(v.std(unbiased=False))
        return x.sub_(mean).div_(max(std, 1e-8))
    if scheme == "RescaleTo01Normalization":
        x.sub_(float(x.min()))
        return x.div_(max(float(x.max()), 1e-8))
    if scheme == "NoNormalization":
        return x
    raise AutosegError(f"nnU-Net normalization '{scheme}' is not supported")


def prepare(crop: torch.Tensor, spacing: Sequence[float], block: dict, target: Sequence[float]) -> torch.Tensor:
    """The network input for a (1, Z, Y, X) crop of the (transposed) raw image: normalise, then resample."""
    x = crop.to(torch.float32, copy=True)
    x = normalise(x, block["normalization"])
    shape = compute_new_shape(x.shape[1:], spacing, target)
    return resample(x, shape, spacing, target, block["resampling_data"])


def logits_z_mode(block: dict, net_spacing: Sequence[float], spacing: Sequence[float]) -> str | None:
    """How the slab resampler treats z when bringing logits back: 'linear' (trilinear, nnU-Net's
    order 1 without separate z), 'nearest' (separate z along axis 0 with order_z 0), or None when
    nnU-Net's rule needs the general path (another order or low-resolution axis)."""
    opts = block["resampling_probabilities"]
    axis = separate_z_axis(net_spacing, spacing, opts)
    if int(opts.get("order", 1)) != 1:
        return None
    if axis is None:
        return "linear"
    if axis == 0 and int(opts.get("order_z", 0)) in (0, 1):
        return "nearest" if int(opts.get("order_z", 0)) == 0 else "linear"
    return None


def nearest_z_indices(n_in: int, n_out: int) -> torch.Tensor:
    """Source row per output row for scipy's order-0 zoom (nnU-Net's separate-z ``order_z = 0``)."""
    u = (torch.arange(n_out, dtype=torch.float64) + 0.5) * n_in / n_out - 0.5
    return torch.floor(u + 0.5).long().clamp(0, n_in - 1)
