"""The sliding-window step comes from each stage's plans (older plans: 0.5); the caller's overrides it."""
import copy

import numpy as np
import pytest
import torch

from autoseg import AutosegError
from autoseg.inference.predictor import CascadePredictor
from autoseg.inference.profiling import CaseProfile
from autoseg.inference.random_models import tiny_plans, write_random_checkpoints


def _windows(tmp_path, plans, step_size=None) -> int:
    ckpts = write_random_checkpoints(plans, tmp_path / plans["dataset_name"])
    pred = CascadePredictor(ckpts, device="cpu", precision="fp32", step_size=step_size, postprocess=False)
    img = np.full((16, 64, 96), 40, np.int16)  # all body: no window skipped
    prof = CaseProfile(torch.device("cpu"))
    pred.predict_array(img, (2.5, 2.0, 2.0), prof)
    return prof.windows["organ"]["computed"]


def test_step_size_from_plans_and_override(tmp_path):
    old = tiny_plans("Dataset998_Old", stages=("organ",))
    assert "step_size" not in old["stages"]["organ"]
    new = copy.deepcopy(old)
    new["dataset_name"] = "Dataset997_New"
    new["stages"]["organ"]["step_size"] = 1.0
    # 64 / 32 and 96 / 32: step 0.5 -> 3 x 5 windows in-plane, step 1 -> 2 x 3 (z fits one patch)
    assert _windows(tmp_path, old) == 15
    assert _windows(tmp_path, new) == 6
    assert _windows(tmp_path / "o", new, step_size=0.5) == 15


def test_bad_step_size_is_refused(tmp_path):
    ckpts = write_random_checkpoints(tiny_plans(stages=("organ",)), tmp_path)
    with pytest.raises(AutosegError, match="step size"):
        CascadePredictor(ckpts, device="cpu", step_size=1.5)


def test_planner_writes_the_measured_step_per_stage_with_why():
    from autoseg.planners import find_planner
    from tests.test_planner import synthetic_fingerprint

    plans = find_planner("CPUPlanner")(synthetic_fingerprint()).plan()
    for stage, st in plans["stages"].items():
        assert st["step_size"] == 0.5
        assert "RESULTS_overlap.md" in st["why"]["step_size"] or "not measured" in st["why"]["step_size"]
    assert "bench_overlap" in plans["stages"]["organ"]["why"]["step_size"]
