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


def test_evaluate_folder_two_cases(dataset, tmp_path):
    gt_dir, pred_dir = dataset
    summary = evaluate_folder(gt_dir, pred_dir, tmp_path / "out", num_workers=1, progress=False)
    assert summary["num_cases"] == 2
    assert summary["missing_predictions"] == ["case_c"] and summary["missing_ground_truth"] == ["extra"]
    assert summary["labels"] == {"liver": 1, "aorta": 2, "liver_tumour": 3}
    liver, aorta, tumour = (summary["per_class"][n] for n in ("liver", "aorta", "liver_tumour"))
    assert (liver["tolerance_mm"], aorta["tolerance_mm"], tumour["tolerance_mm"]) == (5.0, 2.0, 2.0)
    assert liver["dsc"]["n"] == 2 and liver["dsc"]["median"] == pytest.approx((1.0 + 0.8) / 2)  # shift: 64 of 80
    assert aorta["dsc"]["mean"] == 0.5 and aorta["hd95"]["n_undefined"] == 1 and aorta["hd95"]["mean"] == 0.0
    assert tumour["dsc"]["mean"] == tumour["nsd"]["mean"] == 1.0  # absent everywhere: FLARE scores 1
    assert summary["mean"]["dsc"] == pytest.approx(np.mean([liver["dsc"]["mean"], 0.5, 1.0]))
    assert summary["per_case_mean"]["case_a"]["dsc"] == 1.0

    rows = list(csv.DictReader(open(tmp_path / "out" / "metrics.csv")))
    assert len(rows) == 6 and {r["case"] for r in rows} == {"case_a", "case_b"}
    missed = next(r for r in rows if r["case"] == "case_b" and r["name"] == "aorta")
    assert missed["dsc"] == "0" and missed["hd95"] == "nan" and float(missed["volume_gt_mm3"]) == 2 * 3 * 3 * 2.0
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text(), parse_constant=pytest.fail)  # no NaN
    assert on_disk["per_class"]["aorta"]["hd95"]["n_undefined"] == 1
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
    assert summary["tolerances"] == "1mm" and (pred_dir / "metrics.csv").is_file()


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
    assert summary["num_cases"] == 2


def test_unreadable_case_is_reported_and_others_scored(dataset):
    gt_dir, pred_dir = dataset
    (pred_dir / "case_b.nrrd").write_bytes(b"not an image at all")
    summary = evaluate_folder(gt_dir, pred_dir, num_workers=1, progress=False)
    assert summary["num_cases"] == 1 and list(summary["failed"]) == ["case_b"]
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
    assert run_from_args(args) == 0
    out = capsys.readouterr().out
    assert "liver" in out and "metrics.csv" in out
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["tolerances"] == "flare21" and summary["per_class"]["liver"]["tolerance_mm"] == 1.0
    assert not math.isnan(summary["mean"]["nsd"])
