"""Intensity normalisation from ``plans["intensity"]``, shared by preprocessing and inference.

CT intensities are physical (HU), so one dataset-wide clip + z-score (from the fingerprint's
foreground percentiles) keeps "liver is ~60 HU" meaningful across scanners; other modalities fall
back to a per-image z-score.
"""
from __future__ import annotations

import torch

from autoseg import AutosegError


def normalize_ct(x: torch.Tensor, intensity: dict) -> torch.Tensor:
    """``(clip(x, lo, hi) - mean) / std``; in place for float32 input, else on a float32 copy."""
    lo, hi = (float(v) for v in intensity["clip"])
    mean, std = float(intensity["mean"]), float(intensity["std"])
    if std <= 0:
        raise AutosegError(f"plans intensity: std must be positive, got {std}")
    if x.dtype != torch.float32:
        x = x.to(torch.float32)
    return x.clamp_(lo, hi).sub_(mean).div_(std)


def normalize_zscore(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image z-score (over ``mask`` when given); for non-CT channels whose scale is arbitrary."""
    if x.dtype != torch.float32:
        x = x.to(torch.float32)
    vals = x[mask] if mask is not None and bool(mask.any()) else x
    mean, std = float(vals.mean()), float(vals.std()) if vals.numel() > 1 else 1.0
    return x.sub_(mean).div_(max(std, 1e-8))


def normalize(x: torch.Tensor, intensity: dict) -> torch.Tensor:
    """Dispatch on ``intensity["scheme"]`` (``ct`` or ``zscore``)."""
    scheme = intensity.get("scheme", "ct")
    if scheme == "ct":
        return normalize_ct(x, intensity)
    if scheme == "zscore":
        return normalize_zscore(x)
    raise AutosegError(f"plans intensity: unknown scheme {scheme!r} (expected 'ct' or 'zscore')")
