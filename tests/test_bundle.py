"""Model bundles: export -> install -> predict from the zip alone; bad bundles refused, nothing installed."""
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg import AutosegError
from autoseg.inference.bundle import export_bundle, install_bundle, installed_bundles, open_model, read_bundle
from autoseg.inference.random_models import tiny_plans, write_random_checkpoints
from autoseg.io import Geometry, read_image, write_image

REPO = Path(__file__).resolve().parents[1]


def run_predict_sh(env_extra: dict, cwd=None) -> subprocess.CompletedProcess:
    """docker/predict.sh without Docker: paths and flags from the environment, autoseg from this venv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOSEG_", "nnUNet_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(env_extra)
    return subprocess.run(["sh", str(REPO / "docker" / "predict.sh")], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def write_cases(folder: Path, n: int = 2, shape=(12, 24, 24)) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.full(shape, -1000, np.int16)
        img[1:-1, 3:-3, 3:-3] = rng.integers(-100, 250, (shape[0] - 2, shape[1] - 6, shape[2] - 6))
        write_image(img, Geometry((2.0, 1.5, 1.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), shape),
                    folder / f"case{i}_0000.nii.gz")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A two-stage random model (two organ folds, one with a postprocessing rule) exported as a zip."""
    tmp = tmp_path_factory.mktemp("bundle")
    ckpts = write_random_checkpoints(tiny_plans(stages=("roi", "organ")), tmp / "results", folds=(0, 1))
    (ckpts["organ"][0].parent / "postprocessing.json").write_text(json.dumps({"rules": {"1": {"keep_largest": True}}}))
    zpath = export_bundle(999, tmp / "model.zip", results=tmp / "results")
    return zpath, tmp / "results"


def rewrite(src: Path, dst: Path, change=None, manifest_change=None, rehash: bool = True) -> Path:
    """A copy of a bundle with members changed (None deletes) and the manifest rehashed or edited."""
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members.pop("manifest.json"))
    for name, data in (change or {}).items():
        if data is None:
            members.pop(name)
        else:
            members[name] = data
    if rehash:
        manifest["members"] = {n: hashlib.sha256(d).hexdigest() for n, d in members.items()}
    if manifest_change:
        manifest_change(manifest)
    with zipfile.ZipFile(dst, "w") as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        for n, d in members.items():
            zf.writestr(n, d)
    return dst


def test_manifest_lists_every_member_with_its_hash(bundle):
    zpath, _ = bundle
    manifest, data = read_bundle(zpath)
    assert set(data) == set(manifest["members"]) and {"plans.json", "dataset.json"} <= set(data)
    assert "organ/Trainer/fold_0/postprocessing.json" in data
    assert manifest["versions"]["torch"] == torch.__version__ and manifest["stages"]["organ"]["checkpoints"] == [
        "organ/Trainer/fold_0/checkpoint_final.pt", "organ/Trainer/fold_1/checkpoint_final.pt"]
    ckpt = torch.load(io.BytesIO(data["organ/Trainer/fold_0/checkpoint_final.pt"]), weights_only=True)
    assert "network_weights" in ckpt and "optimizer_state" not in ckpt


