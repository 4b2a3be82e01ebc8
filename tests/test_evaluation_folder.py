"""Folder evaluation on tiny cases written with autoseg.io: pairing, geometry, failures, outputs, CLI."""
from __future__ import annotations

import argparse
import csv
import json
import math

import numpy as np
import pytest

from autoseg import AutosegError
from autoseg.io import Geometry, write_image
from autoseg.evaluation import evaluate_folder, format_summary_table
from autoseg.evaluation.cli import add_cli_arguments, run_from_args

GEO = Geometry((2.0, 1.0, 1.0), (10.0, -5.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (8, 12, 10))


def _case(offset: int = 0) -> np.ndarray:
    seg = np.zeros(GEO.shape, np.uint8)
    seg[2:6, 2 + offset:7 + offset, 2:6] = 1
    seg[3:5, 8:11, 6:9] = 2
    return seg


@pytest.fixture
def dataset(tmp_path):
    """Dataset-like tree: dataset.json beside labelsTr (GT) and a predictions folder."""
    gt_dir, pred_dir = tmp_path / "ds" / "labelsTr", tmp_path / "pred"
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps(
        {"labels": {"background": 0, "liver": 1, "aorta": 2, "liver_tumour": 3}}))
    write_image(_case(), GEO, gt_dir / "case_a.nii.gz")
    write_image(_case(), GEO, gt_dir / "case_b.nii.gz")
    write_image(_case(), GEO, gt_dir / "case_c.nii.gz")  # no prediction for this one
    write_image(_case(), GEO, pred_dir / "case_a.nii.gz")
    pred_b = _case(offset=1)
    pred_b[pred_b == 2] = 0  # aorta missed: DSC 0, HD95 undefined
    write_image(pred_b, GEO, pred_dir / "case_b.nrrd")  # any suffix autoseg.io reads
    write_image(_case(), GEO, pred_dir / "extra.nii.gz")  # no ground truth for this one
    return gt_dir, pred_dir


def test_evaluate_folder_missing_prediction_counts_zero(dataset, tmp_path):
    """case_c has no prediction: it is scored as an empty mask (0 where its GT has the class), not dropped."""
    gt_dir, pred_dir = dataset
    summary = evaluate_folder(gt_dir, pred_dir, tmp_path / "out", num_workers=1, progress=False)
    assert summary["num_cases"] == 3 and summary["scored_as_empty"] == ["case_c"]
    assert summary["missing_predictions"] == ["case_c"] and summary["missing_ground_truth"] == ["extra"]
    assert summary["labels"] == {"liver": 1, "aorta": 2, "liver_tumour": 3}
    liver, aorta, tumour = (summary["per_class"][n] for n in ("liver", "aorta", "liver_tumour"))
    assert (liver["tolerance_mm"], aorta["tolerance_mm"], tumour["tolerance_mm"]) == (5.0, 2.0, 2.0)
    assert liver["dsc"]["n"] == 3 and liver["dsc"]["mean"] == pytest.approx((1.0 + 0.8 + 0.0) / 3)  # shift: 64 of 80
    # undefined HD95 (one side empty) is left out of the mean and counted apart
    assert aorta["dsc"]["mean"] == pytest.approx(1 / 3) and aorta["hd95"]["n_undefined"] == 2
    assert aorta["hd95"]["mean"] == 0.0 and "n_undefined" in summary["hd95_convention"]
    assert tumour["dsc"]["mean"] == tumour["nsd"]["mean"] == 1.0  # absent everywhere: FLARE scores 1
    assert summary["mean"]["dsc"] == pytest.approx(np.mean([liver["dsc"]["mean"], 1 / 3, 1.0]))
    assert summary["per_case_mean"]["case_a"]["dsc"] == 1.0 and summary["per_case_mean"]["case_c"]["dsc"] == pytest.approx(1 / 3)

    rows = list(csv.DictReader(open(tmp_path / "out" / "metrics.csv")))
    assert len(rows) == 9 and {r["case"] for r in rows} == {"case_a", "case_b", "case_c"}
    missed = next(r for r in rows if r["case"] == "case_b" and r["name"] == "aorta")
    assert missed["dsc"] == "0" and missed["hd95"] == "nan" and float(missed["volume_gt_mm3"]) == 2 * 3 * 3 * 2.0
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text(), parse_constant=pytest.fail)  # no NaN
    assert on_disk["per_class"]["aorta"]["hd95"]["n_undefined"] == 2
    table = format_summary_table(summary)
    assert "liver_tumour" in table and "mean" in table and "case_c" in table and "extra" in table


