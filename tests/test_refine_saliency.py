"""Training a refinement stage on its source stage's predictions: the coarse-saliency cache is made from
the source checkpoint and read by the trainer from the configured iteration on; missing inputs give
one-line errors."""
import json

import numpy as np
import pytest
import torch

from autoseg import AutosegError
from autoseg.cli import main
from autoseg.datasets import Case
from autoseg.inference.random_models import write_random_checkpoints
from autoseg.io import Geometry, write_image
from autoseg.plans import save_plans
from autoseg.preprocessing.coarse_saliency import coarse_folder, predict_coarse_saliency
from autoseg.preprocessing.preprocessor import preprocess_case
from autoseg.trainers.data import BatchStream, CaseStore
from autoseg.trainers.saliency_schedule import CoarseSaliencySampler
from autoseg.trainers.trainer import Trainer
from tests.test_inference_cascade import SPACING, phantom
from tests.test_inference_refinement import refine_plans

KIDNEY_EVERYWHERE = torch.tensor([0.0, 0.0, 5.0])  # output bias of a zeroed organ network: class 2 wins


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Three phantom cases preprocessed for the organ and refinement stages, and an organ checkpoint
    whose network predicts the kidney (label 2, the refined class) everywhere."""
    root = tmp_path_factory.mktemp("refine")
    plans = refine_plans()
    pre = root / "preprocessed" / plans["dataset_name"]
    pre.mkdir(parents=True)
    save_plans(plans, pre / "plans.json")
    for i in range(3):
        img, gt = phantom()
        img, gt = np.roll(img, 2 * i, axis=2), np.roll(gt, 2 * i, axis=2)
        geo = Geometry(tuple(SPACING), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), img.shape)
        write_image(img, geo, root / "raw" / f"case_{i}_0000.nii.gz")
        write_image(gt, geo, root / "raw" / f"case_{i}.nii.gz")
        case = Case(f"case_{i}", [root / "raw" / f"case_{i}_0000.nii.gz"], root / "raw" / f"case_{i}.nii.gz")
        preprocess_case(case, plans, pre, stages=["organ", "refine"], device="cpu")
    ckpt = write_random_checkpoints(plans, root / "results", stages=["organ"])["organ"][0]
    state = torch.load(ckpt, weights_only=True)
    for name, w in state["network_weights"].items():
        if w.is_floating_point():
            w.zero_()
            if w.shape == (3,) and name.endswith("bias"):
                w.copy_(KIDNEY_EVERYWHERE)
    torch.save(state, ckpt)
    return plans, pre, ckpt


class NoSpatial(Trainer):
    """Patches cut exactly (no rotation), so a patch's saliency values are the cache's."""

    gt_saliency_until = 0.5

    def spatial_augmenter(self):
        return None


def _trainer(cls, plans, pre, tmp_path, epochs=2, iters=2):
    t = cls(plans, "refine", "all", pre, "cpu", tmp_path / "out", num_epochs=epochs, iters_per_epoch=iters,
            num_workers=0)
    t.setup_cases()
    return t


def test_coarse_saliency_is_predicted_once_and_marked(tiny):
    plans, pre, ckpt = tiny
    made = predict_coarse_saliency(plans, "refine", pre, ckpt, "all", "cpu")
    assert made == ["case_0", "case_1", "case_2"]
    folder = coarse_folder(pre, "refine", "all")
    meta = json.loads((folder / "case_0.json").read_text())
    assert meta["kind"] == "coarse_prediction" and meta["source_stage"] == "organ" and meta["classes"] == [2]
    assert len(meta["checkpoint_sha256"]) == 64 and meta["dsc_to_ground_truth"][0] < 0.9
    with np.load(folder / "case_0.npz") as z, np.load(pre / "refine" / "case_0.npz") as c:
        sal, data = z["saliency"], c["data"]
    assert sal.shape == (1, *data.shape[1:]) and sal.dtype == np.float16
    assert np.all(sal == 1.0)  # "kidney everywhere" inside the organ stage's crop, which holds this crop
    assert not np.all(data[1] == 1.0)  # the cache's own channel is the ground truth
    assert predict_coarse_saliency(plans, "refine", pre, ckpt, "all", "cpu") == []  # same checkpoint: kept


def test_schedule_switches_to_the_coarse_saliency_at_the_configured_iteration(tiny, tmp_path):
    plans, pre, ckpt = tiny
    predict_coarse_saliency(plans, "refine", pre, ckpt, "all", "cpu")
    t = _trainer(NoSpatial, plans, pre, tmp_path, epochs=2, iters=3)  # 6 iterations, switch at round(0.5 * 6)
    assert t.saliency_switch_iteration() == 3
    sampler = t.training_sampler(CaseStore(pre / "refine", t.train_cases))
    assert isinstance(sampler, CoarseSaliencySampler)
    np.random.seed(0)
    for it in range(5):
        batch = sampler.sample_batch()
        inside = batch["seg"][:, 0] >= 0  # voxels of the case (padding is -1)
        sal = batch["data"][:, 1][inside]
        if it < 3:
            assert not batch["coarse"].any() and (sal < 1).any()  # ground-truth masks: background too
        else:
            assert batch["coarse"].all() and np.all(sal == 1.0)
    resumed = t._sampler(CaseStore(pre / "refine", t.train_cases), t.train_cases, 3, 3, 1.0, None)
    assert resumed.sample_batch()["coarse"].all()  # a run resumed at iteration 3 is past the switch
    out = BatchStream(sampler, t.training_transforms(), 0).next_batch()
    assert "coarse" not in out and torch.all(out["data"][:, 1][out["seg"][:, 0] >= 0] == 1.0)  # not degraded
    data = np.load(pre / "refine" / "case_1.npz")["data"]
    fed = t.validation_input("case_1", data)
    assert np.array_equal(fed[0], data[0]) and np.all(fed[1] == 1.0)


def test_ground_truth_only_schedule_needs_no_predictions(tiny, tmp_path):
    plans, pre, _ = tiny

    class GtOnly(NoSpatial):
        gt_saliency_until = 1.0

    t = _trainer(GtOnly, plans, pre, tmp_path)
    assert t.saliency_switch_iteration() is None and t.coarse_saliency_dir() is None
    assert type(t.training_sampler(CaseStore(pre / "refine", t.train_cases))).__name__ == "PatchSampler"


def test_missing_predictions_and_missing_organ_checkpoint_are_one_line_errors(tiny, tmp_path, monkeypatch, capsys):
    plans, pre, _ = tiny

    class OtherFold(NoSpatial):
        coarse_saliency_fold = "3"

    with pytest.raises(AutosegError) as e:
        _trainer(OtherFold, plans, pre, tmp_path).coarse_saliency_dir()
    msg = str(e.value)
    assert "\n" not in msg and "fold_3" in msg and "autoseg refine_saliency refine" in msg
    with pytest.raises(AutosegError, match="no checkpoint of stage 'organ'") as e:
        predict_coarse_saliency(plans, "refine", pre, tmp_path / "nope.pt", 0, "cpu")
    assert "\n" not in str(e.value)
    monkeypatch.setenv("AUTOSEG_PREPROCESSED", str(pre.parent))
    monkeypatch.setenv("AUTOSEG_RESULTS", str(tmp_path / "empty_results"))
    assert main(["refine_saliency", "refine", plans["dataset_name"], "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no checkpoint of stage 'organ'" in err and "fold_0" in err
    assert main(["refine_saliency", "organ", plans["dataset_name"], "0"]) == 1
    assert "reads no saliency" in capsys.readouterr().err
