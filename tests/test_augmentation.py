"""Augmentation pipeline shapes/labels, sample-size enlargement, patch sampling and cache reading."""
import numpy as np
import pytest

from autoseg.augmentation import (AugmentationConfig, SpatialAugmenter, SpatialParams, is_anisotropic,
                                  training_transforms)
from autoseg.utils import save_npz
from autoseg.trainers.data import BatchStream, CaseStore, PatchSampler, crop_padded, open_case_arrays


def _volume(shape=(30, 40, 50)):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(1, *shape)).astype(np.float32)
    seg = np.zeros((1, *shape), np.int8)
    seg[0, 10:20, 10:30, 20:40] = 1
    seg[0, 0] = -1
    return data, seg


def test_identity_and_quarter_turn_are_exact():
    data, seg = _volume()
    aug = SpatialAugmenter((8, 12, 16))
    center = [15 - 0.5, 20 + 0.5, 25 - 0.5]  # patch start (11, 15, 17)
    d, s = aug.apply(data, seg, SpatialParams(np.eye(3)), center)
    assert np.allclose(d, data[:, 11:19, 15:27, 17:33]) and np.array_equal(s, seg[:, 11:19, 15:27, 17:33])
    turn = SpatialParams(np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]))  # in-plane quarter turn
    aug2 = SpatialAugmenter((8, 12, 12))
    d2, _ = aug2.apply(data, seg, turn, [15.5, 20.5, 25.5])
    ref = data[:, 12:20, 15:27, 20:32]
    assert np.allclose(d2[0], np.rot90(ref[0], k=1, axes=(1, 2))) or np.allclose(d2[0], np.rot90(ref[0], -1, (1, 2)))


@pytest.mark.parametrize("patch,spacing,dummy", [((16, 24, 24), (1.0, 1.0, 1.0), False),
                                                 ((4, 32, 32), (5.0, 0.8, 0.8), True)])
def test_spatial_draws_stay_inside_their_box(patch, spacing, dummy):
    assert is_anisotropic(patch, spacing) == dummy
    cfg = AugmentationConfig(p_rotation=1.0, p_scale=1.0, elastic=True, p_elastic=0.5)
    aug = SpatialAugmenter(patch, cfg, spacing)
    data, seg = _volume((60, 80, 80))
    np.random.seed(0)
    for _ in range(4):
        params = aug.draw()
        assert params is not None
        if dummy:
            assert np.allclose(params.matrix[0], [1, 0, 0]) and np.allclose(params.matrix[:, 0], [1, 0, 0])
        center = [30.0, 40.0, 40.0]
        lo, size = aug.input_box(center, params)
        region_d = crop_padded(data, lo, size, 0.0, np.float32)
        region_s = crop_padded(seg, lo, size, -1, np.int8)
        d, s = aug.apply(region_d, region_s, params, [c - o for c, o in zip(center, lo)])
        full_d, full_s = aug.apply(data, seg, params, center)  # same transform on the whole volume
        assert d.shape == (1, *patch) and s.dtype == np.int8
        assert np.allclose(d, full_d, atol=1e-5) and np.array_equal(s, full_s)
        assert set(np.unique(s).tolist()) <= {-1, 0, 1}


def test_most_samples_are_only_cut_and_transforms_keep_shapes():
    aug = SpatialAugmenter((16, 16, 16))
    np.random.seed(1)
    cut = sum(aug.draw() is None for _ in range(400))
    assert 220 < cut < 300  # (1 - 0.2) * (1 - 0.2) = 64 % are neither rotated nor scaled
    data, seg = _volume((16, 16, 16))
    batch = {"data": np.stack([data, data]), "seg": np.stack([seg, seg])}
    for seed in range(3):
        np.random.seed(seed)
        out = training_transforms((16, 16, 16), AugmentationConfig(p_lowres=1.0, p_gamma=1.0))(**batch)
        assert out["data"].shape == (2, 1, 16, 16, 16) and out["seg"].dtype == np.int8
        assert set(np.unique(out["seg"]).tolist()) <= {-1, 0, 1}


def test_crop_padded_and_small_case_padding():
    arr = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    out = crop_padded(arr, [-1, 1, 2], [4, 4, 4], -7.0, np.float32)
    assert out.shape == (2, 4, 4, 4)
    assert (out[:, 0] == -7).all() and (out[:, :, 3] == -7).all() and (out[:, :, :, 3] == -7).all()
    assert np.array_equal(out[:, 1:4, 0:3, 0:3], arr[:, :, 1:4, 2:5])


def _write_case(folder, cid, shape, fg_at):
    data = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float16)
    seg = np.zeros((1, *shape), np.int8)
    seg[(0, *fg_at)] = 1
    save_npz(folder / f"{cid}.npz", data=data, seg=seg)
    import json
    (folder / f"{cid}.json").write_text(json.dumps({"case_id": cid, "class_locations": {"1": [list(fg_at)]}}))


def test_sampler_pads_small_cases_and_oversamples_foreground(tmp_path):
    _write_case(tmp_path, "small", (6, 10, 10), (3, 5, 5))
    _write_case(tmp_path, "big", (40, 40, 40), (35, 35, 35))
    store = CaseStore(tmp_path, ["small", "big"])
    data, seg = store.arrays("big")
    assert isinstance(data, np.memmap) and data.dtype == np.float16 and seg.shape == (1, 40, 40, 40)
    np.random.seed(0)
    sampler = PatchSampler(store, ["small"], 2, (16, 16, 16), oversample_foreground=1.0)
    b = sampler.sample_batch()
    assert b["data"].shape == (2, 1, 16, 16, 16) and (b["seg"] == -1).any()  # padding is "unknown"
    fg = PatchSampler(store, ["big"], 4, (8, 8, 8), oversample_foreground=1.0)
    assert all((fg.sample_batch()["seg"] == 1).sum() == 4 for _ in range(3))  # every patch holds the voxel
    rotating = PatchSampler(store, ["big", "small"], 2, (8, 8, 8), 0.5,
                            SpatialAugmenter((8, 8, 8), AugmentationConfig(p_rotation=1.0)))
    assert rotating.sample_batch()["data"].shape == (2, 1, 8, 8, 8)
    stream = BatchStream(fg, None, seed=0)
    batch = stream.next_batch()
    assert batch["data"].dtype.is_floating_point and str(batch["seg"].dtype) == "torch.int8"


def test_compressed_cache_is_unpacked_once(tmp_path):
    d = np.ones((1, 3, 4, 5), np.float16)
    s = np.zeros((1, 3, 4, 5), np.int8)
    save_npz(tmp_path / "c.npz", compress=True, data=d, seg=s)
    a, b = open_case_arrays(tmp_path / "c.npz")
    assert np.array_equal(a, d) and np.array_equal(b, s)
    assert (tmp_path / "unpacked" / "c_data.npy").is_file()
