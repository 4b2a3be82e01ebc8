import json

import numpy as np
import pytest

from autoseg import AutosegError
from autoseg.datasets import RawDataset, check_integrity
from autoseg.io import Geometry, write_image
from autoseg.paths import find_dataset_folder

LABELS = {"background": 0, "liver": 1, "liver_tumour": 2}


def _write_case(folder, cid, shape=(6, 8, 8), spacing=(2.0, 1.0, 1.0), seg_values=(0, 1, 2)):
    geo = Geometry(spacing, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), shape)
    img = np.full(shape, -100, np.int16)
    seg = np.zeros(shape, np.uint8)
    seg[1:3, 2:5, 2:5] = seg_values[1]
    seg[2, 3, 3] = seg_values[2]
    write_image(img, geo, folder / "imagesTr" / f"{cid}_0000.nii.gz")
    write_image(seg, geo, folder / "labelsTr" / f"{cid}.nii.gz")
    return geo


def _dataset(tmp_path, name="Dataset042_Toy", n=2):
    folder = tmp_path / name
    folder.mkdir(parents=True)
    for i in range(n):
        _write_case(folder, f"toy_{i:03d}")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": n, "file_ending": ".nii.gz"}))
    return folder


def test_v2_dataset_and_tumour_labels(tmp_path):
    ds = RawDataset.load(_dataset(tmp_path))
    assert [c.case_id for c in ds.cases] == ["toy_000", "toy_001"]
    assert ds.tumour_labels == [2] and ds.organ_labels() == [1]
    assert check_integrity(ds) == []


def test_find_by_id_v1_and_errors(tmp_path):
    _dataset(tmp_path)
    assert find_dataset_folder(42, tmp_path).name == "Dataset042_Toy"
    with pytest.raises(AutosegError, match="known datasets: Dataset042_Toy"):
        find_dataset_folder(7, tmp_path)
    (tmp_path / "Task042_Other").mkdir()
    with pytest.raises(AutosegError, match="ambiguous"):
        find_dataset_folder(42, tmp_path)


def test_v1_dataset_json(tmp_path):
    folder = tmp_path / "Task003_Liver"
    folder.mkdir()
    _write_case(folder, "liver_0")
    (folder / "imagesTr" / "liver_0_0000.nii.gz").rename(folder / "imagesTr" / "liver_0_0000.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "training": [{"image": "./imagesTr/liver_0.nii.gz", "label": "./labelsTr/liver_0.nii.gz"}]}))
    ds = RawDataset.load(folder)
    assert ds.labels == {"background": 0, "liver": 1, "cancer": 2} and ds.tumour_labels == [2]
    assert check_integrity(ds) == []


def test_integrity_reports_every_problem(tmp_path):
    folder = _dataset(tmp_path, n=5)
    (folder / "labelsTr" / "toy_000.nii.gz").unlink()                          # missing label
    _write_case(folder, "toy_001", seg_values=(0, 1, 9))                       # undeclared value
    geo = Geometry((2.0, 1.0, 1.0), (0.0,) * 3, (1, 0, 0, 0, 1, 0, 0, 0, 1), (6, 8, 9))
    write_image(np.zeros((6, 8, 9), np.uint8), geo, folder / "labelsTr" / "toy_002.nii.gz")  # size mismatch
    nan = np.zeros((6, 8, 8), np.float32)
    nan[0, 0, 0] = np.nan
    write_image(nan, Geometry((2.0, 1.0, 1.0), (0.0,) * 3, (1, 0, 0, 0, 1, 0, 0, 0, 1), (6, 8, 8)),
                folder / "imagesTr" / "toy_003_0000.nii.gz")                  # NaN intensities
    (folder / "imagesTr" / "toy_004_0000.nii.gz").write_bytes(b"garbage")      # unreadable
    problems = check_integrity(RawDataset.load(folder))
    text = "\n".join(problems)
    assert "toy_000.nii.gz: missing label file" in text
    assert "toy_001.nii.gz: label values [9] not declared" in text
    assert "toy_002.nii.gz: size" in text
    assert "toy_003_0000.nii.gz: contains NaN" in text
    assert "toy_004_0000.nii.gz: unreadable image" in text
    assert all("\n" not in p for p in problems)


def test_bad_dataset_json(tmp_path):
    folder = tmp_path / "Dataset001_Bad"
    folder.mkdir()
    (folder / "dataset.json").write_text("{ not json")
    with pytest.raises(AutosegError, match="dataset.json: invalid JSON"):
        RawDataset.load(folder)
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"a": 1},
                                                     "file_ending": ".nii.gz"}))
    with pytest.raises(AutosegError, match="background as 0"):
        RawDataset.load(folder)
