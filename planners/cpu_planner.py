"""CPUPlanner: plans sized for training on a few CPU cores (the demo, laptops, CI smoke runs).

The default ExperimentPlanner sizes networks for a GPU; on 2 CPU cores its organ network takes tens
of seconds per step. This variant keeps the same rules but coarser spacings, narrower networks and
smaller patches, so a whole cascade trains in minutes while large organs stay well resolved.
"""
from __future__ import annotations

from planners.experiment_planner import ExperimentPlanner


class CPUPlanner(ExperimentPlanner):
    organ_spacing_floor_mm = (4.0, 2.0, 2.0)
    features_start = {"roi": 8, "organ": 16, "tumour": 16}
    max_features = 128
    max_stages = {"roi": 4, "organ": 5, "tumour": 5}
    roi_max_patch = (48, 64, 64)
    initial_patch_voxels = {"roi": 48 * 64 * 64, "organ": 48 * 96 * 96, "tumour": 48 * 64 * 64}
    max_batch_size = 2
    tumour_min_voxels = 8
