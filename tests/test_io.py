import numpy as np
import pytest
import SimpleITK as sitk

from autoseg import AutosegError
from autoseg.io import Geometry, read_header, read_image, write_image

DIRECTIONS = {
    "lps": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    "ras": (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    "zflip": (1, 0, 0, 0, 1, 0, 0, 0, -1),
    "oblique": tuple(sitk.VersorTransform((0, 0, 1), 0.3).GetMatrix()),
}


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("orient", list(DIRECTIONS))
def test_roundtrip_exact_geometry(tmp_path, suffix, orient):
    arr = np.random.default_rng(0).integers(-1000, 1000, (7, 9, 11)).astype(np.int16)
    geo = Geometry((3.0, 0.7, 0.8), (-12.5, 40.25, 100.0), DIRECTIONS[orient], arr.shape)
    path = tmp_path / f"img{suffix}"
    write_image(arr, geo, path)
    back, geo2 = read_image(path)
    assert np.array_equal(back, arr)
    assert geo2.shape == geo.shape and geo2.same_grid(geo, tol=1e-5)
    assert read_header(path).same_grid(geo, tol=1e-5)
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(AutosegError, match="bad.nii.gz: unreadable"):
        read_image(bad)
    with pytest.raises(AutosegError, match="file not found"):
        read_image(tmp_path / "missing.nii.gz")
    img2d = sitk.GetImageFromArray(np.zeros((5, 5), np.int16))
    sitk.WriteImage(img2d, str(tmp_path / "flat.nii.gz"))
    with pytest.raises(AutosegError, match="2D image"):
        read_image(tmp_path / "flat.nii.gz")


def test_real_ct_and_dicom(totalseg):
    ct, geo = read_image(totalseg / "example_ct.nii.gz")
    assert ct.shape == (112, 101, 122) and np.allclose(geo.spacing, 3.0)
    dcm, dgeo = read_image(totalseg / "example_ct_dicom")
    assert dcm.shape == (20, 512, 512)
    assert np.allclose(dgeo.spacing[1:], 0.977, atol=1e-3)
    seg, sgeo = read_image(totalseg / "example_seg_dicom.nii.gz")
    # Same physical space, y axis stored flipped: compare the physical corners, not indices.
    img = sitk.ReadImage(str(totalseg / "example_seg_dicom.nii.gz"))
    corner = img.TransformIndexToPhysicalPoint((0, 511, 0))
    assert np.allclose(corner[:2], dgeo.origin[:2], atol=1.0)
