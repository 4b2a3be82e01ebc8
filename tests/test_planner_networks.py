"""The default planner's network choice (planners/network_choice.py) and its per-class memory fit."""
from __future__ import annotations

import pytest

from autoseg.planners import ExperimentPlanner
from autoseg.planners.cpu_planner import CPUPlanner
from autoseg.planners.memory import GIB, estimate_training_bytes
from autoseg.plans import validate_plans
from test_planner import ORGANS, synthetic_fingerprint

ISO = dict(spacing=(1.0, 0.8, 0.8), shape=(200, 300, 300), n_cases=4)


def _classes(plans: dict) -> dict:
    return {s: st["network"]["class"] for s, st in plans["stages"].items()}


@pytest.mark.parametrize("budget,cls,preset", [(4.0, "UNet", None), (8.0, "ResEncUNet", "ResEncM"),
                                               (24.0, "ResEncUNet", "ResEncL"), (40.0, "ResEncUNet", "ResEncXL")])
def test_budget_picks_resenc_preset(budget, cls, preset):
    plans = validate_plans(ExperimentPlanner(synthetic_fingerprint(**ISO), gpu_memory_gb=budget).plan())
    organ = plans["stages"]["organ"]
    assert _classes(plans) == {"roi": "UNet", "organ": cls}
    assert organ["network"].get("preset") == preset
    assert (preset or "below the smallest") in organ["why"]["network"]
    assert "plain U-Net" in plans["stages"]["roi"]["why"]["network"]
    # the patch was fitted with the chosen class's own memory count
    est = estimate_training_bytes(organ["network"], organ["patch_size"], organ["batch_size"], 1, 4)
    assert est <= budget * GIB and abs(est / GIB - organ["estimated_memory_gb"]) < 1e-2


def test_resenc_costs_more_memory_than_plain_unet_at_the_same_patch():
    plans = ExperimentPlanner(synthetic_fingerprint(**ISO), gpu_memory_gb=8.0).plan()
    net = plans["stages"]["organ"]["network"]
    patch = plans["stages"]["organ"]["patch_size"]
    plain = dict(net, **{"class": "UNet"})
    plain.pop("preset")
    assert estimate_training_bytes(net, patch, 2, 1, 4) > estimate_training_bytes(plain, patch, 2, 1, 4)


def test_organ_without_roi_gets_scn_on_the_whole_volume():
    plans = validate_plans(ExperimentPlanner(synthetic_fingerprint(**ISO), stages=["organ"]).plan())
    organ = plans["stages"]["organ"]
    assert organ["network"]["class"] == "SpatialConfigurationNet" and organ["input"]["crop"] == "body"
    assert "no roi stage" in organ["why"]["network"]
    # a single organ: no roi stage either, but nothing to configure spatially
    single = ExperimentPlanner(synthetic_fingerprint(**ISO, labels={"background": 0, "liver": 1})).plan()
    assert _classes(single) == {"organ": "ResEncUNet"}


def test_thick_slices_get_efficientseg_published():
    plans = ExperimentPlanner(synthetic_fingerprint((5.0, 0.8, 0.8), (60, 512, 512), n_cases=4)).plan()
    assert _classes(plans) == {"roi": "UNet", "organ": "EfficientSegNetPublished"}
    assert "thick-slice" in plans["stages"]["organ"]["why"]["network"]


def test_overridable_hook_and_cpu_planner():
    class PlainPlanner(ExperimentPlanner):
        resenc_presets = False

    fp = synthetic_fingerprint(**ISO, labels={**ORGANS, "tumour": 7}, tumour_labels=(7,))
    assert set(_classes(PlainPlanner(fp, gpu_memory_gb=24).plan()).values()) == {"UNet"}
    assert set(_classes(CPUPlanner(fp).plan()).values()) == {"EfficientSegNet"}
