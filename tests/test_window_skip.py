"""Windows outside the body / ROI mask are skipped: same labels inside the mask, background outside."""
import numpy as np
import pytest
import torch

from autoseg.inference.predictor import CascadePredictor
from autoseg.inference.profiling import CaseProfile, format_profile
from autoseg.inference.random_models import tiny_plans, write_random_checkpoints
from autoseg.inference.sliding_window import BACKGROUND_LOGIT, predict_sliding_window
from autoseg.inference.window_mask import CoarseBody, WindowScope
from autoseg.preprocessing.crop import crop_to_body

PATCH = (16, 32, 32)


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Conv3d(1, 3, 3, padding=1)


@pytest.mark.parametrize("gaussian", [True, False])
def test_half_the_windows_outside_the_mask(gaussian):
    torch.manual_seed(2)
    img = torch.randn(1, 30, 40, 128)
    mask = torch.zeros(30, 40, 128, dtype=torch.bool)
    mask[5:20, 10:30, 3:40] = True  # x < 40: the windows starting at x >= 48 (4 of 7) see none of it
    full, part = {}, {}
    ref = predict_sliding_window(_net(), img, PATCH, 3, gaussian=gaussian, stats=full)
    got = predict_sliding_window(_net(), img, PATCH, 3, gaussian=gaussian, mask=mask, stats=part)
    assert full == {"computed": 42, "skipped": 0}  # 3 z x 2 y x 7 x starts
    assert part == {"computed": 18, "skipped": 24}
    torch.testing.assert_close(got[:, mask], ref[:, mask], rtol=0, atol=0)
    assert torch.equal(got.argmax(0)[mask], ref.argmax(0)[mask])
    far = got[:, :, :, 64:]  # covered by no computed window (the last computed one starts at x = 32)
    assert torch.isfinite(got).all() and (far.argmax(0) == 0).all()
    assert (far[0] == BACKGROUND_LOGIT).all() and (far[1:] == 0).all()


@pytest.mark.parametrize("shape", [(30, 40, 128), (5, 7, 9)])
def test_empty_mask_is_all_background(shape):
    stats: dict = {}
    img = torch.randn(1, *shape)
    out = predict_sliding_window(_net(), img, PATCH, 3, mask=torch.zeros(shape, dtype=torch.bool), stats=stats)
    assert out.shape == (3, *shape) and torch.isfinite(out).all()
    assert (out.argmax(0) == 0).all() and stats["computed"] == 0 and stats["skipped"] >= 1


def test_mask_shape_is_checked():
    with pytest.raises(ValueError, match="mask shape"):
        predict_sliding_window(_net(), torch.randn(1, 20, 32, 32), PATCH, 3, mask=torch.ones(20, 32, 31))


def _ct(shape=(16, 64, 160)) -> np.ndarray:
    """Air around a soft-tissue body: a disk with an air-filled 'lung' inside and a thin arm along its top
    to the right (so the body's box holds air windows: those below the arm)."""
    img = np.full(shape, -1000, np.int16)
    img[:, _disk(shape, 28, 35)] = 40
    img[:, 5:9, 40:150] = 40
    img[:, _disk(shape, 10, 10)] = -850  # inside the body, below -500 HU
    return img


def _disk(shape, ry: float, rx: float) -> np.ndarray:
    y, x = np.ogrid[:shape[1], :shape[2]]
    return ((y - 32) / ry) ** 2 + ((x - 40) / rx) ** 2 <= 1


def test_body_mask_keeps_lungs_and_box_matches_crop_to_body():
    img = _ct()
    box, scope = WindowScope.for_case(img, skip=True)
    assert box == crop_to_body(img)
    grid = scope.stage_mask(box, [s // 2 for s in (box[0][1] - box[0][0], box[1][1] - box[1][0],
                                                  box[2][1] - box[2][0])], torch.device("cpu"))
    assert grid.dtype == torch.bool and grid.any()
    body = CoarseBody.of(img)
    centre = body.in_grid([[8, 9], [32, 33], [40, 41]], [1, 1, 1], torch.device("cpu"))
    assert bool(centre.all())  # the lung in the middle of the body is not skipped
    assert WindowScope.for_case(np.full((8, 8, 8), -1000, np.int16), skip=True)[1].body is None


def test_predictor_skips_air_windows_with_the_same_labels_inside_the_body(tmp_path):
    plans = tiny_plans(stages=("organ",))
    ckpts = write_random_checkpoints(plans, tmp_path)
    img = _ct()
    spacing = (2.5, 2.0, 2.0)
    outs, profs = [], []
    for skip in (False, True):
        pred = CascadePredictor(ckpts, device="cpu", precision="fp32", postprocess=False)
        pred.skip_air_windows = skip
        prof = CaseProfile(torch.device("cpu"))
        outs.append(pred.predict_array(img, spacing, prof))
        profs.append(prof.summary())
    body = img > -900
    assert np.array_equal(outs[0][body], outs[1][body])
    w0, w1 = profs[0]["windows"]["organ"], profs[1]["windows"]["organ"]
    assert w0["skipped"] == 0 and w1["skipped"] > 0 and w0["computed"] == w1["computed"] + w1["skipped"]
    assert "organ windows" in format_profile("case", profs[1])
