"""Training augmentation: a per-sample spatial transform fused with patch cropping, then batchgeneratorsv2.

The pipeline follows nnU-Net's recipe (rotation, scaling, optional elastic deformation, noise, blur,
brightness, contrast, low-resolution simulation, gamma, mirroring) with one structural change for speed.
nnU-Net cuts an enlarged region from every case (large enough for any rotation/scale, ~10x the patch
volume) and interpolates all of it through the spatial transform. Here the spatial parameters are drawn
*before* cutting: the ~2/3 of samples that are neither rotated nor scaled are cut at the final size with
no interpolation, and the rest read only the bounding box their own transform touches and are resampled
with one affine interpolation (``scipy.ndimage.affine_transform``, linear for images, nearest for labels).
The intensity transforms and mirroring are batchgeneratorsv2's (nnU-Net v2's, on torch tensors, one
sample at a time); benchmarks/bench_augmentation.py measures both steps against the libraries'
alternatives. Every knob lives in ``AugmentationConfig`` so a trainer subclass changes one field, not
the pipeline.

Patches with a much coarser z than in-plane extent are augmented "2D-style" (nnU-Net's dummy-2D
augmentation): rotation and scaling are in-plane only, so thick slices are never interpolated across.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from scipy import ndimage

IGNORE_LABEL = -1
ANISOTROPY_RATIO = 3.0


@dataclass
class AugmentationConfig:
    """Probabilities are per sample; angles in degrees; ranges are (low, high)."""

    rotation_deg: float = 30.0
    p_rotation: float = 0.2
    scale: tuple[float, float] = (0.7, 1.4)
    p_scale: float = 0.2
    elastic: bool = False
    elastic_alpha: tuple[float, float] = (0.0, 200.0)
    elastic_sigma: tuple[float, float] = (9.0, 13.0)
    p_elastic: float = 0.2
    image_order: int = 1
    p_noise: float = 0.1
    noise_variance: tuple[float, float] = (0.0, 0.1)
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    p_lowres: float = 0.25
    lowres_zoom: tuple[float, float] = (0.5, 1.0)
    p_gamma: float = 0.3
    p_gamma_inverted: float = 0.1
    gamma: tuple[float, float] = (0.7, 1.5)
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    dummy_2d: bool | None = None  # None: decided from the patch size and spacing
    extra: dict = field(default_factory=dict)

    def with_changes(self, **changes) -> "AugmentationConfig":
        return replace(self, **changes)


def is_anisotropic(patch_size: Sequence[int], spacing: Sequence[float] | None = None) -> bool:
    """True when z is so much coarser (spacing) or shorter (patch) than in-plane that 3D rotation harms."""
    if spacing is not None and max(spacing[1:]) > 0 and spacing[0] / max(spacing[1:]) > ANISOTROPY_RATIO:
        return True
    return max(patch_size[1:]) / patch_size[0] > ANISOTROPY_RATIO


def use_dummy_2d(cfg: AugmentationConfig, patch_size: Sequence[int], spacing: Sequence[float] | None) -> bool:
    return is_anisotropic(patch_size, spacing) if cfg.dummy_2d is None else bool(cfg.dummy_2d)


def _rotation(axis: int, angle: float) -> np.ndarray:
    """Rotation in the plane of the two axes other than ``axis`` (array axes z=0, y=1, x=2)."""
    i, j = [a for a in range(3) if a != axis]
    m = np.eye(3)
    c, s = math.cos(angle), math.sin(angle)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


@dataclass
class SpatialParams:
    """One sample's transform: input offset = ``matrix`` @ output offset (+ ``displacement``)."""

    matrix: np.ndarray
    displacement: np.ndarray | None = None  # (3, *patch) elastic offsets in output voxels


