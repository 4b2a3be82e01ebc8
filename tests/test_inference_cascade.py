"""The cascade's logic with hand-made voxel-wise networks whose right answer is known."""
import numpy as np
import pytest
import torch

from autoseg.evaluation.metrics import dice
from autoseg.inference.boxes import device_bbox, main_components_bbox
from autoseg.inference.predictor import CascadePredictor
from autoseg.inference.random_models import tiny_plans, write_random_checkpoints

SPACING = (2.0, 1.5, 1.5)


class Voxelwise(torch.nn.Module):
    """Logits from the normalised intensity of each voxel (x = HU / 100 with the tiny plans)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def roi_net(x):  # foreground where HU > 50
    return torch.cat([torch.zeros_like(x), 10 * (x - 0.5)], 1)


def organ_net(x):  # nearest of body 0 HU, liver 100 HU, kidney 250 HU
    return torch.cat([-(x - c) ** 2 for c in (0.0, 1.0, 2.5)], 1) * 10


def tumour_net(x):  # tumour where 120 < HU < 180
    return torch.cat([torch.zeros_like(x), 10 * (0.09 - (x - 1.5) ** 2)], 1)


def phantom():
    img = np.full((30, 64, 60), -1000, np.int16)
    gt = np.zeros(img.shape, np.uint8)
    img[2:28, 4:60, 4:56] = 0  # body
    img[6:20, 10:34, 10:36] = 100
    gt[6:20, 10:34, 10:36] = 1  # liver
    img[9:14, 15:22, 15:23] = 150
    gt[9:14, 15:22, 15:23] = 3  # tumour inside the liver
    img[8:16, 12:22, 40:48] = 250
    gt[8:16, 12:22, 40:48] = 2  # kidney
    img[24:26, 50:53, 50:53] = 100  # small bright decoy far away: the ROI pass must drop it
    return img, gt


@pytest.fixture
def predictor(tmp_path):
    ckpts = write_random_checkpoints(tiny_plans(), tmp_path)
    p = CascadePredictor(ckpts, device="cpu")
    for stage, fn in (("roi", roi_net), ("organ", organ_net), ("tumour", tumour_net)):
        p.stages[stage].network = Voxelwise(fn)
    return p


def test_cascade_exact_at_native_spacing(predictor):
    img, gt = phantom()
    predictor.stages["organ"].plans["stages"]["organ"]["target_spacing"] = list(SPACING)
    out = predictor.predict_array(img, SPACING)
    assert out.shape == img.shape and out.dtype == np.uint8
    gt[24:26, 50:53, 50:53] = 0  # decoy outside the ROI box stays background
    assert np.array_equal(out, gt)


def test_cascade_with_resampling(predictor):
    img, gt = phantom()
    out = predictor.predict_array(img, SPACING)  # organ stage at 2.5 x 2 x 2 mm
    assert np.array_equal(out == 3, gt == 3)  # tumour stage runs at the data's spacing: exact
    # a voxel-wise net labels the partial-volume rim of the bright kidney as liver: loose bounds
    assert dice(gt == 1, out == 1) > 0.9 and dice(gt == 2, out == 2) > 0.75
    assert not out[24:26, 50:53, 50:53].any()


def test_no_cascade_searches_whole_body(predictor):
    img, gt = phantom()
    predictor.use_roi = False
    out = predictor.predict_array(img, SPACING)
    assert out[24:26, 50:53, 50:53].any()  # without the ROI pass the decoy is labelled liver
    assert np.array_equal(out == 3, gt == 3)


def test_empty_roi_falls_back_to_body(predictor):
    img, gt = phantom()
    predictor.stages["roi"].network = Voxelwise(lambda x: torch.cat([x * 0 + 1, x * 0], 1))
    out = predictor.predict_array(img, SPACING)
    assert dice(gt == 1, out == 1) > 0.9


def test_no_host_organ_skips_tumour(predictor):
    img, _ = phantom()
    predictor.stages["organ"].network = Voxelwise(lambda x: torch.cat([x * 0 + 1, x * 0, x * 0], 1))
    assert not predictor.predict_array(img, SPACING).any()


def test_postprocessing_rules_applied(predictor):
    img, gt = phantom()
    predictor.use_roi = False
    predictor.rules = {"1": {"keep_largest": True}}
    out = predictor.predict_array(img, SPACING)
    assert not out[24:26, 50:53, 50:53].any() and dice(gt == 1, out == 1) > 0.9


def test_probabilities_sum_to_one(tmp_path):
    ckpts = write_random_checkpoints(tiny_plans(stages=("organ",)), tmp_path)
    p = CascadePredictor(ckpts, device="cpu", save_probabilities=True)
    img, _ = phantom()
    labels, probs = p.predict_array_full(img[:20, :40, :40], SPACING)
    pr = probs["organ"]["probabilities"].float()
    assert pr.shape[0] == 3 and tuple(pr.shape[1:]) == tuple(np.diff(probs["organ"]["bbox"]).ravel())
    torch.testing.assert_close(pr.sum(0), torch.ones(pr.shape[1:]), atol=5e-3, rtol=0)


def test_probability_boxes_are_in_image_coordinates(predictor):
    """Later stages work inside the roi region; what they report (boxes) must be in the image's frame."""
    img, gt = phantom()
    predictor.stages["organ"].plans["stages"]["organ"]["target_spacing"] = list(SPACING)
    predictor.save_probabilities = True
    labels, probs = predictor.predict_array_full(img, SPACING)
    assert probs["organ"]["bbox"][0][0] > 0  # the roi crop starts inside the image: a real offset
    for stage in ("organ", "tumour"):
        d = probs[stage]
        sl = tuple(slice(lo, hi) for lo, hi in d["bbox"])
        argmax = np.asarray(d["classes"])[d["probabilities"].float().argmax(0).numpy()]
        if stage == "organ":
            keep = labels[sl] != 3  # tumour labels override organ labels
            assert np.array_equal(argmax[keep], labels[sl][keep])
        else:
            assert np.array_equal(argmax == 3, labels[sl] == 3)
    assert np.array_equal(labels == 3, gt == 3)


