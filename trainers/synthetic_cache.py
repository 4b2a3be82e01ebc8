"""A small preprocessed cache written directly in the cache format, for tests and benchmarks.

It skips the raw -> preprocessing path on purpose: trainer tests and training benchmarks then depend
only on the cache contract, and can choose any volume and patch size in a fraction of a second.
Each case holds an "organ" ellipsoid with a "tumour" sphere inside it, on noisy background.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from autoseg.io import Geometry
from autoseg.plans import load_plans, save_plans
from autoseg.preprocessing.cache import stage_hash
from autoseg.utils import save_json, save_npz


def synthetic_plans(dataset_name: str, stage: str = "organ", patch_size: Sequence[int] = (16, 16, 16),
                    features: Sequence[int] = (4, 8), batch_size: int = 2,
                    spacing: Sequence[float] = (2.0, 1.0, 1.0), network: dict | None = None) -> dict:
    """Plans with one stage predicting labels 1 (organ) and 2 (tumour).

    ``network`` defaults to a plain U-Net with ``features`` and stride 2 per extra level.
    """
    n = len(features)
    net = network or {"class": "UNet", "features": list(features), "kernel_sizes": [[3, 3, 3]] * n,
                      "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1), "blocks": "plain"}
    return {"schema_version": 1, "dataset_name": dataset_name, "planner": "synthetic",
            "labels": {"background": 0, "liver": 1, "liver_tumour": 2},
            "intensity": {"scheme": "ct", "clip": [-200.0, 300.0], "mean": 50.0, "std": 80.0},
            "stages": {stage: {"target_spacing": list(spacing), "patch_size": list(patch_size),
                               "batch_size": batch_size, "classes": [1, 2], "network": net}}}


def _case(shape: Sequence[int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    c = rng.uniform(-0.2, 0.2, 3)
    r = rng.uniform(0.45, 0.65, 3)
    organ = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 < 1
    t = c + rng.uniform(-0.15, 0.15, 3)
    tumour = ((zz - t[0]) ** 2 + (yy - t[1]) ** 2 + (xx - t[2]) ** 2) < rng.uniform(0.12, 0.2) ** 2
    seg = organ.astype(np.int8)
    seg[tumour & organ] = 2
    image = rng.normal(0, 0.3, shape).astype(np.float32) - 1.0
    image[organ] = image[organ] * 0.5 + 1.5  # smoother texture: a patch of pure organ differs from background
    image[seg == 2] += 1.0
    return image[None].astype(np.float16), seg[None]


def write_synthetic_cache(dataset_folder: str | os.PathLike, plans: dict, stage: str = "organ",
                          num_cases: int = 6, shape: Sequence[int] = (24, 40, 40), seed: int = 0,
                          ignore_fraction: float = 0.0) -> list[str]:
    """Write plans.json and ``num_cases`` cases (``.npz`` + ``.json``) of the given shape; return ids.

    ``ignore_fraction`` marks that share of each case's slabs as not annotated (-1), like partial labels.
    """
    folder = Path(dataset_folder)
    save_plans(plans, folder / "plans.json")
    plans = load_plans(folder / "plans.json")  # validated and migrated, as the trainer will see them
    rng = np.random.default_rng(seed)
    spacing = [float(s) for s in plans["stages"][stage]["target_spacing"]]
    ids = []
    for i in range(num_cases):
        cid = f"case_{i:03d}"
        data, seg = _case(shape, rng)
        if ignore_fraction > 0:
            seg[:, : int(shape[0] * ignore_fraction)] = -1
        locs = {}
        for k in (1, 2):
            coords = np.argwhere(seg[0] == k)
            if len(coords):
                pick = rng.choice(len(coords), min(1000, len(coords)), replace=False)
                locs[str(k)] = coords[np.sort(pick)].tolist()
        save_npz(folder / stage / f"{cid}.npz", data=data, seg=seg)
        geom = Geometry(tuple(spacing), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), tuple(shape))
        save_json({"case_id": cid, "stage": stage, "spacing": spacing, "shape": list(shape),
                   "original_geometry": geom.to_dict(), "crop_bbox": [[0, s] for s in shape],
                   "class_locations": locs, "stage_hash": stage_hash(plans, stage)}, folder / stage / f"{cid}.json")
        ids.append(cid)
    return ids
