"""FLARE tolerance presets and the label-name matching they rely on."""
from __future__ import annotations

import pytest

from autoseg import AutosegError
from autoseg.evaluation.tolerances import canonical_organ, get_preset, resolve_tolerances


@pytest.mark.parametrize("name,organ", [
    ("liver", "liver"), ("Liver", "liver"), ("kidney_left", "kidney"), ("left kidney", "kidney"),
    ("kidney_l", "kidney"), ("RightKidney", "kidney"), ("LK", "kidney"), ("RK", "kidney"),
    ("liver_tumour", "tumour"), ("Tumor", "tumour"), ("liver lesion", "tumour"), ("kidney_cancer", "tumour"),
    ("inferior_vena_cava", "ivc"), ("IVC", "ivc"), ("postcava", "ivc"), ("aorta", "aorta"),
    ("adrenal_gland_right", "adrenal"), ("RAG", "adrenal"), ("left suprarenal gland", "adrenal"),
    ("gall_bladder", "gallbladder"), ("Gallbladder", "gallbladder"), ("oesophagus", "esophagus"),
    ("Esophagus", "esophagus"), ("stomach", "stomach"), ("duodenum", "duodenum"), ("spleen", "spleen"),
    ("pancreas", "pancreas"), ("portal_vein_and_splenic_vein", "vessel"), ("hepatic vessel", "vessel"),
    ("urinary_bladder", None), ("colon", None),
])
def test_canonical_organ_names(name, organ):
    assert canonical_organ(name) == organ


def test_phantom_labels_under_flare22_and_flare23():
    labels = {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left", 5: "pancreas", 6: "aorta",
              7: "liver_tumour"}
    for preset in ("flare22", "FLARE23"):
        tol, gt_slices = resolve_tolerances(labels, preset)
        assert tol == {1: 5.0, 2: 3.0, 3: 3.0, 4: 3.0, 5: 5.0, 6: 2.0, 7: 2.0}
        assert gt_slices == {6}


def test_flare22_full_organ_list():
    names = ["Liver", "RK", "Spleen", "Pancreas", "Aorta", "IVC", "RAG", "LAG", "Gallbladder", "Esophagus",
             "Stomach", "Duodenum", "LK"]
    tol, gt_slices = resolve_tolerances(dict(enumerate(names, 1)), "flare22")
    assert list(tol.values()) == [5, 3, 3, 5, 2, 2, 2, 2, 2, 3, 5, 7, 3]
    assert gt_slices == {5, 6, 10}


def test_flare21_numbers_and_explicit_maps(caplog):
    labels = {1: "liver", 2: "kidney", 3: "colon", 4: None}
    assert resolve_tolerances(labels, "flare21") == ({1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}, set())
    assert resolve_tolerances(labels, 2.5)[0] == {1: 2.5, 2: 2.5, 3: 2.5, 4: 2.5}
    assert resolve_tolerances(labels, "4mm")[0][3] == 4.0
    assert resolve_tolerances({1: "a", 2: "b"}, {1: 1.5, 2: 3})[0] == {1: 1.5, 2: 3.0}
    with caplog.at_level("WARNING"):
        tol, _ = resolve_tolerances(labels, "flare23")
    assert tol[3] == tol[4] == get_preset("flare23").default_mm and "colon" in caplog.text
    for bad in ("flare99", "-1", 0, "nan"):
        with pytest.raises(AutosegError):
            get_preset(bad)
    with pytest.raises(AutosegError, match="no tolerance"):
        resolve_tolerances({1: "a", 2: "b"}, {1: 1.0})
