"""The refinement stage in the fused predictor: saliency channels from the fused labels, rounds until
two agree, labels of its classes replaced (also cleared) inside its crop, rounds in the profile."""
import copy

import numpy as np
import torch

from autoseg.inference.predictor import CascadePredictor
from autoseg.inference.profiling import CaseProfile, format_profile
from autoseg.inference.random_models import tiny_plans, write_random_checkpoints
from autoseg.plans import stage_order, validate_plans

from tests.test_inference_cascade import SPACING, Voxelwise, organ_net, phantom, roi_net, tumour_net


def refine_plans(max_rounds: int = 5) -> dict:
    plans = copy.deepcopy(tiny_plans())
    plans["stages"]["refine"] = {**copy.deepcopy(plans["stages"]["organ"]), "classes": [2],
                                 "input": {"crop": "organ", "labels": [2], "margin_mm": [4, 4, 4],
                                           "saliency": {"stage": "organ", "classes": [2]}},
                                 "refine": {"max_rounds": max_rounds, "stop_dsc": 0.99}}
    plans["stages"]["refine"]["target_spacing"] = list(SPACING)
    return validate_plans(plans)


def test_refinement_rounds_until_agreement(tmp_path):
    plans = refine_plans()
    assert stage_order(plans) == ["roi", "organ", "tumour", "refine"]
    p = CascadePredictor(write_random_checkpoints(plans, tmp_path), device="cpu")
    salient = []

    def refine_net(x):  # the kidney at the data's own spacing: HU > 200
        assert x.shape[1] == 2  # CT + one saliency channel
        salient.append(float(x[:, 1].max()))
        return torch.cat([torch.zeros_like(x[:, :1]), 20 * (x[:, :1] > 2.0).float() - 10], 1)

    for stage, fn in (("roi", roi_net), ("organ", organ_net), ("tumour", tumour_net), ("refine", refine_net)):
        p.stages[stage].network = Voxelwise(fn)
    img, gt = phantom()
    coarse = p_without_refine(tmp_path, img)
    assert not np.array_equal(coarse == 2, gt == 2)  # the coarse organ grid blurs the kidney's rim
    prof = CaseProfile(torch.device("cpu"))
    out = p.predict_array(img, SPACING, prof)
    assert np.array_equal(out == 2, gt == 2)  # rim voxels added and the coarse stage's extra ones cleared
    assert np.array_equal(out == 3, gt == 3) and salient and min(salient) > 0.5
    info = prof.summary()["stage_info"]["refine"]
    assert info["rounds"] == 2 and info["dsc_to_previous"][-1] == 1.0 and info["dsc_to_previous"][0] < 0.99
    assert len(info["seconds_per_round"]) == 2
    assert "refine rounds 2" in format_profile("case", prof.summary())


def test_one_round_without_refine_block(tmp_path):
    plans = refine_plans()
    del plans["stages"]["refine"]["refine"]
    p = CascadePredictor(write_random_checkpoints(validate_plans(plans), tmp_path), device="cpu")
    for stage, fn in (("roi", roi_net), ("organ", organ_net), ("tumour", tumour_net)):
        p.stages[stage].network = Voxelwise(fn)
    p.stages["refine"].network = Voxelwise(lambda x: torch.cat([x[:, :1] * 0 + 10, x[:, :1] * 0], 1))
    prof = CaseProfile(torch.device("cpu"))
    img, gt = phantom()
    out = p.predict_array(img, SPACING, prof)
    assert prof.info["refine"]["rounds"] == 1
    assert not (out == 2).any() and np.array_equal(out == 1, p_without_refine(tmp_path, img) == 1)


def p_without_refine(tmp_path, img):
    p = CascadePredictor(write_random_checkpoints(tiny_plans(), tmp_path / "plain"), device="cpu")
    for stage, fn in (("roi", roi_net), ("organ", organ_net), ("tumour", tumour_net)):
        p.stages[stage].network = Voxelwise(fn)
    return p.predict_array(img, SPACING)
