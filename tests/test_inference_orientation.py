"""Known answer through run_inference: a cascade whose networks threshold intensity labels each voxel of
an asymmetric phantom exactly, so the mask written for a RAS, LPS or oblique file must equal the truth
voxel for voxel on the input's grid. A flip or transpose anywhere between reading and writing fails."""
import math

import numpy as np
import pytest

from autoseg.io import Geometry, read_image, write_image
from autoseg.inference.cli import run_inference
from autoseg.inference.random_models import tiny_plans, write_random_checkpoints

from test_inference_cascade import SPACING, Voxelwise, organ_net, phantom, roi_net, tumour_net

NAME = "Dataset503_Orient"
NETS = {"roi": roi_net, "organ": organ_net, "tumour": tumour_net}


def _rot(deg: float) -> tuple:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


DIRECTIONS = {"lps": (1, 0, 0, 0, 1, 0, 0, 0, 1), "ras": (-1, 0, 0, 0, -1, 0, 0, 0, 1), "oblique": _rot(25)}


@pytest.fixture
def known_answer_models(tmp_path, monkeypatch):
    import autoseg.inference.predictor as predictor_module

    plans = tiny_plans(NAME)
    plans["stages"]["organ"]["target_spacing"] = list(SPACING)  # every stage but roi at the data's spacing
    write_random_checkpoints(plans, tmp_path / "res")
    real = predictor_module.load_stage_model

    def known(stage, checkpoints, device, conv_dtype=None):
        sm = real(stage, checkpoints, device, conv_dtype)
        sm.network = Voxelwise(NETS[stage])
        return sm

    monkeypatch.setattr(predictor_module, "load_stage_model", known)
    monkeypatch.setenv("AUTOSEG_RESULTS", str(tmp_path / "res"))


def test_masks_match_truth_in_every_orientation(known_answer_models, tmp_path):
    img, gt = phantom()
    gt[24:26, 50:53, 50:53] = 0  # the decoy outside the ROI stays background
    assert not np.array_equal(gt, gt[:, :, ::-1]) and not np.array_equal(gt, gt[:, ::-1])  # flips show
    geos = {}
    for name, direction in DIRECTIONS.items():
        geos[name] = Geometry(SPACING, (12.0, -30.0, 55.0), direction, img.shape)
        write_image(img, geos[name], tmp_path / "in" / f"{name}_0000.nii.gz")
    assert run_inference(str(tmp_path / "in"), str(tmp_path / "out"), NAME, device="cpu") == 0
    for name, geo in geos.items():
        mask, mgeo = read_image(tmp_path / "out" / f"{name}.nii.gz")
        assert mgeo.same_grid(geo, tol=1e-5), name
        assert np.array_equal(mask, gt), f"{name}: {np.count_nonzero(mask != gt)} voxels differ"
