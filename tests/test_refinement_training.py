"""Training input of a refinement stage: ground-truth saliency degraded like a coarse prediction."""
import copy

import numpy as np

from autoseg.trainers.saliency import SaliencyPerturbation, with_saliency_perturbation
from tests.test_inference_refinement import refine_plans


def test_perturbation_degrades_only_the_saliency_channels():
    np.random.seed(0)
    data = np.zeros((8, 2, 12, 16, 16), np.float32)
    data[:, 0] = np.random.rand(8, 12, 16, 16)
    data[:, 1, 4:8, 5:11, 5:11] = 1.0
    before = data.copy()
    out = SaliencyPerturbation(1, p_clean=0.25)(data=data, seg=None)["data"]
    assert np.array_equal(out[:, 0], before[:, 0])
    changed = [not np.array_equal(out[b, 1], before[b, 1]) for b in range(8)]
    assert 2 <= sum(changed) <= 8 and out[:, 1].min() >= 0 and out[:, 1].max() <= 1


def test_only_saliency_stages_get_the_perturbation():
    plans = refine_plans()
    marker = object()
    assert with_saliency_perturbation(marker, plans, "organ") is marker
    composed = with_saliency_perturbation(marker, copy.deepcopy(plans), "refine")
    assert isinstance(composed.transforms[0], SaliencyPerturbation) and composed.transforms[0].first == 1
    assert composed.transforms[1].transforms is marker


def test_saliency_channels_follow_mirroring_but_not_intensity_transforms():
    from autoseg.augmentation import AugmentationConfig, training_transforms
    from autoseg.trainers.saliency import ShieldSaliency

    np.random.seed(1)
    data = np.random.rand(4, 2, 8, 16, 16).astype(np.float32)
    mask = np.zeros((4, 1, 8, 16, 16), np.int8)
    mask[:, :, 2:5, 1:6, 3:12] = 1
    data[:, 1] = mask[:, 0]
    cfg = AugmentationConfig(p_noise=1.0, p_brightness=1.0, p_gamma=1.0)
    out = ShieldSaliency(training_transforms((8, 16, 16), cfg), 1)(data=data.copy(), seg=mask.copy())
    assert out["seg"].dtype == np.int8 and out["data"].shape == data.shape
    assert np.array_equal(out["data"][:, 1], out["seg"][:, 0].astype(np.float32))  # mirrored together, exact
    assert not np.allclose(out["data"][:, 0], data[:, 0])  # the image itself was transformed
