"""Training augmentation throughput: our fused spatial step vs batchgeneratorsv2, legacy vs v2 intensity.

Patches per second of one loader worker (one torch thread, as ``BatchStream`` workers run), batch 2,
float32 patches cut from an in-memory float16 case, at the trainers' patch sizes (bench_training's
configs). Pipelines, all with nnU-Net's probabilities (rotation/scale 0.2 each, no elastic):

* ``ours+legacy``: ``SpatialAugmenter`` (parameters drawn first, untouched samples only cut, the rest
  read their own box and go through one affine interpolation) + batchgenerators (legacy) intensity
  transforms and mirroring on the batch: what the trainer ran before batchgeneratorsv2.
* ``ours+v2``: the same spatial step + batchgeneratorsv2 intensity transforms and mirroring per sample.
* ``v2``: nnU-Net v2's way: cut the enlarged region (the patch rotated by 30 deg about each axis,
  / 0.85), then batchgeneratorsv2 ``SpatialTransform`` + the same v2 intensity transforms.

Run: ``python -m benchmarks.bench_augmentation [--batches N] [--configs small medium ...]``.
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


def run_config(name: str, batches: int, cfg: AugmentationConfig) -> dict:
    from autoseg.augmentation import training_transforms, v2_intensity_transforms
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform

    patch, _, _, shape, spacing = CONFIGS[name]
    data, seg = _case(tuple(int(s) for s in np.maximum(shape, patch)))
    aug = SpatialAugmenter(patch, cfg, spacing)
    dummy = use_dummy_2d(cfg, patch, spacing)
    legacy = training_transforms(patch, cfg, spacing)
    v2_int = v2_intensity_transforms(cfg, dummy)
    a = math.radians(cfg.rotation_deg)
    v2_spatial = SpatialTransform(list(patch), patch_center_dist_from_border=0, random_crop=False,
                                  p_rotation=cfg.p_rotation, rotation=(-a, a), p_scaling=cfg.p_scale,
                                  scaling=cfg.scale, p_synchronize_scaling_across_axes=1)
    big = nnunet_initial_patch(patch)
    rng = np.random.default_rng(0)

    def ours_legacy():
        pairs = [ours_sample(aug, data, seg, patch, rng) for _ in range(2)]
        legacy(data=np.stack([p[0] for p in pairs]), seg=np.stack([p[1] for p in pairs]))

    def ours_v2():
        for _ in range(2):
            d, s = ours_sample(aug, data, seg, patch, rng)
            v2_int(image=torch.from_numpy(d), segmentation=torch.from_numpy(s))

    def v2():
        for _ in range(2):
            st = _start(data.shape[1:], big, rng)
            d, s = crop_padded(data, st, big, 0.0, np.float32), crop_padded(seg, st, big, -1, np.int8)
            out = v2_spatial(image=torch.from_numpy(d), segmentation=torch.from_numpy(s))
            v2_int(**out)

    res = {"patch": patch, "volume": list(data.shape[1:]), "dummy_2d": dummy, "v2_region": big}
    for label, fn in (("ours+legacy", ours_legacy), ("ours+v2", ours_v2), ("v2", v2)):
        np.random.seed(0)
        torch.manual_seed(0)
        fn()  # warm-up
        t0 = time.perf_counter()
        for _ in range(batches):
            fn()
        res[label] = 2 * batches / (time.perf_counter() - t0)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--configs", nargs="+", default=["small", "quick", "medium", "fullres"], choices=list(CONFIGS))
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = {}
    for name in args.configs:
        r = run_config(name, args.batches, AugmentationConfig())
        out[name] = r
        print(f"{name} patch {r['patch']}: " + ", ".join(f"{k} {r[k]:.1f}" for k in ("ours+legacy", "ours+v2", "v2"))
              + " patches/s", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