def test_device_bbox():
    m = torch.zeros(5, 6, 7, dtype=torch.bool)
    assert device_bbox(m) is None
    m[1:3, 2, 4:7] = True
    assert device_bbox(m) == [[1, 3], [2, 3], [4, 7]]


def test_a_stage_cropped_from_labels_ignores_stray_islands(predictor):
    """The tumour stage's crop is its host organ's box; a false-positive island of that organ (below
    crop_min_component_fraction of its largest component) must not stretch it; two large parts both count."""
    out = torch.zeros(40, 40, 40, dtype=torch.uint8)
    out[10:20, 10:20, 10:20] = 1  # the liver: 1000 voxels
    out[38, 38, 38] = 1  # a 1-voxel false positive
    out[5:8, 30:33, 2:5] = 2  # another organ: not the tumour's host
    assert predictor._host_box(out, "tumour") == [[10, 20], [10, 20], [10, 20]]
    out[30:36, 30:36, 30:36] = 1  # a second large part (216 voxels, > 10 %) is kept
    assert predictor._host_box(out, "tumour") == [[10, 36], [10, 36], [10, 36]]
    predictor.crop_min_component_fraction = 0.0
    out[30:36, 30:36, 30:36] = 0
    assert predictor._host_box(out, "tumour") == [[10, 39], [10, 39], [10, 39]]  # every voxel counts
    assert main_components_bbox(np.zeros((3, 3, 3), bool), 0.1) is None


def test_cuda_oom_falls_back_to_lean_path(predictor, monkeypatch, caplog):
    from autoseg.inference.profiling import CaseProfile

    img, _ = phantom()
    vol, box, sm = torch.from_numpy(img), [[0, s] for s in img.shape], predictor.stages["organ"]
    with torch.inference_mode():
        expected = predictor._stage_labels(sm, vol, box, list(SPACING), {})
    real, calls = predictor._stage_labels, []

    def flaky(*a, **k):
        calls.append(predictor.lean)
        if not predictor.lean:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*a, **k)

    monkeypatch.setattr(predictor, "_stage_labels", flaky)
    predictor.device = torch.device("cuda")  # only consulted to decide whether to retry
    with caplog.at_level("WARNING"), torch.inference_mode():
        got = predictor._stage_safe(sm, vol, box, list(SPACING), {}, CaseProfile(torch.device("cpu")))
    assert calls == [False, True] and predictor.lean and "out of memory" in caplog.text
    assert torch.equal(got, expected) and (expected == 2).any()


def test_loaded_conv_weights_in_autocast_dtype_same_logits(tmp_path):
    """Checkpoints loaded for bf16/fp16 inference keep conv weights in that dtype (half the memory):
    the logits are bit-identical to autocasting float32 weights."""
    from autoseg.inference.models import load_stage_model

    ckpts = write_random_checkpoints(tiny_plans(), tmp_path)
    lean = CascadePredictor(ckpts, device="cpu", precision="bf16")
    ref = {s: load_stage_model(s, c, torch.device("cpu")) for s, c in ckpts.items()}
    for stage, sm in lean.stages.items():
        mods = list(sm.network.modules())
        convs = [m for m in mods if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
        norms = [m for m in mods if isinstance(m, torch.nn.InstanceNorm3d)]
        assert convs and all(m.weight.dtype == torch.bfloat16 for m in convs)
        assert norms and all(m.weight.dtype == torch.float32 for m in norms)
        assert all(p.dtype == torch.float32 for p in ref[stage].network.parameters())
        x = torch.randn(1, 1, *sm.patch_size)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(sm.network(x), ref[stage].network(x))
    img, _ = phantom()
    np.testing.assert_array_equal(lean.predict_array(img, SPACING),
                                  CascadePredictor(ref, device="cpu", precision="bf16").predict_array(img, SPACING))
    assert all(p.dtype == torch.float32 for p in CascadePredictor(ckpts, device="cpu", precision="fp32")
               .stages["organ"].network.parameters())


def test_paste_region_into_image_shape():
    out = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4)
    whole = CascadePredictor._paste(out, [[0, 2], [0, 3], [0, 4]], (2, 3, 4))
    assert np.array_equal(whole, out.numpy()) and whole.dtype == np.uint8
    part = CascadePredictor._paste(out.to(torch.int16), [[1, 3], [2, 5], [0, 4]], (4, 6, 4))
    assert part.dtype == np.int16 and part.shape == (4, 6, 4)
    assert np.array_equal(part[1:3, 2:5], out.numpy()) and part.sum() == out.sum()
