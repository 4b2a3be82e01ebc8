"""Training augmentation throughput: our fused spatial step vs batchgeneratorsv2, legacy vs v2 intensity.

Patches per second of one loader worker (one torch thread, as ``BatchStream`` workers run), batch 2,
float32 patches cut from an in-memory float16 case, at the trainers' patch sizes (bench_training's
configs). Pipelines, all with nnU-Net's probabilities (rotation/scale 0.2 each, no elastic):

* ``ours+legacy``: ``SpatialAugmenter`` (parameters drawn first, untouched samples only cut, the rest
  read their own box and go through one affine interpolation) + batchgenerators (legacy) intensity
  transforms and mirroring on the batch (``legacy_transforms``): what the trainer ran before.
* ``ours+v2``: the same spatial step + ``autoseg.augmentation.training_transforms`` (batchgeneratorsv2
  intensity transforms and mirroring, sample by sample): what the trainer runs now.
* ``v2``: nnU-Net v2's way: cut the enlarged region (the patch rotated by 30 deg about each axis,
  / 0.85), then batchgeneratorsv2 ``SpatialTransform`` + the same v2 intensity transforms.

Spatial and intensity steps are timed apart (see ``run_config``).
Run: ``python -m benchmarks.bench_augmentation [--patches N] [--configs small medium ...]``.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from autoseg.augmentation import AugmentationConfig, SpatialAugmenter, use_dummy_2d
from autoseg.trainers.data import crop_padded
from benchmarks.bench_training import CONFIGS


def _case(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(1, *shape)).astype(np.float16)
    seg = np.zeros((1, *shape), np.int8)
    c = [s // 2 for s in shape]
    seg[0, c[0] - shape[0] // 4:c[0] + shape[0] // 4, c[1] - shape[1] // 4:c[1] + shape[1] // 4,
        c[2] - shape[2] // 4:c[2] + shape[2] // 4] = 1
    return data, seg


def nnunet_initial_patch(patch: list[int], rotation_deg: float = 30.0, min_scale: float = 0.85) -> list[int]:
    """The enlarged region nnU-Net cuts before its spatial transform (rotation about each axis, zoom-in)."""
    a = math.radians(rotation_deg)
    ext = np.asarray(patch, dtype=float)
    for axis in range(3):
        i, j = [k for k in range(3) if k != axis]
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = math.cos(a), -math.sin(a), math.sin(a), math.cos(a)
        ext = np.maximum(ext, np.abs(m) @ np.asarray(patch, dtype=float))
    return [int(math.ceil(e / min_scale)) for e in ext]


def _start(shape, size, rng) -> list[int]:
    return [int(rng.integers(min(0, d - p), max(0, d - p) + 1)) for d, p in zip(shape, size)]


def ours_sample(aug: SpatialAugmenter, data, seg, patch, rng):
    params = aug.draw()
    start = _start(data.shape[1:], patch, rng)
    if params is None:
        return crop_padded(data, start, patch, 0.0, np.float32), crop_padded(seg, start, patch, -1, np.int8)
    center = [s + (p - 1) / 2 for s, p in zip(start, patch)]
    lo, size = aug.input_box(center, params)
    d, s = crop_padded(data, lo, size, 0.0, np.float32), crop_padded(seg, lo, size, -1, np.int8)
    return aug.apply(d, s, params, [c - o for c, o in zip(center, lo)])


def _rate(fn, n: int) -> float:
    """Patches per second of ``fn`` (which makes 2 patches), over ``n`` patches after one warm-up call."""
    fn()
    t0 = time.perf_counter()
    for _ in range(n // 2):
        fn()
    return 2 * (n // 2) / (time.perf_counter() - t0)


def legacy_transforms(cfg: AugmentationConfig, dummy_2d: bool):
    """The batchgenerators (legacy) intensity transforms and mirroring the trainer used before v2."""
    from batchgenerators.transforms.abstract_transforms import Compose
    from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                             ContrastAugmentationTransform, GammaTransform)
    from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
    from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
    from batchgenerators.transforms.spatial_transforms import MirrorTransform

    return Compose([
        GaussianNoiseTransform(cfg.noise_variance, p_per_sample=cfg.p_noise),
        GaussianBlurTransform(cfg.blur_sigma, different_sigma_per_channel=True, p_per_sample=cfg.p_blur,
                              p_per_channel=0.5),
        BrightnessMultiplicativeTransform(cfg.brightness, p_per_sample=cfg.p_brightness),
        ContrastAugmentationTransform(p_per_sample=cfg.p_contrast),
        SimulateLowResolutionTransform(zoom_range=cfg.lowres_zoom, per_channel=True, p_per_channel=0.5,
                                       order_downsample=0, order_upsample=1, p_per_sample=cfg.p_lowres,
                                       ignore_axes=(0,) if dummy_2d else None),
        GammaTransform(cfg.gamma, invert_image=True, per_channel=True, retain_stats=True,
                       p_per_sample=cfg.p_gamma_inverted),
        GammaTransform(cfg.gamma, invert_image=False, per_channel=True, retain_stats=True, p_per_sample=cfg.p_gamma),
        MirrorTransform(tuple(cfg.mirror_axes))])


def run_config(name: str, patches: int, cfg: AugmentationConfig) -> dict:
    """Spatial step and intensity step timed apart (each on its own RNG stream, so one pipeline's draws
    do not change which samples the other rotates); the pipeline rate is 1 / (1/spatial + 1/intensity)."""
    from autoseg.augmentation import training_transforms
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform

    patch, _, _, shape, spacing = CONFIGS[name]
    data, seg = _case(tuple(int(s) for s in np.maximum(shape, patch)))
    aug = SpatialAugmenter(patch, cfg, spacing)
    dummy = use_dummy_2d(cfg, patch, spacing)
    legacy = legacy_transforms(cfg, dummy)
    v2_int = training_transforms(patch, cfg, spacing)  # what the trainer runs: v2, sample by sample
    a = math.radians(cfg.rotation_deg)
    v2_spatial = SpatialTransform(list(patch), patch_center_dist_from_border=0, random_crop=False,
                                  p_rotation=cfg.p_rotation, rotation=(-a, a), p_scaling=cfg.p_scale,
                                  scaling=cfg.scale, p_synchronize_scaling_across_axes=1)
    big = nnunet_initial_patch(patch)
    rng = np.random.default_rng(0)

    def spatial_ours():
        return [ours_sample(aug, data, seg, patch, rng) for _ in range(2)]

    def spatial_v2():
        out = []
        for _ in range(2):
            st = _start(data.shape[1:], big, rng)
            d, s = crop_padded(data, st, big, 0.0, np.float32), crop_padded(seg, st, big, -1, np.int8)
            r = v2_spatial(image=torch.from_numpy(d), segmentation=torch.from_numpy(s))
            out.append((r["image"], r["segmentation"]))
        return out

    np.random.seed(0)
    torch.manual_seed(0)
    fixed = [spatial_ours() for _ in range(4)]  # the same patches go through both intensity pipelines
    it = iter(range(1 << 30))

    def intensity_legacy():
        pair = fixed[next(it) % len(fixed)]
        legacy(data=np.stack([p[0] for p in pair]), seg=np.stack([p[1] for p in pair]))

    def intensity_v2():
        pair = fixed[next(it) % len(fixed)]
        v2_int(data=np.stack([p[0] for p in pair]), seg=np.stack([p[1] for p in pair]))

    res = {"patch": patch, "volume": list(data.shape[1:]), "dummy_2d": dummy, "v2_region": big, "patches": patches}
    for label, fn in (("spatial ours", spatial_ours), ("spatial v2", spatial_v2),
                      ("intensity legacy", intensity_legacy), ("intensity v2", intensity_v2)):
        np.random.seed(1)
        torch.manual_seed(1)
        res[label] = _rate(fn, patches)
    for sp, inten in (("ours", "legacy"), ("ours", "v2"), ("v2", "v2")):
        res[f"{sp}+{inten}"] = 1 / (1 / res[f"spatial {sp}"] + 1 / res[f"intensity {inten}"])
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patches", type=int, default=80, help="patches timed per step (default 80)")
    p.add_argument("--configs", nargs="+", default=["small", "quick", "medium", "fullres"], choices=list(CONFIGS))
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = {}
    for name in args.configs:
        r = run_config(name, args.patches, AugmentationConfig())
        out[name] = r
        keys = ("spatial ours", "spatial v2", "intensity legacy", "intensity v2", "ours+legacy", "ours+v2", "v2+v2")
        print(f"{name} patch {r['patch']}: " + ", ".join(f"{k} {r[k]:.1f}" for k in keys) + " patches/s", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
