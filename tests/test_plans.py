import copy

import pytest

from autoseg import AutosegError
from autoseg.plans import load_plans, num_outputs, save_plans, stage_classes, validate_plans

NET = {"class": "UNet", "features": [8, 16, 32], "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
       "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]], "blocks": "plain"}
PLANS = {
    "schema_version": 1, "dataset_name": "Dataset501_Phantom", "planner": "ExperimentPlanner",
    "labels": {"background": 0, "liver": 1, "spleen": 2, "liver_tumour": 3},
    "intensity": {"scheme": "ct", "clip": [-1000.0, 400.0], "mean": 60.0, "std": 40.0},
    "stages": {
        "roi": {"target_spacing": [4, 4, 4], "patch_size": [32, 64, 64], "batch_size": 2,
                "classes": "foreground", "network": NET, "crop_margin_mm": [10, 10, 10], "input": "whole"},
        "organ": {"target_spacing": [2.5, 1.5, 1.5], "patch_size": [32, 64, 64], "batch_size": 2,
                  "classes": [1, 2], "network": NET, "input": "roi_crop"},
        "tumour": {"target_spacing": [2.0, 1.0, 1.0], "patch_size": [32, 64, 64], "batch_size": 2,
                   "classes": [3], "network": NET, "input": "organ_crop", "host_organs": [1],
                   "crop_margin_mm": [5, 5, 5]},
    },
    "my_note": "kept",
}


def test_valid_roundtrip(tmp_path):
    save_plans(PLANS, tmp_path / "plans.json")
    back = load_plans(tmp_path / "plans.json")
    assert back == PLANS
    assert stage_classes(back, "roi") == [1] and num_outputs(back, "organ") == 3


@pytest.mark.parametrize("mutate, key", [
    (lambda p: p["stages"]["organ"].pop("patch_size"), "stages.organ.patch_size"),
    (lambda p: p["stages"]["organ"].__setitem__("batch_size", "2"), "stages.organ.batch_size"),
    (lambda p: p["stages"]["organ"].__setitem__("patch_size", [31, 64, 64]), "not divisible"),
    (lambda p: p["stages"]["organ"].__setitem__("classes", [1, 7]), "stages.organ.classes"),
    (lambda p: p["stages"]["roi"]["network"].__setitem__("class", 3), "stages.roi.network.class"),
    (lambda p: p["intensity"].__setitem__("clip", [400, -1000]), "intensity.clip"),
    (lambda p: p.__setitem__("schema_version", 2), "schema_version"),
    (lambda p: p["stages"].__setitem__("coarse", {}), "stages.coarse"),
])
def test_bad_key_named(mutate, key):
    p = copy.deepcopy(PLANS)
    mutate(p)
    with pytest.raises(AutosegError, match=key.replace(".", r"\.")):
        validate_plans(p, "plans.json")
