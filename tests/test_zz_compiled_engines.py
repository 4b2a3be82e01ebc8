# Runs last on purpose (file name): once OpenVINO or ONNX Runtime is loaded, a later in-process training
# run segfaulted (2026-12-02, not yet understood), so no test may follow these in the same process.
"""Compiled CPU engines (inference/compiled.py): each installed engine agrees with eager on a tiny
network, a failing or disagreeing engine falls back to eager, the decision is cached, a bad --engine
is one line, and the predictor runs its stages through the chosen engine."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from autoseg import AutosegError
from autoseg.networks import build_network
from autoseg.inference import compiled as C

SHAPE = [1, 1, 8, 16, 16]


@pytest.fixture
def net():
    torch.manual_seed(0)
    cfg = {"class": "UNet", "features": [4, 8], "kernel_sizes": [[3, 3, 3]] * 2, "strides": [[1, 1, 1], [2, 2, 2]],
           "blocks": "plain"}
    return build_network(cfg, 1, 3, deep_supervision=False).eval()


class Fake(C.Engine):
    """An engine whose runner is ``transform(network(x))``, or whose build raises."""

    def __init__(self, name, transform=None, error=None):
        self.name, self.transform, self.error, self.builds = name, transform, error, 0

    def build(self, network, example, onnx_path):
        self.builds += 1
        if self.error:
            raise self.error
        return lambda x: self.transform(network(x))


@pytest.mark.parametrize("name", ["onnxruntime", "openvino", "channels_last", "compile"])
def test_installed_engine_agrees_with_eager(net, name):
    why = C.ENGINES[name].missing()
    if why:
        pytest.skip(why)
    if name == "compile" and not os.environ.get("AUTOSEG_TEST_COMPILE"):
        pytest.skip("torch.compile takes about a minute even for a tiny net on 2 cores (AUTOSEG_TEST_COMPILE=1)")
    model, rec = C.choose_engine(net, SHAPE, name)
    assert rec["engine"] == name and isinstance(model, C.EngineNetwork), rec
    assert rec["candidates"][name]["agreement"] >= C.MIN_AGREEMENT
    x = torch.randn(SHAPE)
    with torch.inference_mode():
        ref, out = net(x), model(x)
        assert (ref.argmax(1) == out.argmax(1)).float().mean() >= C.MIN_AGREEMENT
        assert float((ref - out).abs().max()) < 1e-3
        other = torch.randn(1, 1, 16, 16, 16)  # a shape it was not built for runs eager, exactly
        assert torch.equal(model(other), net(other))


@pytest.mark.parametrize("fake, why", [
    (Fake("negated", transform=lambda y: -y), "rejected"),
    (Fake("nan", transform=lambda y: y * float("nan")), "rejected"),
    (Fake("broken", error=RuntimeError("unsupported operator Foo")), "failed"),
])
def test_disagreeing_or_failing_engine_falls_back_to_eager(net, monkeypatch, fake, why):
    monkeypatch.setitem(C.ENGINES, fake.name, fake)
    model, rec = C.choose_engine(net, SHAPE, fake.name)
    assert model is net and rec["engine"] == "eager"
    assert why in rec["candidates"][fake.name] and fake.name in rec["reason"]
    if why == "failed":
        assert "unsupported operator Foo" in rec["candidates"][fake.name]["failed"]


def test_auto_picks_the_fastest_agreeing_engine_and_caches_the_decision(net, monkeypatch, tmp_path):
    """Timing is injected (faster: 'quick'; fastest but wrong: 'wrong'), so the choice is by measurement."""
    quick, wrong = Fake("quick", transform=lambda y: y.clone()), Fake("wrong", transform=lambda y: -y)
    monkeypatch.setattr(C, "ENGINES", {"quick": quick, "wrong": wrong})
    timings = []

    def fake_time(fn, x, repeats):
        timings.append(fn)
        return 1.0 if fn is net else 0.5

    monkeypatch.setattr(C, "median_time", fake_time)
    model, rec = C.choose_engine(net, SHAPE, "auto")
    assert rec["engine"] == "quick" and rec["candidates"]["quick"]["speedup"] == 2.0
    assert "rejected" in rec["candidates"]["wrong"] and len(timings) == 2  # eager and quick only
    assert C.describe({"organ": rec}) == "engines: organ quick (2.00x eager)"
    files = list(C.cache_dir().glob("decision-*.json"))
    assert len(files) == 1 and C.cache_dir() == tmp_path / "engine-cache"
    # a second run reuses the decision: no timing, one build to check it against eager again
    model2, rec2 = C.choose_engine(net, SHAPE, "auto")
    assert rec2["engine"] == "quick" and rec2["cached"] and len(timings) == 2
    assert isinstance(model2, C.EngineNetwork) and quick.builds == 2 and wrong.builds == 1
    # other weights are another key: measured again
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    assert not C.choose_engine(net, SHAPE, "auto")[1].get("cached") and len(timings) == 4


def test_auto_keeps_eager_when_no_engine_is_faster_or_the_window_is_tiny(net, monkeypatch):
    monkeypatch.setattr(C, "ENGINES", {"same": Fake("same", transform=lambda y: y.clone())})
    monkeypatch.setattr(C, "median_time", lambda fn, x, repeats: 1.0)
    model, rec = C.choose_engine(net, SHAPE, "auto")
    assert model is net and "only 1.00x eager" in rec["reason"]
    monkeypatch.setattr(C, "median_time", lambda fn, x, repeats: 0.001)
    model, rec = C.choose_engine(net, [1, 1, 8, 8, 8], "auto")
    assert model is net and "too little" in rec["reason"] and rec["candidates"] == {}
    # a 20 ms window (the default CPU plans' size) is raced: OpenVINO bf16 made those 1.7x faster end to end
    monkeypatch.setattr(C, "median_time", lambda fn, x, repeats: 0.02)
    model, rec = C.choose_engine(net, [1, 1, 8, 8, 12], "auto")
    assert "same" in rec["candidates"] and "only 1.00x" in rec["reason"]


def test_eager_and_cuda_never_build(net, monkeypatch):
    broken = Fake("broken", error=AssertionError("must not build"))
    monkeypatch.setattr(C, "ENGINES", {"broken": broken})
    assert C.choose_engine(net, SHAPE, "eager")[0] is net
    assert C.choose_engine(net, SHAPE, "auto", device="cuda")[1]["reason"].startswith("cuda")
    assert broken.builds == 0


class FakeBf16(Fake):
    bf16 = True


def test_under_bf16_autocast_the_baseline_is_eager_bf16_and_bf16_engines_join(net, monkeypatch):
    """On a CPU with native bf16, --precision auto computes in bf16: the engines race eager *bf16* (what
    would run otherwise), fp32 engines stay candidates, and a bf16 engine needs the agreement with eager
    fp32 that eager bf16 itself reaches on the probe. Without bf16 the bf16 engines are not candidates."""
    rounded = lambda y: y.to(torch.bfloat16).float()  # noqa: E731
    fp32, half = Fake("fp32eng", transform=lambda y: y.clone()), FakeBf16("bf16eng", transform=rounded)
    monkeypatch.setattr(C, "ENGINES", {"fp32eng": fp32, "bf16eng": half})
    timed = []

    def fake_time(fn, x, repeats):
        timed.append(fn)
        return {0: 1.0, 1: 0.5}.get(len(timed) - 1, 0.25)  # eager bf16, fp32 engine, bf16 engine

    monkeypatch.setattr(C, "median_time", fake_time)
    model, rec = C.choose_engine(net, SHAPE, "auto", amp=True)
    assert rec["key"]["precision"] == "bf16" and timed[0] is not net  # the baseline is the bf16 copy
    assert rec["engine"] == "bf16eng" and set(rec["candidates"]) == {"fp32eng", "bf16eng"}
    assert rec["candidates"]["bf16eng"]["speedup"] == 4.0 and 0 < rec["eager_bf16_agreement"] <= 1
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the predictor calls it under autocast: engine, fp32 in
        out = model(torch.randn(SHAPE))
    assert out.dtype == torch.float32 and half.builds == 1
    timed.clear()
    model, rec = C.choose_engine(net, SHAPE, "auto", amp=False)
    assert rec["engine"] == "fp32eng" and set(rec["candidates"]) == {"fp32eng"} and timed[0] is net
    with pytest.raises(AutosegError, match="--engine bf16eng computes in bf16"):
        C.choose_engine(net, SHAPE, "bf16eng", amp=False)
    # the floor: eager bf16's own flips, with slack; an fp32 engine always needs MIN_AGREEMENT
    assert C._floor("bf16eng", 0.98) == pytest.approx(1 - C.BF16_FLIP_SLACK * 0.02)
    assert C._floor("bf16eng", 0.9999) == C.MIN_AGREEMENT and C._floor("fp32eng", 0.98) == C.MIN_AGREEMENT


def test_openvino_bf16_where_the_cpu_has_bf16(net):
    why = C.ENGINES["openvino_bf16"].missing()
    if why:
        pytest.skip(why)
    ref = C.eager_bf16(net)
    model, rec = C.choose_engine(net, SHAPE, "openvino_bf16", amp=True)
    assert rec["engine"] == "openvino_bf16", rec
    x = torch.randn(SHAPE)
    with torch.inference_mode():
        fp32, bf16, ov = net(x), ref(x), model(x)
    assert float((ov - fp32).abs().max()) < 0.1 and float((bf16 - fp32).abs().max()) < 0.1


def test_bad_engine_value_is_one_line(tmp_path, capsys):
    from autoseg.cli import main

    with pytest.raises(AutosegError, match=r"--engine 'fast': unknown engine 'fast'; choose auto, eager"):
        C.parse_engine_choice("fast")
    assert main(["run_inference", "-i", str(tmp_path), "-o", str(tmp_path / "o"), "-t", "999",
                 "--engine", "onnxruntime,nope"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown engine 'nope'" in err


def test_predictor_runs_stages_through_the_engine(tmp_path, monkeypatch):
    """--engine NAME reaches every stage; the masks match eager's (an exact copy engine: same labels)."""
    from autoseg.inference.predictor import CascadePredictor
    from autoseg.inference.random_models import tiny_plans, write_random_checkpoints

    monkeypatch.setitem(C.ENGINES, "copy", Fake("copy", transform=lambda y: y.clone()))
    monkeypatch.setattr(C, "median_time", lambda fn, x, repeats: 1.0)  # the choice is not under test here
    ckpts = write_random_checkpoints(tiny_plans(stages=("roi", "organ")), tmp_path / "results")
    img = np.full((20, 40, 40), -1000, np.int16)
    img[2:-2, 5:-5, 5:-5] = np.random.default_rng(0).integers(-100, 250, (16, 30, 30))
    ref = CascadePredictor(ckpts, device="cpu", precision="fp32").predict_array(img, [2.0, 1.5, 1.5])
    pred = CascadePredictor(ckpts, device="cpu", precision="fp32", engine="copy")
    assert {s: r["engine"] for s, r in pred.engines.items()} == {"roi": "copy", "organ": "copy"}
    assert all(isinstance(sm.network, C.EngineNetwork) for sm in pred.stages.values())
    assert np.array_equal(pred.predict_array(img, [2.0, 1.5, 1.5]), ref)


