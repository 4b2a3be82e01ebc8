import json

import numpy as np
import torch

from autoseg.inference.postprocessing import apply_postprocessing, learn_postprocessing, merge_fold_rules


def _case(rng, stray: bool, two_parts: bool):
    """Label 1: a big blob (+ a stray island in the prediction); label 2: two real separate blobs."""
    gt = np.zeros((20, 30, 30), np.uint8)
    gt[4:14, 4:14, 4:14] = 1
    gt[2:6, 20:26, 20:26] = 2
    if two_parts:
        gt[14:18, 20:26, 20:26] = 2
    pred = gt.copy()
    pred[4, 4:14, 4] = 0  # a small error so DSC < 1 anyway
    if stray:
        pred[17:19, 2:4, 2:4] = 1
    return pred, gt


def test_learns_keep_largest_only_where_it_helps():
    rng = np.random.default_rng(0)
    cases = [_case(rng, stray=True, two_parts=True) for _ in range(3)]
    res = learn_postprocessing(cases, [1, 2])
    json.dumps(res)
    assert "1" in res["rules"]  # removing the island helps label 1
    assert "2" not in res["rules"]  # keep-largest would delete a real kidney
    assert res["dsc_after"]["1"] > res["dsc_before"]["1"]
    assert res["dsc_after"]["2"] == res["dsc_before"]["2"]


def test_no_rule_when_nothing_to_fix():
    cases = [_case(None, stray=False, two_parts=False) for _ in range(2)]
    assert learn_postprocessing(cases, [1, 2])["rules"] == {}


def test_apply_numpy_and_tensor():
    pred, gt = _case(None, stray=True, two_parts=True)
    rules = {"rules": {"1": {"keep_largest": True}, "2": {"min_size": 1000}}}
    out = apply_postprocessing(pred, rules)
    assert out.dtype == pred.dtype and (pred[17:19, 2:4, 2:4] == 1).all()  # input untouched
    assert (out[17:19, 2:4, 2:4] == 0).all() and (out[5:14, 5:14, 5:14] == 1).all()
    assert not (out == 2).any()  # both label-2 blobs are under 1000 voxels
    t = apply_postprocessing(torch.from_numpy(pred), rules)
    assert isinstance(t, torch.Tensor) and np.array_equal(t.numpy(), out)
    assert np.array_equal(apply_postprocessing(pred, {"rules": {}}), pred)


def test_fold_majority():
    a = {"rules": {"1": {"keep_largest": True}, "2": {"min_size": 5}}}
    b = {"rules": {"1": {"keep_largest": True}}}
    c = {"rules": {"2": {"min_size": 7}}}
    assert merge_fold_rules([a, b, c]) == {"rules": {"1": {"keep_largest": True}}}
    assert merge_fold_rules([]) == {"rules": {}}


def test_size_rules_in_mm3_follow_the_grid():
    seg = np.zeros((10, 20, 20), np.uint8)
    seg[1:5, 1:5, 1:5] = 1  # 64 voxels
    seg[6:8, 10:12, 10:12] = 1  # 8 voxels
    rule = {"rules": {"1": {"min_size": 10, "min_volume_mm3": 80.0}}}
    assert (apply_postprocessing(seg, rule)[6:8, 10:12, 10:12] == 0).all()  # 8 < 10 voxels
    # at 2 x 2 x 2 mm the small blob is 64 mm^3 < 80: removed; at 3 mm voxels it is 216 mm^3: kept
    assert (apply_postprocessing(seg, rule, (2.0, 2.0, 2.0))[6:8, 10:12, 10:12] == 0).all()
    assert (apply_postprocessing(seg, rule, (3.0, 3.0, 3.0))[6:8, 10:12, 10:12] == 1).all()


def test_learned_size_rule_records_volume():
    gt = np.zeros((20, 30, 30), np.uint8)
    gt[2:12, 2:12, 2:12] = 1
    gt[15:19, 20:28, 20:28] = 1  # a real second part: keep-largest would hurt
    pred = gt.copy()
    pred[18, 2, 2] = 1  # a one-voxel speck
    res = learn_postprocessing([(pred, gt)] * 2, [1], spacing=(2.0, 1.0, 1.0))
    rule = res["rules"]["1"]
    assert "keep_largest" not in rule and rule["min_volume_mm3"] == rule["min_size"] * 2.0
