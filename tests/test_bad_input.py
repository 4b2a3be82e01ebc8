"""Damaged and out-of-scope inputs, file-system errors and output files: nothing may be silently wrong.

Permission tests need a user the kernel refuses: under root the test drops its effective uid to
'nobody' for the duration of the call (os.seteuid), so the kernel, not a mock, says EACCES.
"""
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from autoseg import AutosegError
from autoseg.cli import main as cli_main
from autoseg.datasets import RawDataset, check_integrity
from autoseg.io import Geometry, read_image, write_image
from autoseg.inference import run_inference
from autoseg.inference.random_models import tiny_plans, write_random_checkpoints
from autoseg.utils import _host_tag, atomic_path, save_json, save_npz

GEO = Geometry((2.5, 2.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (14, 30, 26))


def _ct(shape=(14, 30, 26), seed=0):
    arr = np.full(shape, -1000, np.int16)
    arr[2:-2, 4:-4, 3:-3] = np.random.default_rng(seed).integers(-100, 200, (shape[0] - 4, shape[1] - 8, shape[2] - 6))
    return arr


def _cut(path, n):
    data = path.read_bytes()
    path.write_bytes(data[:-n])


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_random_checkpoints(tiny_plans(), root)
    return root


# ---------------------------------------------------------------- truncated images
@pytest.mark.parametrize("suffix,compress,cut", [
    (".nii.gz", True, 2000), (".nii.gz", True, 4),  # 4: only the gzip trailer (CRC, length) is missing
    (".nii", False, 2000), (".nrrd", True, 4), (".nrrd", False, 2000), (".mha", True, 100),
    (".mha", False, 2000), (".mhd", False, 2000), (".mhd", True, 100)])
def test_truncated_image_fails_naming_the_file(tmp_path, suffix, compress, cut):
    path = tmp_path / f"ct{suffix}"
    img = sitk.GetImageFromArray(_ct())
    sitk.WriteImage(img, str(path), compress)
    read_image(path)  # the complete file reads
    data = [p for p in tmp_path.iterdir() if p != path] or [path]  # .mhd: its .raw/.zraw holds the voxels
    _cut(data[0], cut)
    with pytest.raises(AutosegError, match=r"truncated file .*partial copy") as e:
        read_image(path)
    assert "\n" not in str(e.value) and str(e.value).startswith(str(path))


def test_truncated_and_missing_dicom_slices(tmp_path, totalseg):
    for name in ("cut", "gap"):  # 6 consecutive slices of the real series are enough
        (tmp_path / name).mkdir()
        for f in sorted((totalseg / "example_ct_dicom").iterdir())[:6]:
            (tmp_path / name / f.name).write_bytes(f.read_bytes())
    files = sorted((tmp_path / "cut").iterdir())
    assert read_image(tmp_path / "cut")[0].shape == (6, 512, 512)
    files[5].write_bytes(files[5].read_bytes()[:5000])  # the last slice: no gap would show it
    with pytest.raises(AutosegError, match=rf"truncated or damaged\) DICOM file\(s\) {files[5].name}"):
        read_image(tmp_path / "cut")
    files[5].write_bytes(b"")  # an interrupted copy
    with pytest.raises(AutosegError, match=rf"truncated or damaged\) DICOM file\(s\) {files[5].name}"):
        read_image(tmp_path / "cut")
    (sorted((tmp_path / "gap").iterdir())[3]).unlink()
    with pytest.raises(AutosegError, match="not evenly spaced.*missing"):
        read_image(tmp_path / "gap")


def test_integrity_check_lists_a_truncated_image(tmp_path):
    folder = tmp_path / "Dataset042_Toy"
    for cid in ("a", "b"):
        write_image(_ct(), GEO, folder / "imagesTr" / f"{cid}_0000.nii.gz")
        write_image(np.zeros(GEO.shape, np.uint8), GEO, folder / "labelsTr" / f"{cid}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1},
                                                    "numTraining": 2, "file_ending": ".nii.gz"}))
    _cut(folder / "imagesTr" / "b_0000.nii.gz", 500)
    problems = check_integrity(RawDataset.load(folder))
    assert len(problems) == 1 and "b_0000.nii.gz: truncated file" in problems[0]


