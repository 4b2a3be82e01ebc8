"""Resampling, normalisation and cropping: exactness, geometry, thin structures, memory slabs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import autoseg.preprocessing.resample as rs
from autoseg.preprocessing import (bbox_with_margin, compute_new_shape, crop_to_body, needs_anisotropic,
                                   normalize_ct, resample_image, resample_labels, resample_logits)
from autoseg.preprocessing.preprocessor import annotated_stage_classes, stage_lut, tumours_to_hosts


def _smooth(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 1, *[max(2, s // 4) for s in shape]), generator=g)
    return F.interpolate(x, size=shape, mode="trilinear", align_corners=False)[0]


def test_linear_upsampling_matches_torch_trilinear():
    x = torch.randn(2, 7, 9, 11)
    for shape in [(13, 20, 17), (7, 18, 30), (9, 9, 11)]:
        ref = F.interpolate(x[None], size=shape, mode="trilinear", align_corners=False)[0]
        assert torch.allclose(resample_image(x, shape), ref, atol=1e-5)
    assert torch.allclose(resample_logits(x, (13, 20, 17)),
                          F.interpolate(x[None], size=(13, 20, 17), mode="trilinear", align_corners=False)[0],
                          atol=1e-5)


def test_slabs_do_not_change_the_result(monkeypatch):
    x = _smooth((30, 24, 20))
    full = resample_image(x, (17, 40, 12))
    lab = (x[0] > 0).to(torch.int8) + (x[0] > 0.5).to(torch.int8)
    full_lab = resample_labels(lab, (17, 40, 12), 3)
    monkeypatch.setattr(rs, "_SLAB_ELEMS", 500)  # forces one or two output slices per slab
    assert torch.allclose(resample_image(x, (17, 40, 12)), full, atol=1e-6)
    assert torch.equal(resample_labels(lab, (17, 40, 12), 3), full_lab)


def test_integer_input_and_antialiased_downsampling():
    x = torch.zeros(1, 8, 32, 32, dtype=torch.int16)
    x[..., ::2] = 1000  # a pattern at the Nyquist limit: plain subsampling would keep only one phase
    out = resample_image(x, (8, 16, 16))
    assert out.dtype == torch.float32
    inner = out[..., 1:-1]  # the border voxels see only part of the filter
    assert torch.allclose(inner, torch.full_like(inner, 500.0), atol=1.0)
    const = torch.full((1, 20, 20, 20), 7.0)
    assert torch.allclose(resample_image(const, (6, 9, 13)), torch.full((1, 6, 9, 13), 7.0), atol=1e-5)


def test_geometry_round_trip_keeps_physical_position():
    """A blob resampled to a coarser grid and back stays where it was (no half-voxel shift)."""
    shape, spacing, target = (40, 60, 60), (2.0, 0.8, 0.8), (3.0, 1.7, 1.7)
    zz, yy, xx = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    blob = torch.exp(-(((zz - 17.3) * 2) ** 2 + ((yy - 25.6) * 0.8) ** 2 + ((xx - 33.1) * 0.8) ** 2) / 200)[None]
    coarse_shape = compute_new_shape(shape, spacing, target)
    coarse = resample_image(blob, coarse_shape)
    back = resample_image(coarse, shape)

    def centre_mm(v, sp):
        g = torch.meshgrid(*[(torch.arange(n, dtype=torch.float64) + 0.5) * s for n, s in zip(v.shape[1:], sp)],
                           indexing="ij")
        w = v[0].double()
        return [float((gi * w).sum() / w.sum()) for gi in g]
    real_sp = [s * n / m for s, n, m in zip(spacing, shape, coarse_shape)]
    assert np.allclose(centre_mm(coarse, real_sp), centre_mm(blob, spacing), atol=0.3)
    assert np.allclose(centre_mm(back, spacing), centre_mm(blob, spacing), atol=0.3)
    assert float((back - blob).abs().max()) < 0.1


def test_anisotropic_upsampling_copies_thick_slices():
    x = torch.randn(1, 5, 16, 16)
    out = resample_image(x, (15, 16, 16), anisotropic=True)
    for k in range(15):
        assert any(torch.equal(out[0, k], x[0, j]) for j in range(5))  # no blend of two slices
    assert needs_anisotropic((5.0, 0.8, 0.8)) and not needs_anisotropic((2.0, 0.8, 0.8))
    assert needs_anisotropic((1.0, 1.0, 1.0), (5.0, 1.0, 1.0))


def test_labels_match_one_hot_linear_argmax():
    lab = (_smooth((12, 14, 16), seed=3)[0] * 3).round().clamp(-1, 3).to(torch.int8)
    for shape in [(7, 9, 11), (20, 25, 29)]:
        onehot = torch.stack([(lab == c).float() for c in range(-1, 4)])[None]
        prob = F.interpolate(onehot, size=shape, mode="trilinear", align_corners=False)[0]
        ref = (prob.argmax(0) - 1).to(torch.int8)
        out = resample_labels(lab, shape, 4)
        assert out.dtype == torch.int8
        assert (out != ref).float().mean() < 0.002  # differences only at exact ties


def test_labels_keep_thin_structures_and_borders():
    lab = torch.zeros(30, 60, 60, dtype=torch.int8)
    lab[:, :, 30:] = 1                 # a half space: its border must not move
    lab[:, 17, :] = 2                  # one-voxel-thin plane
    lab[5:25, 10:50, 7] = 3            # thin sheet along x
    lab[12, 40, 45] = 4                # a single voxel
    out = resample_labels(lab, (10, 20, 20), 5)
    assert set(torch.unique(out).tolist()) == {0, 1, 2, 3, 4}
    assert (out[:, 0, :10] == 0).all() and (out[:, 0, 10:] == 1).all()
    up = resample_labels(lab, (60, 120, 120), 5)
    assert (up[:, 0, :60] == 0).all() and (up[:, 0, 60:] == 1).all()
    assert set(torch.unique(up).tolist()) == {0, 1, 2, 3, 4}


def test_normalize_ct_in_place():
    x = torch.tensor([-2000.0, 0.0, 100.0, 3000.0])
    out = normalize_ct(x, {"scheme": "ct", "clip": [-100.0, 200.0], "mean": 50.0, "std": 25.0})
    assert out.data_ptr() == x.data_ptr()
    assert torch.allclose(out, torch.tensor([-6.0, -2.0, 2.0, 6.0]))
    y = normalize_ct(torch.tensor([0, 100], dtype=torch.int16), {"clip": [0, 100], "mean": 0, "std": 100})
    assert y.dtype == torch.float32 and torch.allclose(y, torch.tensor([0.0, 1.0]))


def test_crop_to_body_and_margins():
    img = np.full((40, 80, 80), -1000, np.int16)
    img[5:35, 20:60, 10:70] = 30
    img[0, 0, 0] = 500  # a speck of noise outside the body is not the largest component
    box = crop_to_body(img)
    assert box[0][0] <= 5 and box[0][1] >= 35 and box[1][0] <= 20 and box[1][1] >= 60
    assert box[2][0] <= 10 and box[2][1] >= 70
    assert box[1][1] - box[1][0] <= 40 + 10 and box[2][1] - box[2][0] <= 60 + 10
    assert crop_to_body(np.full((10, 10, 10), -1000)) == [[0, 10], [0, 10], [0, 10]]
    mask = np.zeros((40, 80, 80), bool)
    mask[10:20, 30:40, 30:40] = True
    assert bbox_with_margin(mask, (2.5, 1.0, 1.0), [5.0, 3.0, 50.0], mask.shape) == [[8, 22], [27, 43], [0, 80]]
    assert bbox_with_margin(np.zeros((4, 5, 6)), (1, 1, 1), 3, (4, 5, 6)) == [[0, 4], [0, 5], [0, 6]]
    assert bbox_with_margin([[1, 2], [1, 2], [1, 2]], (1, 1, 1), 1.5, (9, 9, 9)) == [[0, 4], [0, 4], [0, 4]]


def test_stage_lut_partial_labels_and_tumours_to_hosts():
    plans = {"labels": {"background": 0, "liver": 1, "spleen": 2, "tumour": 3},
             "stages": {"organ": {"classes": [1, 2]}, "tumour": {"classes": [3]}, "roi": {"classes": "foreground"}}}
    assert stage_lut(plans, "organ", 3, None).tolist() == [0, 1, 2, 0]
    assert stage_lut(plans, "roi", 3, None).tolist() == [0, 1, 1, 1]
    # spleen not annotated: background 0 means "background or spleen" (the marginal loss merges them)
    assert stage_lut(plans, "organ", 3, [1, 3]).tolist() == [0, 1, 0, 0]
    assert annotated_stage_classes(plans, "organ", [1, 3]) == [1] and annotated_stage_classes(plans, "organ", None) is None
    assert stage_lut(plans, "roi", 3, [1, 3]).tolist() == [-1, 1, 1, 1]  # binary stage: background unknown
    assert stage_lut(plans, "tumour", 3, [1, 2]).tolist() == [-1, -1, -1, -1]  # no tumour annotation at all
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[2:8, 2:8, 2:8] = 1
    lab[4:6, 4:6, 4:6] = 3      # inside the liver
    lab[0, 0, 9] = 3            # touching nothing
    out = tumours_to_hosts(lab, [3], [1, 2])
    assert (out[4:6, 4:6, 4:6] == 1).all() and out[0, 0, 9] == 0 and (lab[4:6, 4:6, 4:6] == 3).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_same_results_on_gpu():
    x = _smooth((20, 30, 30))
    lab = (x[0] > 0).to(torch.int8)
    assert torch.allclose(resample_image(x.cuda(), (9, 41, 17)).cpu(), resample_image(x, (9, 41, 17)), atol=1e-4)
    assert torch.equal(resample_labels(lab.cuda(), (9, 41, 17), 2).cpu(), resample_labels(lab, (9, 41, 17), 2))
