"""U-Net topology from spacing and patch size: where to pool, which kernels, how many features.

nnU-Net's rules, written out: an axis is pooled only while its (current) spacing is at most
``anisotropy_ratio`` times the finest one and while the pooled map keeps at least ``min_feature_map``
voxels; its kernel is 1 while it is that much coarser (a thick-slice axis gets in-plane kernels
until the in-plane resolution has been pooled down to it), and 3 from then on.
"""
from __future__ import annotations

import math
from collections.abc import Sequence


def total_stride(strides: Sequence[Sequence[int]]) -> list[int]:
    out = [1, 1, 1]
    for s in strides:
        out = [a * b for a, b in zip(out, s)]
    return out


def _kernel(spacing: Sequence[float], ratio: float, seen_3: list[bool]) -> list[int]:
    finest = min(spacing)
    k = []
    for a in range(3):
        if spacing[a] <= ratio * finest:
            seen_3[a] = True
        k.append(3 if seen_3[a] else 1)
    return k


def get_topology(spacing: Sequence[float], patch_size: Sequence[int], features_start: int = 32,
                 max_features: int = 320, max_stages: int = 6, min_feature_map: int = 4,
                 anisotropy_ratio: float = 2.0) -> tuple[dict, list[int]]:
    """The network dict for ``patch_size`` at ``spacing`` and the patch rounded up to the total stride."""
    sp = [float(s) for s in spacing]
    size = [float(p) for p in patch_size]
    seen_3 = [False, False, False]
    strides = [[1, 1, 1]]
    kernels = [_kernel(sp, anisotropy_ratio, seen_3)]
    while len(strides) < max_stages:
        finest = min(sp)
        s = [2 if (sp[a] <= anisotropy_ratio * finest and size[a] / 2 >= min_feature_map) else 1 for a in range(3)]
        if s == [1, 1, 1]:
            break
        sp = [a * b for a, b in zip(sp, s)]
        size = [a / b for a, b in zip(size, s)]
        strides.append(s)
        kernels.append(_kernel(sp, anisotropy_ratio, seen_3))
    feats = [min(features_start * 2 ** i, max_features) for i in range(len(strides))]
    stride = total_stride(strides)
    patch = [int(math.ceil(p / s) * s) for p, s in zip(patch_size, stride)]
    net = {"class": "UNet", "features": feats, "kernel_sizes": kernels, "strides": strides, "blocks": "plain"}
    return net, patch