def test_inference_writes_the_others_and_fails_on_a_truncated_case(tmp_path, results, capsys):
    inp = tmp_path / "in"
    for cid in ("good", "cut"):
        write_image(_ct(), GEO, inp / f"{cid}_0000.nii.gz")
    _cut(inp / "cut_0000.nii.gz", 300)
    out = tmp_path / "out"
    rc = cli_main(["run_inference", "-i", str(inp), "-o", str(out), "-t", "999", "--results", str(results),
                   "--device", "cpu"])
    assert rc == 1
    assert sorted(p.name for p in out.iterdir()) == ["good.nii.gz"]
    assert "FAILED cut_0000.nii.gz" in capsys.readouterr().err


# ---------------------------------------------------------------- nothing to segment
def test_empty_input_folder_or_no_image(tmp_path, results, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["-o", str(tmp_path / "out"), "-t", "999", "--results", str(results), "--device", "cpu"]
    assert cli_main(["run_inference", "-i", str(empty), *args]) == 1
    err = capsys.readouterr().err
    assert "no image to segment: the folder is empty; expected CASE_0000.nii.gz" in err
    other = tmp_path / "other"
    other.mkdir()
    (other / "slice.png").write_bytes(b"\x89PNG")
    (other / "notes.txt").write_text("x")
    assert cli_main(["run_inference", "-i", str(other), *args]) == 1
    err = capsys.readouterr().err
    assert "found 2 entries (notes.txt, slice.png)" in err and "DICOM series folders" in err
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- out-of-scope images
def test_no_body_gives_an_empty_mask_and_a_warning(tmp_path, results, caplog):
    inp = tmp_path / "in"
    write_image(np.full(GEO.shape, -3024, np.int16), GEO, inp / "air_0000.nii.gz")
    with caplog.at_level(logging.WARNING):
        assert run_inference(str(inp), str(tmp_path / "o"), "999", results=str(results), device="cpu",
                             postprocess=False) == 0
    labels, _ = read_image(tmp_path / "o" / "air.nii.gz")
    assert not labels.any()
    assert "air_0000.nii.gz: no body in the image" in caplog.text


def test_thin_image_is_segmented_with_a_warning(tmp_path, results, caplog):
    inp = tmp_path / "in"
    thin = Geometry((2.5, 2.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (1, 30, 26))
    write_image(_ct((5, 30, 26))[2:3], thin, inp / "thin_0000.nii.gz")
    write_image(_ct(), GEO, inp / "normal_0000.nii.gz")
    with caplog.at_level(logging.WARNING):
        assert run_inference(str(inp), str(tmp_path / "o"), "999", results=str(results), device="cpu") == 0
    assert (tmp_path / "o" / "thin.nii.gz").is_file()
    assert "thin_0000.nii.gz: image (1x30x26 voxels" in caplog.text and "along z" in caplog.text
    assert "normal_0000.nii.gz" not in caplog.text


# ---------------------------------------------------------------- NaN in evaluate
def test_evaluate_reports_nan_in_a_label_map(tmp_path, capsys):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    lab = np.zeros((8, 9, 10), np.float32)
    lab[2:5, 2:5, 2:5] = 1
    for cid in ("a", "b"):
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(gt / f"{cid}.nii.gz"))
    bad = lab.copy()
    bad[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(pred / "a.nii.gz"))
    nib.save(nib.Nifti1Image(bad, np.eye(4)), str(pred / "b.nii.gz"))
    assert cli_main(["evaluate", "-g", str(gt), "-p", str(pred), "-j", "1", "--no-progress"]) == 1
    assert "NOT SCORED b:" in capsys.readouterr().err
    summary = json.loads((tmp_path / "pred_evaluation" / "summary.json").read_text())
    assert list(summary["failed"]) == ["b"] and "NaN" in summary["failed"]["b"]


# ---------------------------------------------------------------- file-system errors
@contextlib.contextmanager
def _unprivileged():
    """Run the block as a user the kernel holds to permissions (root reads everything)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def open_tmp():
    """A folder every user can traverse (pytest's own tmp folders are private to root)."""
    import tempfile

    path = tempfile.mkdtemp(prefix="autoseg-perm-")
    os.chmod(path, 0o755)
    yield __import__("pathlib").Path(path)
    shutil.rmtree(path)


def test_unreadable_file_is_reported_as_unreadable(open_tmp):
    f = open_tmp / "ct.nii.gz"
    write_image(_ct(), GEO, f)
    os.chmod(f, 0o000)
    with _unprivileged(), pytest.raises(AutosegError) as e:
        read_image(f)
    assert str(e.value) == f"{f}: permission denied (not readable or writable by this user)"


def test_unreadable_dataset_folder_is_one_line(open_tmp, capsys):
    raw = open_tmp / "raw"
    ds = raw / "Dataset042_Toy"
    ds.mkdir(parents=True)
    (ds / "dataset.json").write_text("{}")
    os.chmod(ds, 0o000)
    import autoseg.planners.cli  # noqa: F401  (imported before the uid drops)

    with _unprivileged():
        rc = cli_main(["plan_and_preprocess", "-t", "42", "--raw", str(raw),
                       "--preprocessed", str(open_tmp / "pre")])
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{ds / 'dataset.json'}: permission denied" in err


def test_output_path_that_is_a_file_or_in_an_unwritable_folder(open_tmp, capsys):
    results = open_tmp / "results"
    write_random_checkpoints(tiny_plans(), results)
    inp = open_tmp / "in"
    write_image(_ct(), GEO, inp / "a_0000.nii.gz")
    blocker = open_tmp / "out.txt"
    blocker.write_text("x")
    args = ["-t", "999", "--results", str(results), "--device", "cpu"]
    assert cli_main(["run_inference", "-i", str(inp), "-o", str(blocker), *args]) == 1
    assert capsys.readouterr().err.strip() == f"autoseg run_inference: error: {blocker}: is a file, expected a folder"
    locked = open_tmp / "locked"
    locked.mkdir(mode=0o555)
    import autoseg.evaluation.cli  # noqa: F401

    with _unprivileged():
        rc = cli_main(["run_inference", "-i", str(inp), "-o", str(locked / "masks"), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err == (f"autoseg run_inference: error: {locked / 'masks'}: permission denied "
                               "(not readable or writable by this user)")
    with _unprivileged():
        rc = cli_main(["run_inference", "-i", str(inp), "-o", str(locked), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err == (f"autoseg run_inference: error: {locked}: permission denied "
                               "(not readable or writable by this user)")
    with _unprivileged():
        rc = cli_main(["evaluate", "-g", str(inp), "-p", str(inp), "-o", str(locked / "ev"), "-j", "1",
                       "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.splitlines()[-1] == (f"autoseg evaluate: error: {locked / 'ev'}: permission denied "
                                                "(not readable or writable by this user)")


# ---------------------------------------------------------------- multi-channel datasets
def test_multichannel_dataset_refused_at_planning(tmp_path):
    from autoseg.planners.pipeline import plan_and_preprocess

    folder = tmp_path / "raw" / "Dataset043_Phases"
    for cid in ("a", "b"):
        for ch in range(2):
            write_image(_ct(seed=ch), GEO, folder / "imagesTr" / f"{cid}_{ch:04d}.nii.gz")
        write_image(np.zeros(GEO.shape, np.uint8), GEO, folder / "labelsTr" / f"{cid}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT arterial", "1": "CT venous"}, "labels": {"background": 0, "liver": 1},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    with pytest.raises(AutosegError, match=r"dataset.json: 2 input channels \(CT arterial, CT venous\)"):
        plan_and_preprocess(43, raw=tmp_path / "raw", preprocessed=tmp_path / "pre", progress=False)


# ---------------------------------------------------------------- outputs
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_json({"a": 1}, tmp_path / "x.json")
        save_npz(tmp_path / "x.npz", a=np.zeros(3))
        write_image(_ct(), GEO, tmp_path / "m.nii.gz")
        with atomic_path(tmp_path / "c.pt", ".pt") as tmp:
            tmp.write_bytes(b"weights")
    finally:
        os.umask(old)
    for name in ("x.json", "x.npz", "m.nii.gz", "c.pt"):
        assert oct((tmp_path / name).stat().st_mode & 0o777) == oct(mode), name


def test_killed_writer_leaves_a_temp_file_the_next_run_removes(tmp_path, results):
    out = tmp_path / "out"
    code = textwrap.dedent(f"""
        import sys, time
        from autoseg.utils import atomic_path
        with atomic_path({str(out / 'a.nii.gz')!r}, '.nii.gz') as tmp:
            print(tmp.name, flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    leftover = out / proc.stdout.readline().strip()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert leftover.is_file() and leftover.stat().st_size == 0
    (out / ".keep").write_text("not ours")
    live = out / f".b.nii.gz.autoseg-tmp.{_host_tag()}.{os.getpid()}.abc.nii.gz"
    live.write_bytes(b"")  # a live process's temp file (ours, here) must survive
    inp = tmp_path / "in"
    write_image(_ct(), GEO, inp / "a_0000.nii.gz")
    assert run_inference(str(inp), str(out), "999", results=str(results), device="cpu") == 0
    assert not leftover.exists() and (out / ".keep").exists() and live.exists()
    assert (out / "a.nii.gz").is_file()
