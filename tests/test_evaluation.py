"""Metrics against closed forms (surfel areas, boxes, spheres, single voxels) and the FLARE rules."""
from __future__ import annotations

import math

import numpy as np
import pytest

from autoseg import AutosegError
from autoseg.evaluation import compute_metrics, dice, robust_hausdorff, surface_dice, surface_distances
from autoseg.evaluation.metrics import score_class
from autoseg.evaluation.surface import mask_surface, nearest_distances, surfel_area_table

SQ3 = math.sqrt(3)


def _ball(shape, spacing, centre, radius):
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij", sparse=True)
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius ** 2


def test_surfel_table_known_configurations():
    t = surfel_area_table((1.0, 1.0, 1.0))
    assert t[0] == 0 and t[255] == 0
    assert t[1] == pytest.approx(SQ3 / 8)  # one corner cut off: triangle at edge midpoints
    assert t[3] == pytest.approx(math.sqrt(2) / 2)  # two voxels along x: a 1 x sqrt(1/2) rectangle
    assert t[15] == pytest.approx(1.0)  # the whole upper-z half: a unit square
    assert t[6] == pytest.approx(SQ3 / 4)  # face-diagonal pair: two separate corner triangles
    assert t[7] == pytest.approx(0.5 + SQ3 / 4 + SQ3 / 8)  # L of three voxels: pentagon of three triangles
    assert all(t[c] == pytest.approx(t[255 - c]) for c in range(256))  # a surface and its complement
    aniso = surfel_area_table((2.5, 0.8, 0.9))
    assert aniso[15] == pytest.approx(0.8 * 0.9)  # plane normal to z spans one y-x face
    assert aniso[1] == pytest.approx(math.sqrt((0.8 * 0.9) ** 2 + (2.5 * 0.9) ** 2 + (2.5 * 0.8) ** 2) / 8)


def _box_area(n, s):
    """Marching-cubes area of an n0 x n1 x n2 voxel box: flat faces, chamfered edges, cut corners."""
    faces = 2 * ((n[1] - 1) * (n[2] - 1) * s[1] * s[2] + (n[0] - 1) * (n[2] - 1) * s[0] * s[2]
                 + (n[0] - 1) * (n[1] - 1) * s[0] * s[1])
    edges = 4 * sum((n[a] - 1) * s[a] * 0.5 * math.hypot(s[b], s[c]) for a, b, c in ((0, 1, 2), (1, 0, 2), (2, 0, 1)))
    corner = math.sqrt((s[1] * s[2]) ** 2 + (s[0] * s[2]) ** 2 + (s[0] * s[1]) ** 2) / 8
    return faces + edges + 8 * corner


@pytest.mark.parametrize("touching", [False, True])
def test_box_surface_area_closed_form(touching):
    sp, n = (2.5, 0.7, 1.1), (4, 6, 5)
    m = np.zeros((4, 6, 5) if touching else (8, 10, 9), bool)
    m[(slice(None),) * 3 if touching else (slice(2, 6), slice(2, 8), slice(2, 7))] = True
    assert mask_surface(m, sp).total_area == pytest.approx(_box_area(n, sp))


def _reference_shapes():
    sp = (2.5, 0.8, 0.9)
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip((24, 70, 60), sp)), indexing="ij", sparse=True)
    gt = ((z - 30) / 22) ** 2 + ((y - 28) / 18) ** 2 + ((x - 27) / 20) ** 2 <= 1
    pred = ((z - 33) / 20) ** 2 + ((y - 26) / 19) ** 2 + ((x - 29) / 17) ** 2 <= 1
    pred[3:5, 5:9, 50:54] = True  # a far island: the HD100 tail
    return gt, pred, sp


def test_matches_reference_implementation_values():
    """Values produced by DeepMind's surface-distance package (v0.1) on these exact masks."""
    gt, pred, sp = _reference_shapes()
    sd = surface_distances(gt, pred, sp)
    assert sd.area_gt.sum() == pytest.approx(5757.414181434272, rel=1e-12)
    assert sd.area_pred.sum() == pytest.approx(5111.787993479713, rel=1e-12)
    for tol, expected in ((1.0, 0.39882919798452715), (2.0, 0.5764621958624587), (3.0, 0.745663542607886)):
        assert surface_dice(sd, tol) == pytest.approx(expected, rel=1e-12)
    assert robust_hausdorff(sd, 95) == pytest.approx(5.1478150704935, rel=1e-12)
    assert robust_hausdorff(sd, 100) == pytest.approx(19.130081024397153, rel=1e-12)
    for pc, expected in ((50, 1.8), (90, 4.996999099459595), (99, 15.166410254242763)):
        assert robust_hausdorff(sd, pc) == pytest.approx(expected, rel=1e-12)
    mean_gt = float((sd.dist_gt_to_pred * sd.area_gt).sum() / sd.area_gt.sum())
    assert mean_gt == pytest.approx(2.0322568898156357, rel=1e-12)
    assert dice(gt, pred) == pytest.approx(0.8168921542275185, rel=1e-12)


