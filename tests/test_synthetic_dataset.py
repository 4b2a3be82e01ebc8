"""Phantom dataset writing: nnU-Net v2 layout, dataset.json, geometry round trip, idempotent reruns, CLI."""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest

from autoseg import AutosegError
from autoseg.io import read_image
from autoseg.synthetic import LABELS, add_cli_arguments, make_phantom, make_phantom_dataset, run_from_args
from autoseg.synthetic.dataset import case_seed


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    folder = make_phantom_dataset(root, 507, "Tiny", num_train=2, num_test=1, seed=3, progress=False)
    return root, folder


def test_layout_and_dataset_json(dataset):
    _, folder = dataset
    assert folder.name == "Dataset507_Tiny"
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "CT"}
    assert dj["labels"] == {"background": 0, "liver": 1, "spleen": 2, "kidney_right": 3, "kidney_left": 4,
                            "pancreas": 5, "aorta": 6, "liver_tumour": 7}
    assert dj["numTraining"] == 2 and dj["file_ending"] == ".nii.gz"
    assert dj["tumour_labels"] == ["liver_tumour"]
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == ["Tiny_0000_0000.nii.gz", "Tiny_0001_0000.nii.gz"]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == ["Tiny_0000.nii.gz", "Tiny_0001.nii.gz"]
    assert [p.name for p in (folder / "imagesTs").iterdir()] == ["Tiny_5000_0000.nii.gz"]
    assert [p.name for p in (folder / "labelsTs").iterdir()] == ["Tiny_5000.nii.gz"]


def test_files_round_trip_the_generator_exactly(dataset):
    _, folder = dataset
    img, geo = read_image(folder / "imagesTr" / "Tiny_0001_0000.nii.gz")
    lab, lgeo = read_image(folder / "labelsTr" / "Tiny_0001.nii.gz")
    ref_img, ref_lab, ref_geo = make_phantom(case_seed(3, 1), "small")
    assert img.dtype == np.int16 and lab.dtype == np.uint8
    np.testing.assert_array_equal(img, ref_img)
    np.testing.assert_array_equal(lab, ref_lab)
    assert geo.same_grid(ref_geo) and lgeo.same_grid(ref_geo)
    # the patient's right is at lower LPS x than the left, whatever direction the file was written with
    d = np.asarray(geo.direction).reshape(3, 3)

    def x_of(label: int) -> float:
        k, j, i = np.nonzero(lab == label)
        return float((np.asarray(geo.origin) + d @ (np.asarray(geo.spacing)[::-1] * [i.mean(), j.mean(), k.mean()]))[0])

    assert x_of(LABELS["liver"]) < x_of(LABELS["aorta"]) < x_of(LABELS["spleen"])


def test_rerun_is_idempotent_and_fills_gaps(dataset):
    root, folder = dataset
    files = sorted(folder.rglob("*.nii.gz"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    victim = folder / "labelsTs" / "Tiny_5000.nii.gz"
    before = victim.read_bytes()
    victim.unlink()
    again = make_phantom_dataset(root, 507, "Tiny", num_train=2, num_test=1, seed=3, progress=False)
    assert again == folder
    assert victim.read_bytes() == before  # regenerated identically
    for p in files:
        if p.name != "Tiny_5000_0000.nii.gz" and p != victim:
            assert p.stat().st_mtime_ns == stamps[p], p  # complete cases were not rewritten
    assert not [p for p in folder.rglob("*") if p.name.startswith(".")]  # no temp files left


def test_other_seed_in_existing_folder_is_refused(dataset):
    root, _ = dataset
    with pytest.raises(AutosegError, match="dataset.json"):
        make_phantom_dataset(root, 507, "Tiny", num_train=2, num_test=1, seed=4, progress=False)


def test_bad_arguments(tmp_path):
    with pytest.raises(AutosegError, match="size"):
        make_phantom_dataset(tmp_path, 1, "X", num_train=1, num_test=0, size="tiny", progress=False)
    with pytest.raises(AutosegError, match="name"):
        make_phantom_dataset(tmp_path, 1, "bad/name", num_train=1, num_test=0, progress=False)
    with pytest.raises(AutosegError, match=">= 0"):
        make_phantom_dataset(tmp_path, 1, "X", num_train=-1, num_test=0, progress=False)


def test_cli_with_two_workers(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    args = parser.parse_args(["-o", str(tmp_path), "--id", "502", "--num-train", "1", "--num-test", "1",
                              "--seed", "9", "--size", "small", "-np", "2", "--no-progress"])
    assert run_from_args(args) == 0
    folder = tmp_path / "Dataset502_Phantom"
    assert str(folder) in capsys.readouterr().out
    assert (folder / "imagesTr" / "Phantom_0000_0000.nii.gz").exists()
    assert (folder / "labelsTs" / "Phantom_5000.nii.gz").exists()
    lab, _ = read_image(folder / "labelsTr" / "Phantom_0000.nii.gz")
    assert {1, 2, 3, 4, 5, 6} <= set(np.unique(lab).tolist())
    assert os.path.getsize(folder / "dataset.json") > 0
