"""Files and folders: exact output geometry in every orientation and format, robustness, CLI."""
import json
import logging
import math

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main as cli_main
from autoseg.io import read_image
from autoseg.inference import run_inference
from autoseg.inference.io_threads import case_for, list_cases
from autoseg.inference.random_models import tiny_plans, write_random_checkpoints


def _rot(deg):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


# name -> (file name, direction, spacing x,y,z, origin)
CASES = {
    "lps": ("lps_0000.nii.gz", (1, 0, 0, 0, 1, 0, 0, 0, 1), (1.6, 1.6, 2.5), (10.0, -20.0, 30.0)),
    "ras": ("ras_0000.nii.gz", (-1, 0, 0, 0, -1, 0, 0, 0, 1), (1.5, 1.5, 3.0), (120.0, 80.0, -40.0)),
    "flip": ("flip_0000.nii", (1, 0, 0, 0, -1, 0, 0, 0, -1), (2.0, 1.7, 2.2), (-5.0, 60.0, 90.0)),
    "oblique": ("oblique_0000.nii.gz", _rot(20), (1.4, 1.9, 2.0), (3.0, 4.0, 5.0)),
    "nrrd": ("nrrd_0000.nrrd", (-1, 0, 0, 0, 1, 0, 0, 0, -1), (1.8, 1.8, 2.5), (1.0, 2.0, 3.0)),
    "mha": ("mha_0000.mha", (1, 0, 0, 0, 0, 1, 0, -1, 0), (1.5, 2.0, 2.5), (0.0, 0.0, 0.0)),
}


def _write_ct(path, direction, spacing, origin, shape=(14, 30, 26), seed=0):
    rng = np.random.default_rng(seed)
    arr = np.full(shape, -1000, np.int16)
    arr[2:-2, 4:-4, 3:-3] = rng.integers(-100, 200, size=(shape[0] - 4, shape[1] - 8, shape[2] - 6))
    img = sitk.GetImageFromArray(arr)
    img.SetDirection([float(v) for v in direction])
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("inf")
    results = root / "results"
    write_random_checkpoints(tiny_plans(), results)
    inp = root / "in"
    inp.mkdir()
    for i, (fname, d, sp, org) in enumerate(CASES.values()):
        _write_ct(inp / fname, d, sp, org, seed=i)
    (inp / "corrupt_0000.nii.gz").write_bytes(b"this is not a nifti file at all" * 10)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20), np.int16)), str(inp / "flat_0000.nii.gz"))
    (inp / "notes.txt").write_text("ignored")
    out = root / "out"
    rc = run_inference(str(inp), str(out), "999", results=str(results), device="cpu")
    return root, results, inp, out, rc


def test_every_good_case_written_with_exact_geometry(setup):
    _, _, inp, out, _ = setup
    for name, (fname, *_rest) in CASES.items():
        written = out / case_for(inp / fname).output_name
        assert written.is_file(), written
        a, g_in = read_image(inp / fname)
        lab, g_out = read_image(written)
        assert g_out == g_in, name  # bit-identical spacing, origin, direction and shape
        assert lab.shape == a.shape and lab.dtype == np.uint8


def test_output_names_follow_nnunet(setup):
    _, _, _, out, _ = setup
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["lps.nii.gz", "ras.nii.gz", "flip.nii", "oblique.nii.gz", "nrrd.nrrd", "mha.mha"])


def test_bad_files_reported_and_exit_code(setup, capsys):
    root, results, inp, _, rc = setup
    assert rc == 1
    out2 = root / "out_cli"
    rc2 = cli_main(["run_inference", "-i", str(inp), "-o", str(out2), "-t", "999", "--results", str(results),
                    "--device", "cpu", "--profile", "-f", "0"])
    err = capsys.readouterr()
    assert rc2 == 1
    assert "FAILED corrupt_0000.nii.gz" in err.err and "FAILED flat_0000.nii.gz" in err.err and "2D" in err.err
    assert "lps: read" in err.out and "peak RSS" in err.out  # --profile lines
    prof = json.loads((out2 / "profile.json").read_text())["cases"]
    assert set(prof) == set(CASES) and all(p["organ"] > 0 for p in prof.values())