def test_kdtree_and_distance_transform_agree_exactly():
    rng = np.random.default_rng(0)
    from scipy import ndimage

    for _ in range(5):
        shape = tuple(rng.integers(8, 25, 3))
        sp = tuple(rng.uniform(0.4, 3.0, 3))
        g = ndimage.binary_dilation(rng.random(shape) < 0.02, iterations=2)
        p = ndimage.binary_dilation(rng.random(shape) < 0.02, iterations=2)
        sg, spp = mask_surface(g, sp), mask_surface(p, sp)
        grid = tuple(s + 1 for s in shape)
        a = nearest_distances(sg.points, spp.points, sp, grid, method="kdtree")
        b = nearest_distances(sg.points, spp.points, sp, grid, method="edt")
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sp,r,d", [((1.0, 0.45, 0.55), 12.0, 5.0), ((1.2, 0.5, 0.5), 12.0, 6.0)])
def test_offset_spheres_closed_form(sp, r, d):
    """Equal spheres offset by d: DSC = lens / ball; surface distances are uniform on [0, d], so
    HD95 = 0.95 d, mean = d / 2, NSD(tau) = tau / d -- up to where on the voxel-corner grid the
    discrete surfaces lie (within half a voxel diagonal h/2 of the true ones)."""
    shape = tuple(int((2 * r + d + 8) / s) for s in sp)
    c = np.full(3, 4 + r)
    g = _ball(shape, sp, c, r)
    p = _ball(shape, sp, c + d / SQ3, r)  # offset along the diagonal: every axis (and spacing) matters
    res = score_class(g, p, sp, tolerance_mm=3.0)
    assert res["dsc"] == pytest.approx((4 * r + d) * (2 * r - d) ** 2 / 16 / r ** 3, rel=5e-3)
    assert res["volume_gt_mm3"] == pytest.approx(4 / 3 * math.pi * r ** 3, rel=5e-3)
    h = math.sqrt(sum(s * s for s in sp))
    assert abs(res["hd95"] - 0.95 * d) <= h / 2
    sd = surface_distances(g, p, sp)
    mean = float((sd.dist_gt_to_pred * sd.area_gt).sum() / sd.area_gt.sum())
    assert abs(mean - d / 2) <= h / 2
    assert (3.0 - h / 2) / d <= res["nsd"] <= (3.0 + h / 2) / d


def test_single_voxel_objects():
    sp = (2.5, 0.8, 0.9)
    g = np.zeros((5, 5, 5), np.uint8)
    g[2, 2, 2] = 1
    same = compute_metrics(g, g.copy(), sp, {"spleen": 1})[1]
    assert (same["dsc"], same["nsd"], same["hd95"]) == (1.0, 1.0, 0.0)
    assert same["volume_gt_mm3"] == pytest.approx(2.5 * 0.8 * 0.9)
    p = np.zeros_like(g)
    p[3, 2, 2] = 1  # one slice up: 4 of the 8 corner surfels are shared, the others are 2.5 mm away
    assert compute_metrics(g, p, sp, [1], 2.0)[1] == pytest.approx(
        {"dsc": 0.0, "nsd": 0.5, "hd95": 2.5, "volume_gt_mm3": 1.8, "volume_pred_mm3": 1.8})
    assert compute_metrics(g, p, sp, [1], 2.5)[1]["nsd"] == 1.0
    sd = surface_distances(g == 1, p == 1, sp)
    assert (robust_hausdorff(sd, 50), robust_hausdorff(sd, 51)) == (0.0, 2.5)  # half the area is shared


