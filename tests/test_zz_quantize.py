# After test_zz_compiled_engines.py on purpose: it loads OpenVINO and ONNX Runtime (see that file).
"""int8 quantisation (inference/quantize.py): calibration samples the predictor's own windows, the int8
network is kept only within the DSC bound, the engine finds it by the weights' digest and checks its
record, and the CLI says what it measured."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg import AutosegError
from autoseg.cli import main as cli_main
from autoseg.inference import CascadePredictor
from autoseg.inference import compiled as C
from autoseg.inference.quantize import WindowSampler, image_cases, quantize_model
from autoseg.inference.random_models import tiny_plans, write_random_checkpoints
from autoseg.io import Geometry, write_image

pytestmark = pytest.mark.skipif(C.ENGINES["openvino_int8"].missing() is not None
                                or C._missing_modules("onnxruntime") is not None,
                                reason="int8 needs openvino, onnx and onnxruntime")


def test_window_sampler_keeps_a_uniform_sample_and_passes_windows_through():
    net = torch.nn.Identity()
    s = WindowSampler(net, size=10, seed=0)
    firsts = []
    for trial in range(200):
        s = WindowSampler(net, size=10, seed=trial)
        for i in range(0, 100, 4):
            x = torch.arange(i, i + 4, dtype=torch.float32).view(4, 1, 1, 1, 1)
            assert torch.equal(s(x), x)
        assert s.seen == 100 and len(s.kept) == 10
        firsts.append(sum(float(w.ravel()[0]) < 50 for w in s.kept))
    assert 4.0 < np.mean(firsts) < 6.0  # half the windows come from the first half of the stream


def _cases(folder: Path, labels: Path | None, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    geo = Geometry((2.5, 2.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (16, 40, 40))
    folder.mkdir(parents=True)
    for i in range(n):
        img = np.full(geo.shape, -1000, np.int16)
        img[2:-2, 6:-6, 6:-6] = rng.integers(-100, 80, (12, 28, 28))
        lab = np.zeros(geo.shape, np.uint8)
        lab[4:10, 10:24, 10:24] = 1
        img[lab == 1] += 120
        write_image(img, geo, folder / f"case{i}_0000.nii.gz")
        if labels is not None:
            labels.mkdir(exist_ok=True)
            write_image(lab, geo, labels / f"case{i}.nii.gz")


@pytest.fixture
def model(tmp_path, monkeypatch):
    results = tmp_path / "results"
    monkeypatch.setenv("AUTOSEG_RESULTS", str(results))
    monkeypatch.setenv("AUTOSEG_RAW", str(tmp_path / "raw"))
    raw = tmp_path / "raw" / "Dataset999_Tiny"
    _cases(raw / "imagesTr", None, 3, 0)
    _cases(raw / "imagesTs", raw / "labelsTs", 2, 1)
    ckpts = write_random_checkpoints(tiny_plans(stages=("organ",), features=(8, 16), patch=(16, 32, 32)), results)
    return ckpts, raw


def _predictor(ckpts, **kw) -> CascadePredictor:
    return CascadePredictor(ckpts, device="cpu", **kw)


def test_kept_int8_network_runs_through_the_engine_and_agrees_with_float32(model):
    ckpts, raw = model
    pred = _predictor(ckpts, precision="fp32", engine="eager")
    rec = quantize_model(pred, image_cases(raw / "imagesTr"), image_cases(raw / "imagesTs"), raw / "labelsTs",
                         windows=2, max_drop=1.0)
    assert rec["accepted"] and rec["stages"]["organ"]["calibration_windows"] == 2  # of 3 seen
    assert set(rec) >= {"dsc_fp32", "dsc_int8", "drop", "per_label", "calibration_cases", "validation_cases"}
    compiled = ckpts["organ"][0].parent.parent / "compiled"
    model_file = next(compiled.glob("*.int8.onnx"))
    saved = json.loads(next(compiled.glob("*.int8.json")).read_text())
    assert saved["accepted"] and saved["stage"] == "organ" and len(saved["sha256"]) == 64
    int8 = _predictor(ckpts, precision="fp32", engine="openvino_int8")
    assert int8.engines["organ"]["engine"] == "openvino_int8", int8.engines
    ref = _predictor(ckpts, precision="fp32", engine="eager")
    img = np.random.default_rng(3).integers(-200, 200, (16, 40, 40)).astype(np.int16)
    a, b = ref.predict_array(img, (2.5, 2.0, 2.0)), int8.predict_array(img, (2.5, 2.0, 2.0))
    assert a.shape == b.shape and (a == b).mean() > 0.9
    # a changed file no longer matches its record: the engine refuses it and the stage runs eager
    model_file.write_bytes(model_file.read_bytes()[:-1] + b"\0")
    with pytest.raises(AutosegError, match="differs"):
        C.find_int8(rec["stages"]["organ"]["digest"], rec["stages"]["organ"]["patch_shape"], [compiled])
    again = _predictor(ckpts, precision="fp32", engine="openvino_int8")
    assert again.engines["organ"]["engine"] == "eager"


def test_int8_beyond_the_dsc_bound_is_not_kept(model):
    ckpts, raw = model
    pred = _predictor(ckpts, precision="fp32", engine="eager")
    rec = quantize_model(pred, image_cases(raw / "imagesTr"), image_cases(raw / "imagesTs"), raw / "labelsTs",
                         windows=4, max_drop=-1.0)
    compiled = ckpts["organ"][0].parent.parent / "compiled"
    assert not rec["accepted"] and not list(compiled.glob("*.int8.onnx"))
    assert json.loads(next(compiled.glob("*.int8.json")).read_text())["accepted"] is False
    fallback = _predictor(ckpts, precision="fp32", engine="openvino_int8")
    assert fallback.engines["organ"]["engine"] == "eager"
    assert "quantis" in fallback.engines["organ"]["reason"] or "int8" in fallback.engines["organ"]["reason"]


def test_cli_reports_and_needs_held_out_labels(model, capsys):
    ckpts, raw = model
    assert cli_main(["quantize", "-t", "999", "--cases", "2", "--windows", "4", "--max-drop", "1"]) == 0
    out = capsys.readouterr().out
    assert "held-out DSC (2 cases)" in out and "int8 kept" in out and "ms int8" in out
    for p in (raw / "labelsTs").iterdir():
        p.unlink()
    (raw / "labelsTs").rmdir()
    assert cli_main(["quantize", "-t", "999"]) == 1
    assert "no held-out labelled cases" in capsys.readouterr().err


def test_bundle_carries_the_kept_int8_network(model, tmp_path):
    from autoseg.inference.bundle import export_bundle, open_model, read_bundle

    ckpts, raw = model
    pred = _predictor(ckpts, precision="fp32", engine="eager")
    quantize_model(pred, image_cases(raw / "imagesTr"), image_cases(raw / "imagesTs"), raw / "labelsTs",
                   windows=2, max_drop=1.0)
    zpath = export_bundle(999, tmp_path / "m.zip", compiled=True)
    manifest, data = read_bundle(zpath)
    int8 = sorted(m for m in data if ".int8." in m)
    assert [m.rsplit(".", 2)[-2:] for m in int8] == [["int8", "json"], ["int8", "onnx"]]
    assert all(m in manifest["members"] for m in int8)
    with open_model(zpath) as bundled:
        from_zip = CascadePredictor(bundled, device="cpu", precision="fp32", engine="openvino_int8")
    assert from_zip.engines["organ"]["engine"] == "openvino_int8"