def test_parallel_workers_and_discovered_labels(tmp_path):
    """No dataset.json: labels are the values present, named label_<v>; a class absent from a
    case counts there as empty in both maps. Runs through the process pool."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    only_liver = _case()
    only_liver[only_liver == 2] = 0
    write_image(_case(), GEO, gt_dir / "a.nii.gz")
    write_image(_case(), GEO, pred_dir / "a.nii.gz")
    write_image(only_liver, GEO, gt_dir / "b.nii.gz")
    write_image(only_liver, GEO, pred_dir / "b.nii.gz")
    summary = evaluate_folder(gt_dir, pred_dir, num_workers=2, progress=False, tolerances=1)
    assert list(summary["per_class"]) == ["label_1", "label_2"]
    assert summary["per_class"]["label_2"]["dsc"]["n"] == 2 and summary["mean"]["dsc"] == 1.0
    assert summary["tolerances"] == "1mm" and not (pred_dir / "metrics.csv").exists()
    assert (tmp_path / "pred_evaluation" / "metrics.csv").is_file()  # a folder of its own by default


def test_geometry_mismatch_refused_unless_align(dataset, tmp_path):
    gt_dir, pred_dir = dataset
    shifted = Geometry(GEO.spacing, (10.0, -5.0, 5.0), GEO.direction, GEO.shape)  # 2 mm = one slice in z
    write_image(_case(), shifted, pred_dir / "case_a.nii.gz")
    with pytest.raises(AutosegError, match="case_a.*--align"):
        evaluate_folder(gt_dir, pred_dir, num_workers=1, progress=False)
    summary = evaluate_folder(gt_dir, pred_dir, tmp_path / "aligned", align=True, num_workers=1, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "aligned" / "metrics.csv")))
    liver_a = next(r for r in rows if r["case"] == "case_a" and r["name"] == "liver")
    assert float(liver_a["dsc"]) == pytest.approx(2 * 3 / 8)  # 4 slices vs the same 4 shifted by one
    assert summary["num_cases"] == 3


def test_unreadable_case_is_reported_and_others_scored(dataset):
    gt_dir, pred_dir = dataset
    (pred_dir / "case_b.nrrd").write_bytes(b"not an image at all")
    summary = evaluate_folder(gt_dir, pred_dir, num_workers=1, progress=False)
    assert summary["num_cases"] == 3 and list(summary["failed"]) == ["case_b"]
    assert summary["scored_as_empty"] == ["case_b", "case_c"] and summary["per_case_mean"]["case_b"]["dsc"] == pytest.approx(1 / 3)
    assert "case_b" in summary["failed"]["case_b"] and "failed case_b" in format_summary_table(summary)


def test_input_errors(dataset, tmp_path):
    gt_dir, pred_dir = dataset
    with pytest.raises(AutosegError, match="not found"):
        evaluate_folder(tmp_path / "nope", pred_dir, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AutosegError, match="no prediction matches"):
        evaluate_folder(gt_dir, tmp_path / "empty", progress=False)
    with pytest.raises(AutosegError, match="unknown preset"):
        evaluate_folder(gt_dir, pred_dir, tolerances="flare2", progress=False)


def test_cli_entry(dataset, tmp_path, capsys):
    gt_dir, pred_dir = dataset
    parser = add_cli_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["-g", str(gt_dir), "-p", str(pred_dir), "-o", str(tmp_path / "cli"),
                              "--tolerances", "flare21", "-j", "1", "--no-progress"])
    assert run_from_args(args) == 1  # case_c has no prediction: scored 0, and the exit status says so
    captured = capsys.readouterr()
    out = captured.out
    assert "liver" in out and "metrics.csv" in out and "scored as empty" in out and "case_c" in out and "no usable prediction" in captured.err
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["tolerances"] == "flare21" and summary["per_class"]["liver"]["tolerance_mm"] == 1.0
    assert not math.isnan(summary["mean"]["nsd"])


def test_labels_from_task_and_loud_tolerance_warning(tmp_path, monkeypatch, capsys):
    """Without a dataset.json classes are label_N: flare22 matches nothing and says so; -t ID names them."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    write_image(_case(), GEO, gt_dir / "a.nii.gz")
    write_image(_case(), GEO, pred_dir / "a.nii.gz")
    parser = add_cli_arguments(argparse.ArgumentParser())
    assert run_from_args(parser.parse_args(["-g", str(gt_dir), "-p", str(pred_dir), "-j", "1", "--no-progress"])) == 0
    assert "WARNING: tolerance preset flare22 matched none" in capsys.readouterr().out
    raw = tmp_path / "raw" / "Dataset777_Eval"
    raw.mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "aorta": 2}}))
    monkeypatch.setenv("AUTOSEG_RAW", str(tmp_path / "raw"))
    assert run_from_args(parser.parse_args(["-g", str(gt_dir), "-p", str(pred_dir), "-d", "777", "-j", "1",
                                            "--no-progress"])) == 0
    out = capsys.readouterr().out
    assert "matched none" not in out and "liver" in out and "pred_evaluation" in out
    summary = json.loads((tmp_path / "pred_evaluation" / "summary.json").read_text())
    assert summary["per_class"]["liver"]["tolerance_mm"] == 5.0