def test_bf16_predictor_keeps_float_weights_for_an_engine_and_casts_an_eager_stage(tmp_path, monkeypatch):
    """Under CPU bf16 autocast the networks load in float32 (what an engine exports); a stage that stays
    eager then gets its conv weights in bf16, as before engines existed; the masks are eager bf16's."""
    from autoseg.inference.predictor import CascadePredictor
    from autoseg.inference.random_models import tiny_plans, write_random_checkpoints

    monkeypatch.setitem(C.ENGINES, "copy", Fake("copy", transform=lambda y: y.clone()))
    monkeypatch.setattr(C, "median_time", lambda fn, x, repeats: 1.0)
    ckpts = write_random_checkpoints(tiny_plans(stages=("roi", "organ")), tmp_path / "results")
    img = np.full((20, 40, 40), -1000, np.int16)
    img[2:-2, 5:-5, 5:-5] = np.random.default_rng(0).integers(-100, 250, (16, 30, 30))
    eager = CascadePredictor(ckpts, device="cpu", precision="bf16", engine="eager")
    conv = lambda m: next(p for n, p in m.named_parameters() if p.dim() == 5)  # noqa: E731
    assert {conv(sm.network).dtype for sm in eager.stages.values()} == {torch.bfloat16}
    pred = CascadePredictor(ckpts, device="cpu", precision="bf16", engine="copy")
    assert {r["engine"] for r in pred.engines.values()} == {"copy"}
    assert {conv(sm.network).dtype for sm in pred.stages.values()} == {torch.float32}
    ref = eager.predict_array(img, [2.0, 1.5, 1.5])
    assert ref.any() and np.mean(pred.predict_array(img, [2.0, 1.5, 1.5]) == ref) > 0.99


