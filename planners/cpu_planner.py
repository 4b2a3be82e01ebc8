"""CPUPlanner: plans sized for training on a few CPU cores (the demo, laptops, CI smoke runs).

The default ExperimentPlanner sizes networks for a GPU; on 2 CPU cores its organ network takes tens
of seconds per step. This variant keeps the same rules but uses coarser spacings, smaller patches and
the EfficientSegNet topology (anisotropic 1x3x3 + 3x1x1 convolutions, about half the cost of a plain
U-Net on CPU), so a whole cascade trains in minutes while large organs stay well resolved.
"""
from __future__ import annotations

from autoseg.planners.experiment_planner import ExperimentPlanner


class CPUPlanner(ExperimentPlanner):
    organ_spacing_floor_mm = (4.0, 2.0, 2.0)
    features_start = {"roi": 8, "organ": 16, "tumour": 16}
    max_features = 128
    max_stages = {"roi": 4, "organ": 5, "tumour": 5}
    roi_max_patch = (48, 64, 64)
    initial_patch_voxels = {"roi": 48 * 64 * 64, "organ": 40 * 80 * 80, "tumour": 32 * 64 * 64}
    max_batch_size = 2
    tumour_min_voxels = 8
    network_class = "EfficientSegNet"
    refine_small_organs = False  # the demo's few CPU minutes go to the three main stages

    def choose_network(self, stage: str) -> tuple[dict, str]:
        return {"class": self.network_class}, (f"{self.network_class}: the CPU planner's one network, about half "
                                               "a plain U-Net's CPU time at the same features")