class SpatialAugmenter:
    """Draws per-sample rotation/scale/elastic parameters and applies them while cutting the patch."""

    def __init__(self, patch_size: Sequence[int], cfg: AugmentationConfig | None = None,
                 spacing: Sequence[float] | None = None) -> None:
        self.patch = [int(p) for p in patch_size]
        self.cfg = cfg or AugmentationConfig()
        self.dummy_2d = use_dummy_2d(self.cfg, self.patch, spacing)

    def _scale(self) -> float:
        lo, hi = self.cfg.scale
        if np.random.uniform() < 0.5 and lo < 1:
            return float(np.random.uniform(lo, 1))
        return float(np.random.uniform(max(lo, 1), hi))

    def draw(self) -> SpatialParams | None:
        """Parameters for one sample, or None when it is only cut (no interpolation at all)."""
        cfg = self.cfg
        m, changed = np.eye(3), False
        if cfg.p_rotation > 0 and np.random.uniform() < cfg.p_rotation:
            a = math.radians(cfg.rotation_deg)
            for axis in ([0] if self.dummy_2d else [0, 1, 2]):
                m = _rotation(axis, np.random.uniform(-a, a)) @ m
            changed = True
        if cfg.p_scale > 0 and np.random.uniform() < cfg.p_scale:
            s = self._scale()
            m = m @ (np.diag([1.0, s, s]) if self.dummy_2d else np.eye(3) * s)
            changed = True
        disp = None
        if cfg.elastic and np.random.uniform() < cfg.p_elastic:
            alpha, sigma = np.random.uniform(*cfg.elastic_alpha), np.random.uniform(*cfg.elastic_sigma)
            axes = [1, 2] if self.dummy_2d else [0, 1, 2]
            disp = np.zeros((3, *self.patch), np.float32)
            for d in axes:
                noise = np.random.uniform(-1, 1, self.patch).astype(np.float32)
                disp[d] = ndimage.gaussian_filter(noise, sigma, mode="constant") * alpha
            changed = True
        return SpatialParams(m, disp) if changed else None

    def _offsets(self) -> np.ndarray:
        half = (np.asarray(self.patch, dtype=np.float64) - 1) / 2
        return np.indices(self.patch, dtype=np.float32).reshape(3, -1) - half[:, None].astype(np.float32)

    def input_box(self, center: Sequence[float], params: SpatialParams) -> tuple[list[int], list[int]]:
        """(start, size) of the smallest region of the case that this sample's transform reads."""
        half = (np.asarray(self.patch, dtype=np.float64) - 1) / 2
        reach = np.abs(params.matrix) @ half
        if params.displacement is not None:
            reach = reach + np.abs(params.matrix) @ np.abs(params.displacement).reshape(3, -1).max(1)
        lo = np.floor(np.asarray(center) - reach).astype(int) - 1
        hi = np.ceil(np.asarray(center) + reach).astype(int) + 2
        return lo.tolist(), (hi - lo).tolist()

    def apply(self, data: np.ndarray, seg: np.ndarray, params: SpatialParams,
              center: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """Resample (C, *region) arrays to (C, *patch) about ``center`` (region coordinates)."""
        half = (np.asarray(self.patch, dtype=np.float64) - 1) / 2
        offset = np.asarray(center, dtype=np.float64) - params.matrix @ half
        out_d = np.empty((data.shape[0], *self.patch), np.float32)
        out_s = np.empty((seg.shape[0], *self.patch), seg.dtype)
        order = self.cfg.image_order
        if params.displacement is None:
            for c in range(data.shape[0]):
                ndimage.affine_transform(data[c], params.matrix, offset, tuple(self.patch), out_d[c], order=order,
                                         mode="constant", cval=0.0, prefilter=order > 1)
            for c in range(seg.shape[0]):
                ndimage.affine_transform(seg[c], params.matrix, offset, tuple(self.patch), out_s[c], order=0,
                                         mode="constant", cval=IGNORE_LABEL)
            return out_d, out_s
        rel = self._offsets() + params.displacement.reshape(3, -1)
        coords = (params.matrix @ rel + np.asarray(center, dtype=np.float64)[:, None]).astype(np.float32)
        for c in range(data.shape[0]):
            out_d[c] = ndimage.map_coordinates(data[c], coords, order=order, mode="constant", cval=0.0,
                                               prefilter=order > 1).reshape(self.patch)
        for c in range(seg.shape[0]):
            out_s[c] = ndimage.map_coordinates(seg[c], coords, order=0, mode="constant",
                                               cval=IGNORE_LABEL).reshape(self.patch)
        return out_d, out_s


def intensity_transforms(cfg: AugmentationConfig, dummy_2d: bool) -> list[BasicTransform]:
    """nnU-Net v2's noise, blur, brightness, contrast, low resolution and gamma, each with its probability."""
    steps = [
        (GaussianNoiseTransform(noise_variance=cfg.noise_variance, p_per_channel=1, synchronize_channels=True),
         cfg.p_noise),
        # benchmark=False: its FFT-vs-conv trial reruns for each new sigma (3x slower per patch, one thread)
        (GaussianBlurTransform(blur_sigma=cfg.blur_sigma, synchronize_channels=False, synchronize_axes=False,
                               p_per_channel=0.5, benchmark=False), cfg.p_blur),
        (MultiplicativeBrightnessTransform(multiplier_range=BGContrast(cfg.brightness), synchronize_channels=False,
                                           p_per_channel=1), cfg.p_brightness),
        (ContrastTransform(contrast_range=BGContrast((0.75, 1.25)), preserve_range=True, synchronize_channels=False,
                           p_per_channel=1), cfg.p_contrast),
        (SimulateLowResolutionTransform(scale=cfg.lowres_zoom, synchronize_channels=False, synchronize_axes=True,
                                        ignore_axes=(0,) if dummy_2d else None, allowed_channels=None,
                                        p_per_channel=0.5), cfg.p_lowres),
        (GammaTransform(gamma=BGContrast(cfg.gamma), p_invert_image=1, synchronize_channels=False, p_per_channel=1,
                        p_retain_stats=1), cfg.p_gamma_inverted),
        (GammaTransform(gamma=BGContrast(cfg.gamma), p_invert_image=0, synchronize_channels=False, p_per_channel=1,
                        p_retain_stats=1), cfg.p_gamma),
    ]
    return [RandomTransform(t, p) for t, p in steps if p > 0]


class PerSample:
    """Applies a batchgeneratorsv2 transform to each sample of a ``{"data", "seg"}`` numpy batch (the
    library works on single (C, *P) tensors); the batch comes back as numpy arrays."""

    def __init__(self, transform: BasicTransform) -> None:
        self.transform = transform

    def __call__(self, **batch: np.ndarray) -> dict:
        data, seg = [], []
        for d, s in zip(batch["data"], batch["seg"]):
            out = self.transform(image=torch.from_numpy(np.ascontiguousarray(d, dtype=np.float32)),
                                 segmentation=torch.from_numpy(np.ascontiguousarray(s)))
            data.append(out["image"])
            seg.append(out["segmentation"])
        return {**batch, "data": torch.stack(data).numpy(), "seg": torch.stack(seg).numpy()}


def training_transforms(patch_size: Sequence[int], cfg: AugmentationConfig | None = None,
                        spacing: Sequence[float] | None = None) -> PerSample:
    """Batch transforms after the spatial step: {"data": (B,C,*P) float32, "seg": (B,1,*P) int8}."""
    cfg = cfg or AugmentationConfig()
    transforms = intensity_transforms(cfg, use_dummy_2d(cfg, patch_size, spacing))
    if cfg.mirror_axes:
        transforms.append(MirrorTransform(allowed_axes=tuple(cfg.mirror_axes)))
    return PerSample(ComposeTransforms(transforms))


def validation_transforms() -> None:
    """None: validation patches are cut at the final size and left untouched."""
    return None
