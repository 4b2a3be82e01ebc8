import copy
import logging

import pytest

from autoseg import AutosegError
from autoseg.plans import (load_plans, num_outputs, plans_file_name, plans_subdir, save_plans, stage_classes,
                           stage_in_channels, stage_order, validate_plans)

NET = {"class": "UNet", "features": [8, 16, 32], "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
       "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]], "blocks": "plain"}
PLANS = {
    "schema_version": 2, "dataset_name": "Dataset501_Phantom", "planner": "ExperimentPlanner",
    "labels": {"background": 0, "liver": 1, "spleen": 2, "liver_tumour": 3},
    "intensity": {"scheme": "ct", "clip": [-1000.0, 400.0], "mean": 60.0, "std": 40.0},
    "stages": {
        "roi": {"target_spacing": [4, 4, 4], "patch_size": [32, 64, 64], "batch_size": 2,
                "classes": "foreground", "network": copy.deepcopy(NET), "input": {"crop": "body"}},
        "organ": {"target_spacing": [2.5, 1.5, 1.5], "patch_size": [32, 64, 64], "batch_size": 2,
                  "classes": [1, 2], "network": copy.deepcopy(NET), "input": {"crop": "roi", "margin_mm": [10, 10, 10]}},
        "tumour": {"target_spacing": [2.0, 1.0, 1.0], "patch_size": [32, 64, 64], "batch_size": 2,
                   "classes": [3], "network": copy.deepcopy(NET),
                   "input": {"crop": "organ", "labels": [1], "margin_mm": [5, 5, 5]}},
    },
    "my_note": "kept",
}
V1 = {**copy.deepcopy(PLANS), "schema_version": 1}
V1["stages"]["roi"].update(crop_margin_mm=[10, 10, 10], input="whole")
V1["stages"]["organ"]["input"] = "roi_crop"
V1["stages"]["tumour"].update(input="organ_crop", host_organs=[1], crop_margin_mm=[5, 5, 5])


def test_valid_roundtrip(tmp_path):
    save_plans(PLANS, tmp_path / "plans.json")
    back = load_plans(tmp_path / "plans.json")
    assert back == PLANS
    assert stage_classes(back, "roi") == [1] and num_outputs(back, "organ") == 3
    assert stage_order(back) == ["roi", "organ", "tumour"]


def test_schema_1_is_migrated_with_a_log_line(caplog):
    with caplog.at_level(logging.INFO):
        back = validate_plans(copy.deepcopy(V1), "old/plans.json")
    assert back == {k: v for k, v in PLANS.items()}
    assert "old/plans.json" in caplog.text and "schema_version 1" in caplog.text


@pytest.mark.parametrize("mutate, key", [
    (lambda p: p["stages"]["organ"].pop("patch_size"), "stages.organ.patch_size: is missing"),
    (lambda p: p["stages"]["organ"].__setitem__("batch_size", "2"), "stages.organ.batch_size"),
    (lambda p: p["stages"]["organ"].__setitem__("patch_size", [31, 64, 64]), "not divisible"),
    (lambda p: p["stages"]["organ"].__setitem__("classes", [1, 7]), "stages.organ.classes"),
    (lambda p: p["stages"]["roi"]["network"].__setitem__("class", 3), "stages.roi.network.class"),
    (lambda p: p["intensity"].__setitem__("clip", [400, -1000]), "intensity.clip"),
    (lambda p: p.__setitem__("schema_version", 3), "schema_version"),
    (lambda p: p["stages"].__setitem__("coarse", {}), "stages.coarse"),
    # the gaps the old plans validator had (the network one caught them)
    (lambda p: p["stages"]["organ"]["network"]["kernel_sizes"].__setitem__(2, [3, 2, 3]),
     "stages.organ.network.kernel_sizes[2]: must be odd"),
    (lambda p: p["stages"]["organ"]["network"]["strides"].__setitem__(0, [1, 2, 2]),
     "stages.organ.network.strides[0]: must be [1, 1, 1]"),
    (lambda p: p["stages"]["tumour"]["network"].__setitem__("convs_per_stage", [2, 2]),
     "stages.tumour.network.convs_per_stage"),
    # the stage graph
    (lambda p: p["stages"]["organ"]["network"].__setitem__("class", "VNet"),
     "stages.organ.network.class: unknown network class 'VNet'"),
    (lambda p: p["stages"]["tumour"]["input"].__setitem__("crop", "organs"),
     "stages.tumour.input.crop: names stage 'organs'"),
    (lambda p: p["stages"]["roi"]["input"].__setitem__("crop", "tumour"), "stages.roi.input: cycle"),
    (lambda p: p["stages"]["tumour"]["input"].__setitem__("saliency", {"stage": "pancreas", "classes": [1]}),
     "stages.tumour.input.saliency.stage"),
    (lambda p: p["stages"]["tumour"].__setitem__("refine", {"max_rounds": 3}), "stages.tumour.refine"),
    (lambda p: p["stages"]["tumour"]["input"].__setitem__("margin_mm", [5, -1, 5]),
     r"stages.tumour.input.margin_mm[1]"),
])
def test_bad_key_named(mutate, key):
    p = copy.deepcopy(PLANS)
    mutate(p)
    with pytest.raises(AutosegError) as e:
        validate_plans(p, "plans.json")
    msg = str(e.value)
    assert msg.startswith("plans.json: ") and key in msg and "\n" not in msg, msg


def test_saliency_stage_adds_channels_and_runs_after_its_source():
    p = copy.deepcopy(PLANS)
    p["stages"] = {"refine": {**p["stages"]["organ"], "classes": [2],
                              "input": {"crop": "organ", "labels": [2], "margin_mm": [4, 4, 4],
                                        "saliency": {"stage": "organ", "classes": [2]}},
                              "refine": {"max_rounds": 4}}, **p["stages"]}
    p = validate_plans(p, "plans.json")
    assert stage_order(p) == ["roi", "organ", "refine", "tumour"]
    assert stage_in_channels(p, "refine") == 2 and stage_in_channels(p, "organ") == 1


def test_plans_names():
    assert plans_file_name(None) == "plans.json" and plans_subdir("plans") == ""
    assert plans_file_name("big") == "plans_big.json" and plans_subdir("big") == "plans_big"
    with pytest.raises(AutosegError, match="plans name"):
        plans_file_name("../x")
