"""CT phantom generator: determinism, anatomy and HU realism, geometry ranges, orientation consistency."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from autoseg import AutosegError
from autoseg.io import Geometry
from autoseg.synthetic import LABELS, SIZES, make_phantom, sample_params

FAST = dict(spacing=(5.0, 1.0, 1.0))  # coarse grid for tests where the resolution does not matter


@lru_cache(maxsize=None)
def oriented(seed: int, orientation: str) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """One coarse case per (seed, orientation), shared by the orientation tests."""
    return make_phantom(seed, "small", orientation=orientation, **FAST)


def physical_centroid(mask: np.ndarray, geo: Geometry) -> np.ndarray:
    """Centroid of a (z, y, x) mask in ITK physical (LPS) coordinates."""
    k, j, i = np.nonzero(mask)
    idx = np.array([i.mean(), j.mean(), k.mean()])
    d = np.asarray(geo.direction).reshape(3, 3)
    return np.asarray(geo.origin) + d @ (np.asarray(geo.spacing)[::-1] * idx)


@pytest.fixture(scope="module")
def case_with_tumours():
    return make_phantom(11, "small", num_tumours=3)


@pytest.fixture(scope="module")
def case_without_tumours():
    return make_phantom(11, "small", num_tumours=0)


def test_deterministic_per_seed(case_with_tumours):
    img, lab, geo = case_with_tumours
    img2, lab2, geo2 = make_phantom(11, "small", num_tumours=3)
    assert geo == geo2
    np.testing.assert_array_equal(img, img2)
    np.testing.assert_array_equal(lab, lab2)
    img3, lab3, _ = make_phantom(12, "small", num_tumours=3)
    assert img3.shape != img.shape or not np.array_equal(lab3, lab)


def test_types_and_shapes(case_with_tumours):
    img, lab, geo = case_with_tumours
    assert img.dtype == np.int16 and lab.dtype == np.uint8
    assert img.shape == lab.shape == geo.shape
    assert img.min() >= -1024
    assert set(np.unique(lab).tolist()) <= set(LABELS.values())


def test_every_label_present_with_tumours_and_none_without(case_with_tumours, case_without_tumours):
    _, lab, _ = case_with_tumours
    assert set(np.unique(lab).tolist()) == set(LABELS.values())
    _, lab0, _ = case_without_tumours
    assert set(np.unique(lab0).tolist()) == set(LABELS.values()) - {LABELS["liver_tumour"]}


def test_tumour_override_changes_only_the_tumours(case_with_tumours, case_without_tumours):
    """Tumours override the liver label and nothing else: the rest of the case is unchanged."""
    _, lab, _ = case_with_tumours
    _, lab0, _ = case_without_tumours
    tumour = lab == LABELS["liver_tumour"]
    assert np.all(lab0[tumour] == LABELS["liver"])
    np.testing.assert_array_equal(lab[~tumour], lab0[~tumour])


def test_tumour_count_distribution():
    counts = [sample_params(s, "small").num_tumours for s in range(200)]
    frac_none = np.mean(np.asarray(counts) == 0)
    assert 0.1 < frac_none < 0.35
    assert max(counts) == 3


@pytest.mark.parametrize("seed", [11, 3])
def test_median_hu_per_label_is_realistic(seed, case_with_tumours):
    img, lab, _ = case_with_tumours if seed == 11 else make_phantom(seed, "small", num_tumours=2, **FAST)
    windows = {"liver": (85, 140), "spleen": (90, 140), "kidney_right": (110, 200), "kidney_left": (110, 200),
               "pancreas": (60, 115), "aorta": (150, 270), "liver_tumour": (10, 125)}
    for name, (lo, hi) in windows.items():
        med = float(np.median(img[lab == LABELS[name]]))
        assert lo <= med <= hi, (name, med)
    assert np.median(img[lab == LABELS["liver_tumour"]]) < np.median(img[lab == LABELS["liver"]])
    corner = img[:, :8, :8]
    assert abs(float(np.median(corner)) + 1000) < 30  # air outside the body
    body_bg = img[(lab == 0) & (img > -200) & (img < 0)]
    assert body_bg.size > 0 and -130 < np.median(body_bg) < -60  # fat


def test_noise_and_blur_present(case_with_tumours):
    img, lab, _ = case_with_tumours
    sd = float(np.std(img[lab == LABELS["liver"]]))
    assert 8 < sd < 40

    def flat_fraction(image: np.ndarray) -> float:
        """Share of aorta voxels within 2 HU of the median: high for a clean image, low with noise."""
        v = image[lab == LABELS["aorta"]].astype(float)
        return float(np.mean(np.abs(v - np.median(v)) <= 2))

    clean, lab_c, _ = make_phantom(11, "small", num_tumours=3, noise_sd=0.0, blur_sigma=(0.0, 0.0, 0.0))
    np.testing.assert_array_equal(lab_c, lab)  # acquisition settings never change the anatomy
    blurred, _, _ = make_phantom(11, "small", num_tumours=3, noise_sd=0.0)
    assert flat_fraction(clean) > 0.6
    assert flat_fraction(blurred) < flat_fraction(clean)  # partial-volume blur softens the edges
    assert flat_fraction(img) < 0.3


@pytest.mark.parametrize("size", sorted(SIZES))
def test_spacing_and_shape_ranges(size):
    preset = SIZES[size]
    xy, zs, shapes = [], [], []
    for s in range(60):
        p = sample_params(s, size)
        assert p.spacing[1] == p.spacing[2]
        xy.append(p.spacing[1])
        zs.append(p.spacing[0])
        shapes.append(p.shape)
    assert preset.xy_spacing[0] - 1e-9 <= min(xy) and max(xy) <= preset.xy_spacing[1] + 1e-9
    assert 0.6 <= min(xy) and max(xy) <= 1.0
    assert 1.0 <= min(zs) and max(zs) <= 5.0 + 1e-9
    assert max(zs) - min(zs) > 1.0 and max(xy) - min(xy) > 0.05  # varies per case
    nz = [sh[0] for sh in shapes]
    assert preset.n_z[0] <= min(nz) and max(nz) <= preset.n_z[1]
    assert all(preset.n_xy[0] <= sh[1] <= preset.n_xy[1] and sh[1] == sh[2] for sh in shapes)
    orientations = {sample_params(s, size).orientation for s in range(60)}
    assert orientations == {"LPS", "RAS", "LPI", "oblique"}


def test_orientations_are_the_same_body_in_physical_space():
    _, ref, ref_geo = oriented(5, "LPS")
    _, ras, ras_geo = oriented(5, "RAS")
    _, lpi, lpi_geo = oriented(5, "LPI")
    assert ras_geo.direction == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    assert lpi_geo.direction[8] == -1.0
    # Same voxel centres in physical space: the arrays are flips of each other (up to float rounding
    # of a voxel centre lying exactly on a surface).
    assert np.mean(ras[:, ::-1, ::-1] != ref) < 1e-4
    assert np.mean(lpi[::-1] != ref) < 1e-4
    _, obl, obl_geo = oriented(5, "oblique")
    assert not np.allclose(np.asarray(obl_geo.direction).reshape(3, 3), np.diag(np.diag(
        np.asarray(obl_geo.direction).reshape(3, 3))))
    for name in ("liver", "spleen", "kidney_left", "pancreas"):
        c_ref = physical_centroid(ref == LABELS[name], ref_geo)
        for lab, geo in ((ras, ras_geo), (lpi, lpi_geo), (obl, obl_geo)):
            assert np.abs(physical_centroid(lab == LABELS[name], geo) - c_ref).max() < 3.0, name


@pytest.mark.parametrize("orientation", ["RAS", "LPI", "oblique"])
def test_anatomical_sides_in_lps(orientation):
    """In LPS, +x is the patient's left: the liver lies at lower x than the body centre, the spleen higher."""
    img, lab, geo = oriented(5, orientation)
    body_x = physical_centroid(img > -300, geo)[0]
    cen = {n: physical_centroid(lab == LABELS[n], geo) for n in LABELS if n != "background" and (lab == LABELS[n]).any()}
    assert cen["liver"][0] < body_x < cen["spleen"][0]
    assert cen["kidney_right"][0] < body_x < cen["kidney_left"][0]
    # aorta lies anterior (lower y in LPS) to the vertebrae, i.e. anterior to the kidneys' centres
    assert cen["aorta"][1] < min(cen["kidney_right"][1], cen["kidney_left"][1])
    # liver dome above the kidneys (higher z = superior)
    assert cen["liver"][2] > max(cen["kidney_right"][2], cen["kidney_left"][2])


def test_overrides_are_validated():
    with pytest.raises(AutosegError, match="unknown phantom override"):
        make_phantom(0, "small", colour="blue")
    with pytest.raises(AutosegError, match="unknown phantom size"):
        make_phantom(0, "huge")
    with pytest.raises(AutosegError, match="orientation"):
        make_phantom(0, "small", orientation="XYZ")