def test_empty_mask_rules():
    sp = (1.0, 1.0, 1.0)
    gt = np.zeros((6, 6, 6), np.int16)
    pred = np.zeros_like(gt)
    pred[1:3, 1:3, 1:3] = 2
    res = compute_metrics(gt, pred, sp, {"liver": 1, "kidney_left": 2})
    assert res[1] == {"dsc": 1.0, "nsd": 1.0, "hd95": 0.0, "volume_gt_mm3": 0.0, "volume_pred_mm3": 0.0}
    assert (res[2]["dsc"], res[2]["nsd"], res[2]["volume_pred_mm3"]) == (0.0, 0.0, 8.0)
    assert math.isnan(res[2]["hd95"])
    swapped = compute_metrics(pred, gt, sp, [2])[2]
    assert (swapped["dsc"], swapped["nsd"], swapped["volume_gt_mm3"]) == (0.0, 0.0, 8.0)
    assert math.isnan(swapped["hd95"])
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    assert dice(np.ones(3, bool), np.zeros(3, bool)) == 0.0
    assert dice(np.array([1, 1, 0], bool), np.array([1, 0, 0], bool)) == pytest.approx(2 / 3)


def test_touching_borders_and_bbox_crop_are_invisible():
    """An object cut by the array border is closed there, exactly as if the array were padded;
    scoring on each class's box gives what the whole, larger volume gives."""
    rng = np.random.default_rng(3)
    gt = np.zeros((10, 14, 12), np.uint8)
    gt[:6, 3:14, 0:7] = 1
    gt[4:10, 0:5, 6:12] = 2
    pred = gt.copy()
    pred[rng.random(gt.shape) < 0.05] = 0
    pred[0:3, 8:12, 8:11] = 2
    sp = (3.0, 0.7, 0.8)
    small = compute_metrics(gt, pred, sp, {"liver": 1, "spleen": 2}, 1.0)
    big_gt, big_pred = (np.pad(a, ((3, 5), (7, 2), (4, 9))) for a in (gt, pred))
    assert compute_metrics(big_gt, big_pred, sp, {"liver": 1, "spleen": 2}, 1.0) == small
    assert 0 < small[1]["nsd"] < 1 and small[2]["hd95"] > 0


def test_flare_tubes_scored_on_gt_slices_only():
    """flare22: the aorta's prediction beyond the GT's axial range is not counted (the organisers
    keep slices zmin..zmax-1 of the GT); a number tolerance has no such rule."""
    sp = (2.0, 1.0, 1.0)
    gt = np.zeros((20, 10, 10), np.uint8)
    gt[5:12, 3:6, 3:6] = 1
    pred = np.zeros_like(gt)
    pred[2:18, 3:6, 3:6] = 1
    res = compute_metrics(gt, pred, sp, {"aorta": 1}, "flare22")[1]
    expected = score_class(gt[5:11] == 1, pred[5:11] == 1, sp, 2.0)
    assert res["dsc"] == expected["dsc"] == 1.0 and res["nsd"] == expected["nsd"]
    assert res["volume_pred_mm3"] == 16 * 9 * 2.0  # volumes stay those of the whole masks
    plain = compute_metrics(gt, pred, sp, {"aorta": 1}, 2.0)[1]
    assert plain["dsc"] == pytest.approx(2 * 7 / (7 + 16))
    renamed = compute_metrics(gt, pred, sp, {"liver": 1}, "flare22")[1]
    assert renamed["dsc"] == plain["dsc"]


def test_label_formats_and_input_checks():
    gt = np.zeros((4, 4, 4), np.float32)
    gt[1:3, 1:3, 1:3] = 3
    by_name = compute_metrics(gt, gt.astype(np.uint8), (1, 1, 1), {"background": 0, "stomach": 3})
    assert set(by_name) == {3} and by_name[3]["dsc"] == 1.0
    assert compute_metrics(gt, gt, (1, 1, 1), {3: "stomach"}) == by_name == compute_metrics(gt, gt, (1, 1, 1), [3])
    with pytest.raises(AutosegError, match="one shape"):
        compute_metrics(gt, gt[:3], (1, 1, 1), [3])
    with pytest.raises(AutosegError, match="non-integer"):
        compute_metrics(gt + 0.5, gt, (1, 1, 1), [3])
    with pytest.raises(AutosegError, match="spacing"):
        compute_metrics(gt, gt, (1, 0, 1), [3])
    with pytest.raises(AutosegError, match="unknown preset"):
        compute_metrics(gt, gt, (1, 1, 1), [3], "flare99")
