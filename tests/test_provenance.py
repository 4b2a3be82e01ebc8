"""Models and caches are used only with the dataset, labels and plans they were made for."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from autoseg import AutosegError
from autoseg.inference.predictor import CascadePredictor
from autoseg.inference.random_models import tiny_plans, write_random_checkpoints
from autoseg.plans import load_plans
from autoseg.trainers import Trainer
from autoseg.trainers.synthetic_cache import synthetic_plans, write_synthetic_cache

NAME = "Dataset999_Tiny"


@pytest.fixture
def results(tmp_path, monkeypatch):
    for var in ("AUTOSEG_RAW", "AUTOSEG_PREPROCESSED", "AUTOSEG_RESULTS"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.delenv("nnUNet_raw", raising=False)
    res = tmp_path / "autoseg_results"
    write_random_checkpoints(tiny_plans(NAME), res)
    return res


def _plant(results, plans, stage, fold=0):
    """Write a checkpoint made for ``plans`` where the NAME dataset's ``stage`` model belongs."""
    other = results.parent / "elsewhere"
    src = write_random_checkpoints(plans, other, stages=[stage], folds=[fold])[stage][0]
    dst = results / NAME / stage / "Trainer" / f"fold_{fold}" / "checkpoint_final.pt"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def test_matching_stages_load(results):
    p = CascadePredictor.from_results(999, results=str(results), device="cpu")
    assert set(p.stages) == {"roi", "organ", "tumour"}


def test_tumour_model_of_another_dataset_refused(results):
    bad = _plant(results, tiny_plans("Dataset998_Other"), "tumour")
    with pytest.raises(AutosegError, match=rf"{bad}: tumour checkpoint was trained for dataset 'Dataset998_Other', "
                                           rf"not '{NAME}'"):
        CascadePredictor.from_results(999, results=str(results), device="cpu")


def test_stage_with_other_labels_refused(results):
    plans = tiny_plans(NAME)
    plans["labels"] = {"background": 0, "liver": 1, "spleen": 2, "tumour": 3}  # value 2 means another organ
    bad = _plant(results, plans, "tumour")
    with pytest.raises(AutosegError, match=rf"{bad}: trained with labels .*spleen.*must share the labels"):
        CascadePredictor.from_results(999, results=str(results), device="cpu")


def test_fold_of_another_dataset_refused(results):
    plans = tiny_plans(NAME)
    plans["labels"] = {"background": 0, "liver": 1, "spleen": 2, "tumour": 3}
    bad = _plant(results, plans, "organ", fold=1)
    with pytest.raises(AutosegError, match=rf"{bad}: trained with labels .*the folds of one stage"):
        CascadePredictor.from_results(999, results=str(results), device="cpu")


def test_results_copied_under_another_task_refused(results):
    shutil.copytree(results / NAME, results / "Dataset997_Copy")
    with pytest.raises(AutosegError, match=r"trained for dataset 'Dataset999_Tiny', not 'Dataset997_Copy' \(-t\)"):
        CascadePredictor.from_results(997, results=str(results), device="cpu")


def test_checkpoint_record_must_match_its_plans_and_old_checkpoints_load(results):
    path = results / NAME / "organ" / "Trainer" / "fold_0" / "checkpoint_final.pt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["provenance"]["dataset_name"] == NAME and ckpt["provenance"]["classes"] == [1, 2]
    ckpt["provenance"]["labels"] = {"background": 0, "spleen": 1, "kidney": 2, "tumour": 3}
    torch.save(ckpt, path)
    with pytest.raises(AutosegError, match=rf"{path}: checkpoint provenance 'labels'"):
        CascadePredictor.from_results(999, results=str(results), device="cpu")
    del ckpt["provenance"]  # as written before the record existed: checked from its plans, accepted
    torch.save(ckpt, path)
    assert "organ" in CascadePredictor.from_results(999, results=str(results), device="cpu").stages


def test_trainer_refuses_cache_made_for_other_plans(tmp_path):
    name = "Dataset901_Stale"
    folder = tmp_path / name
    write_synthetic_cache(folder, synthetic_plans(name), num_cases=3, shape=(16, 20, 20))
    t = Trainer(load_plans(folder / "plans.json"), "organ", 0, folder, "cpu", tmp_path / "out")
    t.setup_cases()  # a fresh cache is accepted
    plans = json.loads((folder / "plans.json").read_text())
    plans["stages"]["organ"]["target_spacing"] = [3.0, 1.0, 1.0]  # a hand edit after preprocessing
    (folder / "plans.json").write_text(json.dumps(plans))
    t = Trainer(load_plans(folder / "plans.json"), "organ", 0, folder, "cpu", tmp_path / "out")
    with pytest.raises(AutosegError, match=rf"preprocessed for other plans than .*plans\.json.*"
                                           rf"autoseg plan_and_preprocess -t {name} --stages organ "
                                           rf"--preprocessed {tmp_path}"):
        t.setup_cases()
