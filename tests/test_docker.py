"""The Docker entry script, run without Docker (paths from the environment) as CI can; the Dockerfile's
FLARE contract checked statically (building the image needs a registry this CI cannot reach)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from autoseg.inference.bundle import export_bundle
from autoseg.inference.random_models import tiny_plans, write_random_checkpoints
from autoseg.io import read_image

from test_bundle import write_cases

REPO = Path(__file__).resolve().parents[1]


def _predict_sh(env_extra: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOSEG_", "nnUNet_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(env_extra)
    return subprocess.run(["sh", str(REPO / "docker" / "predict.sh")], env=env, capture_output=True, text=True,
                          timeout=300)


def test_predict_sh_flare_protocol(tmp_path):
    write_random_checkpoints(tiny_plans(stages=("organ",)), tmp_path / "results")
    model = export_bundle(999, tmp_path / "model.zip", results=tmp_path / "results")
    write_cases(tmp_path / "inputs", n=2, shape=(8, 16, 16))
    r = _predict_sh({"AUTOSEG_INPUTS": str(tmp_path / "inputs"), "AUTOSEG_OUTPUTS": str(tmp_path / "outputs"),
                     "AUTOSEG_MODEL": str(model), "AUTOSEG_DEVICE": "cpu", "AUTOSEG_EXTRA_ARGS": "--num-threads 1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "outputs").glob("*.nii.gz")) == ["case0.nii.gz", "case1.nii.gz"]
    mask, geom = read_image(tmp_path / "outputs" / "case0.nii.gz")
    assert geom.same_grid(read_image(tmp_path / "inputs" / "case0_0000.nii.gz")[1]) and mask.dtype == np.uint8


def test_predict_sh_without_model_says_so(tmp_path):
    r = _predict_sh({"AUTOSEG_INPUTS": str(tmp_path), "AUTOSEG_OUTPUTS": str(tmp_path / "o"),
                     "AUTOSEG_MODEL": str(tmp_path / "none.zip")})
    assert r.returncode == 2 and "no model bundle at" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_dockerfile_follows_the_flare_layout():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M) and "whl/${VARIANT}" in text  # CPU default, CUDA by arg
    assert re.search(r"^WORKDIR /workspace$", text, re.M)
    assert re.search(r"^COPY docker/predict\.sh docker/\*\.zip /workspace/$", text, re.M)
    assert 'CMD ["sh", "predict.sh"]' in text and "/workspace/model.zip" in (REPO / "docker" / "predict.sh").read_text()
    for folder in ("autoseg", "planners", "trainers", "inference", "evaluation"):  # every package setup.py installs
        assert re.search(rf"^COPY {folder} {folder}$", text, re.M)
