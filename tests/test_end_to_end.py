"""The whole pipeline through the CLI on tiny phantoms: make_phantoms -> plan -> train -> predict -> evaluate."""
import json
import subprocess
import sys

import numpy as np

from autoseg.cli import main
from autoseg.io import read_image


def test_cli_help_is_fast_and_complete():
    out = subprocess.run([sys.executable, "-m", "autoseg", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("plan_and_preprocess", "run_training", "run_inference", "evaluate", "make_phantoms", "demo"):
        assert cmd in out.stdout


def test_demo_end_to_end_on_tiny_phantoms(tmp_path, capsys):
    work = tmp_path / "demo"
    rc = main(["demo", "--work-dir", str(work), "--num-train", "3", "--num-test", "1", "--scale", "0.05"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "autoseg run_inference" in out and "mean organ DSC" in out
    summary = json.loads((work / "summary.json").read_text())
    assert "liver" in summary["per_class"]
    assert (work / "overlay.png").stat().st_size > 10_000
    assert (work / "training_curves.png").is_file()
    plans = json.loads((work / "preprocessed" / "Dataset501_Phantom" / "plans.json").read_text())
    assert set(plans["stages"]) == {"roi", "organ", "tumour"}
    # masks are written on the input's exact grid
    pred = next((work / "predictions").glob("*.nii.gz"))
    img = work / "raw" / "Dataset501_Phantom" / "imagesTs" / pred.name.replace(".nii.gz", "_0000.nii.gz")
    (p, pg), (_, ig) = read_image(pred), read_image(img)
    assert pg.same_grid(ig, tol=1e-6) and p.dtype == np.uint8  # NIfTI keeps direction in float32


def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AUTOSEG_RAW", str(tmp_path))
    assert main(["plan_and_preprocess", "-t", "999"]) == 1
    err = capsys.readouterr().err.strip()
    assert "no dataset with id 999" in err and len(err.splitlines()) == 1
    assert main(["run_training", "organ", "NoSuchTrainer", "999", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert "NoSuchTrainer" in err and "Trainer" in err


def test_nnunet_habits_get_the_autoseg_equivalent(capsys):
    """-d is accepted beside -t; nnU-Net's argument order gets a message naming the autoseg call."""
    from autoseg.cli import build_parser

    args = build_parser("run_inference").parse_args(["run_inference", "-i", "a", "-o", "b", "-d", "501"])
    assert args.task == "501"
    assert build_parser("plan_and_preprocess").parse_args(["plan_and_preprocess", "-d", "501"]).task == "501"
    assert main(["run_training", "501", "3d_fullres", "0", "-tr", "TrainerFast"]) == 2
    err = capsys.readouterr().err
    assert "autoseg run_training organ TrainerFast 501 0" in err and "STAGE TRAINER ID FOLD" in err
    assert main(["run_inference", "-i", "in", "-o", "out", "-d", "501", "-c", "3d_fullres"]) == 2
    assert "autoseg run_inference -i in -o out -d 501" in capsys.readouterr().err
    assert main(["evaluate", "gt", "pred", "-djfile", "ds.json"]) == 2
    assert "autoseg evaluate -g gt -p pred --dataset-json ds.json" in capsys.readouterr().err
    assert main(["find_best_configuration", "501"]) == 2
    assert "autoseg find_best_configuration -t 501" in capsys.readouterr().err
