"""Real CT geometry (../shared/data/totalseg): a NIfTI with a flipped direction and a DICOM series."""
import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.io import read_image
from autoseg.inference import run_inference
from autoseg.inference.random_models import tiny_plans, write_random_checkpoints


@pytest.fixture
def results(tmp_path):
    plans = tiny_plans()
    for st in plans["stages"].values():  # coarse grids keep random-weight inference fast on real sizes
        st["target_spacing"] = [10.0, 10.0, 10.0]
    write_random_checkpoints(plans, tmp_path / "results")
    return tmp_path / "results"


def test_nifti_ct_geometry(totalseg, results, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "example_ct_0000.nii.gz").symlink_to(totalseg / "example_ct.nii.gz")
    assert run_inference(str(inp), str(tmp_path / "out"), "999", results=str(results), device="cpu") == 0
    arr, g_in = read_image(totalseg / "example_ct.nii.gz")
    lab, g_out = read_image(tmp_path / "out" / "example_ct.nii.gz")
    assert g_out == g_in and lab.shape == arr.shape


def test_dicom_series_written_as_nifti_in_dicom_geometry(totalseg, results, tmp_path):
    dicom = totalseg / "example_ct_dicom"
    out = tmp_path / "out"
    assert run_inference(str(dicom), str(out), "999", results=str(results), device="cpu") == 0
    written = out / "example_ct_dicom.nii.gz"
    arr, g_dicom = read_image(dicom)
    lab, g_out = read_image(written)
    assert lab.shape == arr.shape
    assert g_out.same_grid(g_dicom, tol=1e-5)
    # The reference labels are stored with y flipped. Resampled onto our output grid they must land on
    # the same physical voxels: the array comes back y-reversed, and the physical bbox is unchanged.
    ref = sitk.ReadImage(str(totalseg / "example_seg_dicom.nii.gz"))
    grid = sitk.ReadImage(str(written))
    on_grid = sitk.Resample(ref, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, ref.GetPixelID())
    ref_arr, moved = sitk.GetArrayFromImage(ref), sitk.GetArrayFromImage(on_grid)
    assert np.array_equal(moved, ref_arr[:, ::-1, :])

    def phys_bbox(img, a):
        idx = np.argwhere(a > 0)
        pts = [img.TransformIndexToPhysicalPoint([int(i) for i in p[::-1]]) for p in (idx.min(0), idx.max(0))]
        return np.sort(np.array(pts), axis=0)

    np.testing.assert_allclose(phys_bbox(on_grid, moved), phys_bbox(ref, ref_arr), atol=1e-3)