def test_bundle_carries_the_onnx_export_and_the_predictor_loads_it(tmp_path):
    """export --compiled: one sha256-listed .onnx per stage; the engine reads it instead of exporting
    (nothing lands in the cache), from the zip and once installed; a changed .onnx is refused."""
    import zipfile

    from autoseg.inference.bundle import export_bundle, install_bundle, open_model, read_bundle
    from autoseg.inference.predictor import CascadePredictor
    from autoseg.inference.random_models import tiny_plans, write_random_checkpoints

    if C.ENGINES["onnxruntime"].missing():
        pytest.skip(C.ENGINES["onnxruntime"].missing())
    write_random_checkpoints(tiny_plans(stages=("organ",)), tmp_path / "results")
    zpath = export_bundle(999, tmp_path / "m.zip", results=tmp_path / "results", compiled=True)
    manifest, data = read_bundle(zpath)
    onnx = [m for m in data if m.endswith(".onnx")]
    assert len(onnx) == 1 and onnx[0].startswith("organ/Trainer/compiled/network-") and onnx[0] in manifest["members"]
    for source in (zpath, "m"):
        if source == "m":
            install_bundle(zpath, results=tmp_path / "installed")
        with open_model(source, tmp_path / "installed") as ckpts:
            pred = CascadePredictor(ckpts, device="cpu", precision="fp32", engine="onnxruntime")
        assert pred.engines["organ"]["engine"] == "onnxruntime"
    assert not list(C.cache_dir().glob("*.onnx"))  # never exported here: the bundle's file was used
    with zipfile.ZipFile(zpath) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members[onnx[0]] = members[onnx[0]][:-8] + b"\0" * 8
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)
    with pytest.raises(AutosegError, match=f"member {onnx[0]} was changed"):
        read_bundle(tmp_path / "bad.zip")
