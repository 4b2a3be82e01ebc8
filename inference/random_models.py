"""Random-weight checkpoints laid out exactly as trainers write them.

Speed, memory and geometry do not depend on what a network has learned, so tests and benchmarks
build these instead of training: same plans, same files, same loading path as real models.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Sequence

import torch

from autoseg.plans import STAGES, num_outputs, stage_in_channels, validate_plans
from autoseg.provenance import checkpoint_provenance
from autoseg.utils import atomic_path


def tiny_plans(dataset_name: str = "Dataset999_Tiny", stages: Sequence[str] = ("roi", "organ", "tumour"),
               features: Sequence[int] = (4, 8), patch: Sequence[int] = (16, 32, 32)) -> dict:
    """Plans for a 2-level UNet on small patches: liver 1, kidney 2, tumour 3 (hosted by the liver)."""
    net = {"class": "UNet", "features": list(features), "kernel_sizes": [[3, 3, 3]] * len(features),
           "strides": [[1, 1, 1]] + [[2, 2, 2]] * (len(features) - 1), "blocks": "plain"}
    all_stages = {
        "roi": {"target_spacing": [4.0, 4.0, 4.0], "patch_size": list(patch), "batch_size": 2,
                "classes": "foreground", "network": copy.deepcopy(net), "crop_margin_mm": [8.0, 8.0, 8.0]},
        "organ": {"target_spacing": [2.5, 2.0, 2.0], "patch_size": list(patch), "batch_size": 2,
                  "classes": [1, 2], "network": copy.deepcopy(net), "input": "roi_crop"},
        "tumour": {"target_spacing": [2.0, 1.5, 1.5], "patch_size": list(patch), "batch_size": 2,
                   "classes": [3], "network": copy.deepcopy(net), "input": "organ_crop", "host_organs": [1],
                   "crop_margin_mm": [4.0, 4.0, 4.0]},
    }
    plans = {"schema_version": 1, "dataset_name": dataset_name, "planner": "tiny",
             "labels": {"background": 0, "liver": 1, "kidney": 2, "tumour": 3},
             "intensity": {"scheme": "ct", "clip": [-1000.0, 400.0], "mean": 0.0, "std": 100.0},
             "stages": {s: all_stages[s] for s in stages}}
    return validate_plans(plans)


def write_random_checkpoints(plans: dict, results_dir: str | os.PathLike, stages: Sequence[str] | None = None,
                             folds: Sequence[int] = (0,), trainer: str = "Trainer", seed: int = 0,
                             name: str = "checkpoint_final.pt") -> dict[str, list[Path]]:
    """Write ``<results>/<dataset>/<stage>/<trainer>/fold_K/<name>`` with random weights per the contract."""
    from autoseg.networks import build_network

    out: dict[str, list[Path]] = {}
    for stage in stages or list(plans["stages"]):
        for fold in folds:
            rank = STAGES.index(stage) if stage in STAGES else len(STAGES) + list(plans["stages"]).index(stage)
            torch.manual_seed(seed + 1000 * fold + rank)
            net = build_network(plans["stages"][stage]["network"], stage_in_channels(plans, stage),
                                num_outputs(plans, stage))
            path = Path(results_dir) / plans["dataset_name"] / stage / trainer / f"fold_{fold}" / name
            ckpt = {"network_weights": net.state_dict(), "plans": plans, "stage": stage,
                    "trainer_name": trainer, "epoch": 0, "provenance": checkpoint_provenance(plans, stage)}
            with atomic_path(path, ".pt") as tmp:
                torch.save(ckpt, tmp)
            out.setdefault(stage, []).append(path)
    return out
