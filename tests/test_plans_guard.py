"""Plans that would write elsewhere, flags that would be ignored, trainer folders with broken files."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from autoseg import AutosegError
from autoseg.paths import check_dataset_name
from autoseg.plans import load_plans
from autoseg.trainers import find_trainer, run_training
from autoseg.trainers.synthetic_cache import synthetic_plans, write_synthetic_cache

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_preprocessing_pipeline import make_tiny_dataset  # noqa: E402


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "Dataset1_a/../../x", "Dataset1_..", "x", "Dataset_X",
                                  "Dataset12_a\\b", 5])
def test_dataset_name_rule(name):
    with pytest.raises(AutosegError, match="plans key 'dataset_name' must be one folder name"):
        check_dataset_name(name, "plans.json")


def test_dataset_name_ok_and_must_match_its_folder(tmp_path):
    assert check_dataset_name("Task03_Liver", "p") == "Task03_Liver"
    assert check_dataset_name("Dataset501_FLARE-22.v2", "p", tmp_path / "Dataset501_FLARE-22.v2")
    assert check_dataset_name("Dataset501_A", "p", tmp_path / "not_a_dataset_folder")
    with pytest.raises(AutosegError, match="'Dataset502_B' but the plans sit in dataset folder 'Dataset501_A'"):
        check_dataset_name("Dataset502_B", "p", tmp_path / "Dataset501_A")


@pytest.mark.parametrize("bad", ["../../escaped", "ABSOLUTE"])
def test_run_training_never_writes_outside_results(tmp_path, bad):
    name = "Dataset902_Esc"
    pre, results = tmp_path / "pre", tmp_path / "results"
    write_synthetic_cache(pre / name, synthetic_plans(name), num_cases=3, shape=(16, 20, 20))
    plans = json.loads((pre / name / "plans.json").read_text())
    plans["dataset_name"] = str(tmp_path / "abs") if bad == "ABSOLUTE" else bad
    (pre / name / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(AutosegError, match="plans key 'dataset_name' must be one folder name"):
        run_training("organ", "Trainer", 902, 0, epochs=1, iters_per_epoch=1, device="cpu", num_workers=0,
                     preprocessed=pre, results=results)
    assert not results.exists() and not (tmp_path / "abs").exists() and not (tmp_path / "escaped").exists()
    with pytest.raises(AutosegError, match="dataset_name"):
        load_plans(pre / name / "plans.json")


def test_planner_flag_on_existing_plans_stops_and_says_how(tmp_path):
    from autoseg.planners import plan_and_preprocess

    raw, pre = tmp_path / "raw", tmp_path / "pre"
    make_tiny_dataset(raw, n=2)
    out = pre / "Dataset990_Tiny"
    out.mkdir(parents=True)
    plans = synthetic_plans("Dataset990_Tiny")
    plans["labels"] = {"background": 0, "liver": 1, "spleen": 2, "liver_tumour": 3}
    plans["planner"] = "ExperimentPlanner"
    (out / "plans.json").write_text(json.dumps(plans))
    kw = dict(raw=raw, preprocessed=pre, num_workers=1, progress=False, verify=False)
    with pytest.raises(AutosegError, match=r"plans\.json exists and is kept .*--planner CPUPlanner \(the plans "
                                           r"were made by 'ExperimentPlanner'\) would not take effect; pass "
                                           r"--overwrite-plans"):
        plan_and_preprocess(990, planner="CPUPlanner", **kw)
    with pytest.raises(AutosegError, match=r"--target-spacing 3 1 1 \(planned: \[2\.0, 1\.0, 1\.0\]\)"):
        plan_and_preprocess(990, target_spacing=[3.0, 1.0, 1.0], **kw)
    with pytest.raises(AutosegError, match=r"--stages tumour \(planned: organ\)"):
        plan_and_preprocess(990, stages=["organ", "tumour"], **kw)
    assert json.loads((out / "plans.json").read_text()) == plans  # nothing was replanned
    other = tmp_path / "other_plans.json"
    other.write_text(json.dumps({**plans, "dataset_name": "Dataset991_Other"}))
    with pytest.raises(AutosegError, match=r"'dataset_name' is 'Dataset991_Other', this dataset is "
                                           r"'Dataset990_Tiny'; set it to"):
        plan_and_preprocess(990, plans_file=str(other), **kw)
    plan_and_preprocess(990, planner="CPUPlanner", overwrite_plans=True, stages=["organ"], **kw)
    assert load_plans(out / "plans.json")["planner"] == "CPUPlanner"


TRAINER = "from autoseg.trainers import Trainer\n\n\nclass {name}(Trainer):\n    num_epochs = 7\n"


def test_broken_unrelated_file_is_skipped_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "user"
    (folder / "sub").mkdir(parents=True)
    (folder / "mine.py").write_text(TRAINER.format(name="TrainerMine"))
    (folder / "sub" / "old_experiment.py").write_text("import not_installed_lib\n\nclass Helper(object):\n    pass\n")
    (folder / "half_written.py").write_text("class Half(Trainer:\n")
    flag = tmp_path / "script_ran"
    (folder / "script.py").write_text(f"open({str(flag)!r}, 'w').write('side effect')\n")
    with caplog.at_level(logging.WARNING, logger="autoseg.trainers.registry"):
        assert find_trainer("TrainerMine", folder).num_epochs == 7
        assert find_trainer("Trainer", folder).__name__ == "Trainer"
    text = caplog.text
    assert "old_experiment.py skipped: cannot import" in text and "half_written.py skipped" in text
    assert not flag.exists()  # a file without classes is never executed


def test_broken_file_that_defines_the_trainer_is_an_error(tmp_path):
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "mine.py").write_text("import not_installed_lib\n" + TRAINER.format(name="TrainerMine"))
    with pytest.raises(AutosegError, match=r"mine\.py: cannot import trainer file \(ModuleNotFoundError"):
        find_trainer("TrainerMine", folder)
    (folder / "mine.py").write_text("class TrainerMine(Trainer:\n")
    with pytest.raises(AutosegError, match=r"mine\.py: cannot import trainer file \(SyntaxError"):
        find_trainer("TrainerMine", folder)