def test_continue_skips_finished(setup, tmp_path, caplog):
    _, results, inp, _, _ = setup
    good = tmp_path / "good"
    good.mkdir()
    for fname in ("lps_0000.nii.gz", "nrrd_0000.nrrd"):
        (good / fname).write_bytes((inp / fname).read_bytes())
    out = tmp_path / "o"
    assert run_inference(str(good), str(out), "Dataset999_Tiny", results=str(results), device="cpu") == 0
    stamp = (out / "lps.nii.gz").stat().st_mtime_ns
    (out / "nrrd.nrrd").unlink()
    with caplog.at_level(logging.INFO):
        assert run_inference(str(good), str(out), "999", results=str(results), device="cpu",
                             continue_prediction=True, save_probabilities=True) == 0
    assert (out / "lps.nii.gz").stat().st_mtime_ns == stamp and (out / "nrrd.nrrd").is_file()
    assert "1 of 2 case(s) already predicted" in caplog.text
    npz = np.load(out / "nrrd.npz")
    assert npz["organ_probabilities"].dtype == np.float16 and list(npz["organ_classes"]) == [0, 1, 2]


def test_single_file_input_and_missing_stages(tmp_path, caplog):
    results = tmp_path / "r"
    write_random_checkpoints(tiny_plans(stages=("organ",)), results, name="checkpoint_latest.pt")
    f = tmp_path / "one_0000.nii.gz"
    _write_ct(f, CASES["ras"][1], (1.5, 1.5, 3.0), (0.0, 0.0, 0.0))
    with caplog.at_level(logging.WARNING):
        assert run_inference(str(f), str(tmp_path / "o"), "999", results=str(results), device="cpu") == 0
    assert "using checkpoint_latest.pt" in caplog.text
    assert (tmp_path / "o" / "one.nii.gz").is_file()


def test_missing_models_is_a_clear_error(tmp_path):
    assert cli_main(["run_inference", "-i", str(tmp_path), "-o", str(tmp_path / "o"), "-t", "5",
                     "--results", str(tmp_path)]) == 1


def test_list_cases_channels(tmp_path):
    for n in ("a_0000.nii.gz", "a_0001.nii.gz", "b.mha"):
        (tmp_path / n).write_bytes(b"")
    cases, skipped = list_cases(tmp_path)
    assert [c.name for c in cases] == ["a", "b"] and [s[0] for s in skipped] == ["a_0001.nii.gz"]


def test_output_folder_must_differ_from_input(setup, capsys):
    _, results, inp, _, _ = setup
    assert cli_main(["run_inference", "-i", str(inp), "-o", str(inp), "-t", "999", "--results", str(results)]) == 1
    assert "must differ from the input folder" in capsys.readouterr().err


def test_cli_windows_per_batch(setup, tmp_path):
    """Two windows per forward pass through the CLI: the same masks as one (the batch only changes
    floating-point order, so at most a few near-tie voxels may flip)."""
    _, results, _, _, _ = setup
    one = tmp_path / "in"
    one.mkdir()
    _write_ct(one / "big_0000.nii.gz", CASES["lps"][1], (1.6, 1.6, 2.5), (0.0, 0.0, 0.0), shape=(40, 80, 80))
    masks = []
    for wpb in ("1", "2"):
        assert cli_main(["run_inference", "-i", str(one), "-o", str(tmp_path / wpb), "-t", "999", "--results",
                         str(results), "--device", "cpu", "--windows-per-batch", wpb, "--no-cascade"]) == 0
        masks.append(read_image(tmp_path / wpb / "big.nii.gz")[0])
    assert masks[0].any() and (masks[0] == masks[1]).mean() > 0.999
    assert cli_main(["run_inference", "-i", str(one), "-o", str(tmp_path / "o2"), "-t", "999", "--results",
                     str(results), "--windows-per-batch", "0"]) == 1
