"""Stages and networks as data, through the CLI on a tiny phantom: a network defined beside a user's
trainer trains and predicts with no extra step; named plans keep their caches and models apart."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from autoseg.cli import main

USER_FILE = '''\
from torch import nn

from autoseg.networks import UNet
from autoseg.trainers import Trainer


class TinyUserNet(UNet):
    """A U-Net whose decoder is a single 1x1x1 convolution per level (defined here, registered by nothing)."""

    def decoder_stage(self, level):
        f = self.cfg.features[level]
        return nn.Sequential(nn.Conv3d(2 * f, f, 1), nn.LeakyReLU(0.01))


class TrainerUserNet(Trainer):
    num_epochs = 1
    iters_per_epoch = 2

    def network_config(self):
        net = dict(super().network_config(), features=[4, 8], kernel_sizes=[[3, 3, 3]] * 2,
                   strides=[[1, 1, 1], [2, 2, 2]])
        net["class"] = "TinyUserNet"
        return net
'''


@pytest.fixture(scope="module")
def phantom_dataset(tmp_path_factory):
    from autoseg.synthetic.dataset import make_phantom_dataset

    root = tmp_path_factory.mktemp("graph")
    make_phantom_dataset(root / "raw", 501, num_train=2, num_test=1, progress=False)
    return root


def test_user_network_beside_trainer_trains_and_predicts(phantom_dataset, monkeypatch, capsys):
    root = phantom_dataset
    users = root / "my_trainers"
    users.mkdir()
    (users / "user_net.py").write_text(USER_FILE)
    for var, sub in (("AUTOSEG_RAW", "raw"), ("AUTOSEG_PREPROCESSED", "pre"), ("AUTOSEG_RESULTS", "res")):
        monkeypatch.setenv(var, str(root / sub))
    assert main(["plan_and_preprocess", "-t", "501", "--planner", "CPUPlanner", "--stages", "organ",
                 "-np", "1", "--no-progress"]) == 0
    assert main(["run_training", "organ", "TrainerUserNet", "501", "all", "-nw", "0", "--device", "cpu",
                 "--trainer-path", str(users)]) == 0
    ckpt_dir = root / "res" / "Dataset501_Phantom" / "organ" / "TrainerUserNet" / "fold_all"
    import torch

    ckpt = torch.load(ckpt_dir / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert ckpt["plans"]["stages"]["organ"]["network"]["class"] == "TinyUserNet"
    capsys.readouterr()
    out = root / "pred"
    assert main(["run_inference", "-i", str(root / "raw" / "Dataset501_Phantom" / "imagesTs"), "-o", str(out),
                 "-t", "501", "-tr", "TrainerUserNet", "--device", "cpu", "--trainer-path", str(users)]) == 0
    assert len(list(out.glob("*.nii.gz"))) == 1
    # a fresh process without the trainer path: one line naming the class and where networks come from
    env = {"AUTOSEG_RESULTS": str(root / "res"), "AUTOSEG_RAW": str(root / "raw"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "autoseg", "run_inference", "-i",
                        str(root / "raw" / "Dataset501_Phantom" / "imagesTs"), "-o", str(root / "pred2"), "-t",
                        "501", "-tr", "TrainerUserNet", "--device", "cpu"], capture_output=True, text=True, env=env)
    assert r.returncode != 0
    err = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(err) == 1 and "TinyUserNet" in err[0] and "AUTOSEG_TRAINER_PATH" in err[0], r.stderr

    # a second, named plans (as nnU-Net's -p) with a pancreas refinement stage: own caches, own models,
    # the default ones untouched; the refinement runs from the CLI and --profile reports its rounds
    pre = root / "pre" / "Dataset501_Phantom"
    plans = json.loads((pre / "plans.json").read_text())
    organ = plans["stages"]["organ"]
    organ["target_spacing"] = [s * 1.5 for s in organ["target_spacing"]]
    pancreas = plans["labels"]["pancreas"]
    plans["stages"]["pancreas_refine"] = {
        **{k: organ[k] for k in ("target_spacing", "patch_size", "batch_size", "network")}, "classes": [pancreas],
        "input": {"crop": "organ", "labels": [pancreas], "margin_mm": [10, 10, 10],
                  "saliency": {"stage": "organ", "classes": [pancreas]}}, "refine": {"max_rounds": 3}}
    (root / "refine.json").write_text(json.dumps(plans))
    before = {p: p.stat().st_mtime for p in (pre / "organ").glob("*.npz")}
    assert main(["plan_and_preprocess", "-t", "501", "-p", "refine", "--plans", str(root / "refine.json"),
                 "-np", "1", "--no-progress"]) == 0
    assert (pre / "plans_refine.json").is_file() and len(list((pre / "plans_refine" / "organ").glob("*.npz"))) == 2
    assert {p: p.stat().st_mtime for p in (pre / "organ").glob("*.npz")} == before
    import numpy as np

    with np.load(next((pre / "plans_refine" / "pancreas_refine").glob("*.npz"))) as z:
        assert z["data"].shape[0] == 2 and 0 < z["data"][1].max() <= 1  # CT + ground-truth saliency
    for stage in ("organ", "pancreas_refine"):
        if stage == "pancreas_refine":  # its training reads the organ model's predictions (refine_saliency)
            assert main(["refine_saliency", stage, "501", "all", "-tr", "TrainerUserNet", "-p", "refine",
                         "--device", "cpu", "--trainer-path", str(users)]) == 0
        assert main(["run_training", stage, "TrainerUserNet", "501", "all", "-nw", "0", "--device", "cpu",
                     "-p", "refine", "--trainer-path", str(users)]) == 0
    named = root / "res" / "Dataset501_Phantom" / "plans_refine" / "pancreas_refine" / "TrainerUserNet" / "fold_all"
    assert (named / "checkpoint_final.pt").is_file()
    capsys.readouterr()
    assert main(["run_inference", "-i", str(root / "raw" / "Dataset501_Phantom" / "imagesTs"), "-o",
                 str(root / "pred_refine"), "-t", "501", "-tr", "TrainerUserNet", "-p", "refine", "--device", "cpu",
                 "--trainer-path", str(users), "--profile"]) == 0
    assert len(list((root / "pred_refine").glob("*.nii.gz"))) == 1
    shown = capsys.readouterr().out
    assert "organ" in shown and ("pancreas_refine rounds" in shown or "pancreas_refine 0.00s" in shown), shown
