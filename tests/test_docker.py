"""The Docker entry script without Docker, as CI can run it (its full FLARE run, from a bundle alone, is
tests/test_bundle.py::test_export_install_predict_from_the_zip_alone); the Dockerfile's FLARE contract
checked statically (building the image needs a registry this CI cannot reach)."""
import re
from pathlib import Path

from test_bundle import run_predict_sh

REPO = Path(__file__).resolve().parents[1]


def test_predict_sh_without_model_says_so(tmp_path):
    r = run_predict_sh({"AUTOSEG_INPUTS": str(tmp_path), "AUTOSEG_OUTPUTS": str(tmp_path / "o"),
                        "AUTOSEG_MODEL": str(tmp_path / "none.zip")})
    assert r.returncode == 2 and "no model bundle at" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_dockerfile_follows_the_flare_layout():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M) and "whl/${VARIANT}" in text  # CPU default, CUDA by arg
    assert re.search(r"^WORKDIR /workspace$", text, re.M)
    assert re.search(r"^COPY docker/predict\.sh docker/\*\.zip /workspace/$", text, re.M)
    assert 'CMD ["sh", "predict.sh"]' in text and "/workspace/model.zip" in (REPO / "docker" / "predict.sh").read_text()
    assert "/workspace/inputs" in (REPO / "docker" / "predict.sh").read_text()
    for folder in ("autoseg", "planners", "trainers", "inference", "evaluation"):  # every package setup.py installs
        assert re.search(rf"^COPY {folder} {folder}$", text, re.M)


def test_written_files_get_the_usual_mode_not_mkstemps_0600(tmp_path):
    """A container runs as root: 0600 masks on a mounted folder would be unreadable for the host's user."""
    import os

    from autoseg.utils import atomic_path

    with atomic_path(tmp_path / "mask.nii.gz") as tmp:
        tmp.write_bytes(b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "mask.nii.gz").stat().st_mode & 0o777 == 0o666 & ~umask
