"""End-to-end cross-validation and model selection on tiny phantoms (2 folds, 2 trainers, 1-epoch models):
the last fold triggers evaluate_cv, find_best_configuration tries the ensemble, fold 'all' gets the
CV rules (or the conservative default without CV)."""
import json

import shutil

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.utils import load_json, save_json

TASK = 502
NAME = "Dataset502_Tiny"
TRAINERS = ("TrainerA", "TrainerB")


def _case(i: int) -> tuple[np.ndarray, np.ndarray]:
    img = np.full((16, 32, 32), -1000, np.int16)
    gt = np.zeros(img.shape, np.uint8)
    img[1:15, 2:30, 2:30] = 0
    img[3:11, 6:18 + i, 6:16] = 100
    gt[3:11, 6:18 + i, 6:16] = 1  # liver
    img[5:8, 9:12, 9:12] = 150
    gt[5:8, 9:12, 9:12] = 3  # tumour
    img[4:10, 8:14, 22:27] = 250
    gt[4:10, 8:14, 22:27] = 2  # kidney
    return img, gt


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Raw cases, plans + 2-fold splits, and random-weight checkpoints of two trainers: evaluate_cv needs
    no cache, only models, plans, splits and the raw cases (training is tested elsewhere)."""
    from autoseg.io import Geometry, write_image
    from autoseg.inference.random_models import tiny_plans, write_random_checkpoints

    root = tmp_path_factory.mktemp("cv")
    raw = root / "raw" / NAME
    geo = Geometry((2.5, 1.5, 1.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (16, 32, 32))
    ids = [f"tiny_{i:03d}" for i in range(4)]
    for i, cid in enumerate(ids):
        img, gt = _case(i)
        write_image(img, geo, raw / "imagesTr" / f"{cid}_0000.nii.gz")
        write_image(gt, geo, raw / "labelsTr" / f"{cid}.nii.gz")
    plans = tiny_plans(NAME)
    save_json({"channel_names": {"0": "CT"}, "labels": plans["labels"], "numTraining": 4,
               "file_ending": ".nii.gz"}, raw / "dataset.json")
    save_json(plans, root / "pre" / NAME / "plans.json")
    save_json([{"train": ids[2:], "val": ids[:2]}, {"train": ids[:2], "val": ids[2:]}],
              root / "pre" / NAME / "splits.json")
    for seed, trainer in enumerate(TRAINERS):
        write_random_checkpoints(plans, root / "res", folds=(0, 1), trainer=trainer, seed=seed)
    return root, list(plans["stages"])


@pytest.fixture(autouse=True)
def _env(trained, monkeypatch):
    root, _ = trained
    for k, v in (("AUTOSEG_RAW", "raw"), ("AUTOSEG_PREPROCESSED", "pre"), ("AUTOSEG_RESULTS", "res")):
        monkeypatch.setenv(k, str(root / v))


def test_last_fold_runs_cv_and_evaluate_cv_reports(trained, capsys):
    """run_training's after_fold hook: the last fold of a complete CV runs evaluate_cv by itself."""
    from autoseg.trainers.run import after_fold

    root, _ = trained
    ds = root / "res" / NAME
    after_fold(type("TrainerC", (), {"fold": 1, "stage": "tumour"})(), TASK, "cpu", None, None)
    assert not (ds / "crossval").exists()  # TrainerC has no folds: nothing to evaluate, no error
    stub = type("TrainerA", (), {"fold": 1, "stage": "tumour"})()
    after_fold(stub, TASK, "cpu", None, None)
    summary = load_json(ds / "crossval" / "TrainerA" / "summary.json")
    after = summary["after_postprocessing"]
    assert summary["num_folds"] == 2 and after["num_cases"] == 4 and sorted(summary["case_fold"].values()) == [0, 0, 1, 1]
    liver = after["per_class"]["liver"]
    assert set(liver["per_fold"]) == {"0", "1"} and len(liver["per_case"]) == 4
    assert liver["dsc"]["mean"] == pytest.approx(np.mean([c["dsc"] for c in liver["per_case"].values()]))
    assert len(list((ds / "crossval" / "TrainerA" / "predictions").glob("*.nii.gz"))) == 4
    assert main(["evaluate_cv", "-d", str(TASK), "-tr", "TrainerA", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "liver" in out and "DSC per fold" in out and "postprocessing.json" in out
    # a missing fold: a clear error naming it
    assert main(["evaluate_cv", "-t", str(TASK), "-tr", "TrainerC", "--no-progress"]) == 1
    assert "incomplete" in capsys.readouterr().err


def test_find_best_configuration_tries_ensemble(trained, capsys):
    root, _ = trained
    assert main(["find_best_configuration", "-t", str(TASK), "--no-progress"]) == 0
    out = capsys.readouterr().out
    best = load_json(root / "res" / NAME / "crossval" / "best_configuration.json")
    ens = "ensemble__TrainerA__TrainerB"
    assert set(best["mean_dsc"]) == {*TRAINERS, ens} and best["best"] in best["mean_dsc"]
    assert best["mean_dsc"][best["best"]] == max(best["mean_dsc"].values())
    assert "<- best" in out and "autoseg run_inference" in out
    ens_pred = root / "res" / NAME / "crossval" / ens / "predictions"
    assert len(list(ens_pred.glob("*.nii.gz"))) == 4
    # the ensemble command a user runs on two --save-probabilities folders gives the same masks
    cv = root / "res" / NAME / "crossval"
    assert main(["ensemble", "-i", str(cv / "TrainerA" / "predictions"), str(cv / "TrainerB" / "predictions"),
                 "-o", str(root / "ens_cli")]) == 0
    from autoseg.io import read_image
    for p in ens_pred.glob("*.nii.gz"):
        assert np.array_equal(read_image(p)[0], read_image(root / "ens_cli" / p.name)[0])


def test_fuse_members_averages_probabilities():
    from autoseg.evaluation.best_config import fuse_members

    a = {"organ": {"p": np.array([[[[0.4, 0.9]]], [[[0.6, 0.1]]]], np.float32), "bbox": [[0, 1], [0, 1], [0, 2]],
                   "classes": [0, 1]}}
    b = {"organ": {"p": np.array([[[[0.9]]], [[[0.1]]]], np.float32), "bbox": [[0, 1], [0, 1], [1, 2]],
                   "classes": [0, 1]}}
    c = {"organ": {"p": np.array([[[[0.1]]], [[[0.9]]]], np.float32), "bbox": [[0, 1], [0, 1], [1, 2]],
                   "classes": [0, 1]}}
    # voxel 0: a says 0.6 liver, b is outside its crop (background 1) -> mean 0.3: background
    assert fuse_members([a, b], (1, 1, 2)).tolist() == [[[0, 0]]]
    # voxel 1: a 0.1, c 0.9 -> 0.5 vs 0.5: argmax takes background; with c twice it is liver
    assert fuse_members([a, c, c], (1, 1, 2)).tolist() == [[[0, 1]]]


def test_fold_all_uses_cv_rules_else_default(trained, caplog):
    """Fold 'all' gets the conservative default when it finishes; CV rules, once learned, win for
    fold 'all' and fold ensembles alike."""
    from types import SimpleNamespace

    from autoseg.inference.predictor import CascadePredictor
    from autoseg.inference.random_models import tiny_plans
    from autoseg.trainers.run import after_fold

    root, _ = trained
    ds = root / "res" / NAME
    for stage in tiny_plans(NAME)["stages"]:
        shutil.copytree(ds / stage / "TrainerA" / "fold_0", ds / stage / "TrainerA" / "fold_all", dirs_exist_ok=True)
        (ds / stage / "TrainerA" / "fold_all" / "postprocessing.json").unlink(missing_ok=True)
    cache = root / "pre" / NAME / "organ"
    cache.mkdir(parents=True, exist_ok=True)
    two_kidneys = np.zeros((1, 8, 8, 8), np.int8)
    two_kidneys[0, 1:3, 1:3, 1:3] = 1  # liver (local class 1): one object
    two_kidneys[0, 1:3, 5:7, 1:3] = 2  # kidney (local class 2): two objects in this case
    two_kidneys[0, 5:7, 5:7, 5:7] = 2
    np.savez(cache / "c0.npz", data=np.zeros((1, 8, 8, 8), np.float16), seg=two_kidneys)
    trainer = SimpleNamespace(fold="all", stage="organ", output_folder=ds / "organ" / "TrainerA" / "fold_all",
                              dataset_folder=root / "pre" / NAME, train_cases=["c0"], class_values=[1, 2],
                              plans=tiny_plans(NAME))
    after_fold(trainer, TASK, "cpu", None, None)
    default = load_json(ds / "organ" / "TrainerA" / "fold_all" / "postprocessing.json")
    assert default["source"] == "default" and default["rules"] == {"1": {"keep_largest": True}}
    cv_file = ds / "crossval" / "TrainerA" / "postprocessing.json"
    if cv_file.exists():
        cv_file.rename(cv_file.with_suffix(".bak"))
    p = CascadePredictor.from_results(TASK, trainer="TrainerA", folds=["all"], device="cpu")
    assert p.rules == default["rules"] and "conservative default" in caplog.text
    save_json({"rules": {"3": {"min_size": 5, "min_volume_mm3": 40.0}}}, cv_file)
    for folds in (["all"], [0, 1]):
        p = CascadePredictor.from_results(TASK, trainer="TrainerA", folds=folds, device="cpu")
        assert p.rules == {"3": {"min_size": 5, "min_volume_mm3": 40.0}}