def test_export_install_predict_from_the_zip_alone(bundle, tmp_path):
    """A fresh process with only the zip and the images (no results, no preprocessed data, training code
    unimportable) predicts what the original checkpoints predict; so does the installed bundle."""
    from autoseg.inference.cli import run_inference

    zpath, results = bundle
    write_cases(tmp_path / "in")
    assert run_inference(str(tmp_path / "in"), str(tmp_path / "ref"), 999, results=str(results), device="cpu",
                         num_threads=1) == 0
    fresh = tmp_path / "fresh"  # as in the Docker image: the zip, the inputs, predict.sh
    fresh.mkdir()
    (fresh / "model.zip").write_bytes(zpath.read_bytes())
    autoseg = tmp_path / "autoseg_without_training_code"
    autoseg.write_text(f"#!/bin/sh\nexec {sys.executable} -c \"import sys; sys.modules['autoseg.trainers'] = None; "
                       "sys.modules['autoseg.planners'] = None; from autoseg.cli import main; "
                       "raise SystemExit(main(sys.argv[1:]))\" \"$@\"\n")
    autoseg.chmod(0o755)
    r = run_predict_sh({"AUTOSEG_INPUTS": str(tmp_path / "in"), "AUTOSEG_OUTPUTS": str(fresh / "out"),
                        "AUTOSEG_MODEL": "model.zip", "AUTOSEG_DEVICE": "cpu", "AUTOSEG_CMD": str(autoseg),
                        "AUTOSEG_EXTRA_ARGS": "--num-threads 1"}, cwd=fresh)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in fresh.iterdir()) == ["model.zip", "out"]  # nothing else was needed or made
    assert sorted(p.name for p in (fresh / "out").iterdir()) == ["case0.nii.gz", "case1.nii.gz"]  # FLARE names
    install_bundle(fresh / "model.zip", results=tmp_path / "installed")
    assert list(installed_bundles(tmp_path / "installed")) == ["model"]
    assert run_inference(str(tmp_path / "in"), str(tmp_path / "byname"), None, model="model",
                         results=str(tmp_path / "installed"), device="cpu", num_threads=1) == 0
    for case in ("case0", "case1"):
        ref = read_image(tmp_path / "ref" / f"{case}.nii.gz")[0]
        assert np.array_equal(read_image(fresh / "out" / f"{case}.nii.gz")[0], ref)
        assert np.array_equal(read_image(tmp_path / "byname" / f"{case}.nii.gz")[0], ref)


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {Path.cwd() / 'h16_pwned'}",))


def _evil_checkpoint() -> bytes:
    buf = io.BytesIO()
    torch.save({"network_weights": Evil(), "plans": {}}, buf)
    return buf.getvalue()


CKPT = "organ/Trainer/fold_0/checkpoint_final.pt"
BAD = {
    "missing member": (dict(change={CKPT: None}, rehash=False), "is missing"),
    "changed member": (dict(change={"plans.json": b"{}"}, rehash=False), "was changed"),
    "extra member": (dict(change={"../evil.py": b"x"}, rehash=False), "not in the manifest"),
    "newer schema": (dict(manifest_change=lambda m: m.update(schema_version=99)), "newer than this autoseg"),
    "unsafe path": (dict(change={"../escape.pt": b"x"}), "unsafe path"),
    "member outside the folds": (dict(change={"run_me.py": b"x"}), "unsafe path"),
    "checkpoint outside a fold": (dict(manifest_change=lambda m: m["stages"]["organ"].update(
        checkpoints=["plans.json"])), "needs checkpoints named"),
    "code in pickle": (dict(change={CKPT: _evil_checkpoint()}), "weights_only"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_bundles_are_refused_and_nothing_is_installed(bundle, tmp_path, case):
    kwargs, message = BAD[case]
    bad = rewrite(bundle[0], tmp_path / "bad.zip", **kwargs)
    results = tmp_path / "results"
    with pytest.raises(AutosegError, match=message) as err:
        install_bundle(bad, results=results)
    assert "\n" not in str(err.value)
    assert not results.exists() or not any(results.iterdir())  # no dataset folder, no staging left
    assert not (Path.cwd() / "h16_pwned").exists()


def test_installed_bundle_checked_before_use(bundle, tmp_path):
    install_bundle(bundle[0], results=tmp_path)
    with pytest.raises(AutosegError, match="already exists"):
        install_bundle(bundle[0], results=tmp_path)
    install_bundle(bundle[0], results=tmp_path, overwrite=True)
    ckpt = tmp_path / "Dataset999_Tiny" / CKPT
    ckpt.write_bytes(ckpt.read_bytes() + b"\0")
    with pytest.raises(AutosegError, match="changed since bundle 'model' was installed"):
        with open_model("model", tmp_path):
            pass
    with pytest.raises(AutosegError, match="not installed"):
        with open_model("nosuch", tmp_path):
            pass


def test_failed_install_rolls_back_to_what_was_there(bundle, tmp_path, monkeypatch):
    install_bundle(bundle[0], results=tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 5:  # in the middle of moving the new fold folders in
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr("autoseg.inference.bundle.os.replace", flaky)
    with pytest.raises(OSError, match="disk full"):
        install_bundle(bundle[0], results=tmp_path, overwrite=True)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.glob(".install-*"))
