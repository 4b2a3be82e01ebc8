"""Smoke test of the side-by-side benchmark harness on tiny data, without nnU-Net installed.

The harness itself (benchmarks.run) is not part of CI; these tests cover its pure-Python parts: the
process-tree memory sampler, marker parsing, the nnU-Net -> autoseg plans translation, the patch cap,
the inference-input crop and the markdown table.
"""
from __future__ import annotations

import json
import os
import sys
import textwrap

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg import AutosegError
from benchmarks import harness, inputs, peer_env
from benchmarks.measure import descendant_pids, run_measured, session_pids
from benchmarks.nnunet_plans import autoseg_plans_from_nnunet, resolve_configuration
from benchmarks.report import OURS, THEIRS, Report, Row, median_of, ratio, render

# A child that starts a grandchild holding ~120 MB, then both hold it for a moment.
TREE_SCRIPT = textwrap.dedent("""
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c",
        "import time; b = bytearray(120 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.2)"])
    time.sleep(0.2)
    child.wait()
    print("AUTOSEG_BENCH iteration_s=0.5")
""")


def test_run_measured_sees_the_grandchild(tmp_path):
    log = tmp_path / "tree.log"
    m = run_measured([sys.executable, "-c", TREE_SCRIPT], log_path=log, interval=0.05)
    assert m.returncode == 0 and not m.timed_out
    assert m.max_processes >= 2
    # the grandchild's 120 MB buffer must be counted, on top of two interpreters
    assert m.peak_rss_mb > 120 and m.peak_pss_mb > 100
    assert 1.0 < m.wall_s < 30
    assert harness.markers(log.read_text()) == {"iteration_s": [0.5]}


def test_run_measured_timeout_kills_the_tree(tmp_path):
    m = run_measured([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert m.timed_out and m.returncode != 0 and m.wall_s < 10


def test_pid_helpers_include_self():
    import os

    assert os.getpid() in descendant_pids(os.getpid())
    assert os.getpid() in session_pids(os.getsid(0))


def test_our_phase_line_is_parsed():
    text = ("12:00:00 INFO autoseg.planners.pipeline: plan_and_preprocess Dataset501_X: verify 0.3s, fingerprint 1.3s, "
            "plan 0.0s, preprocess 4.9s\n")
    assert harness.our_phases(text) == {"verify_s": 0.3, "fingerprint_s": 1.3, "plan_s": 0.0, "preprocess_s": 4.9}
    assert harness.our_phases("nothing here") is None


def _nnunet_plans(patch=(32, 96, 96)) -> dict:
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 4, "features_per_stage": [32, 64, 128, 256],
                            "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                            "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
                            "n_conv_per_stage": [2, 2, 2, 2], "n_conv_per_stage_decoder": [2, 2, 2]},
            "_kw_requires_import": []}
    return {"dataset_name": "Dataset990_Tiny", "transpose_forward": [0, 1, 2],
            "foreground_intensity_properties_per_channel": {"0": {"mean": 97.4, "std": 22.3,
                                                                  "percentile_00_5": 30.2, "percentile_99_5": 150.7}},
            "configurations": {"3d_fullres": {"batch_size": 2, "patch_size": list(patch),
                                              "spacing": [2.5, 0.8, 0.8], "normalization_schemes": ["CTNormalization"],
                                              "data_identifier": "nnUNetPlans_3d_fullres",
                                              "architecture": arch},
                               "3d_big": {"inherits_from": "3d_fullres", "patch_size": [64, 128, 128]}}}


def test_plans_translation_matches_the_topology():
    ds = {"labels": {"background": 0, "liver": 1, "tumor": 2}}
    plans = autoseg_plans_from_nnunet(_nnunet_plans(), ds)
    st = plans["stages"]["organ"]
    assert list(plans["stages"]) == ["organ"] and st["classes"] == [1, 2]
    assert st["patch_size"] == [32, 96, 96] and st["batch_size"] == 2 and st["target_spacing"] == [2.5, 0.8, 0.8]
    net = st["network"]
    assert net["features"] == [32, 64, 128, 256] and net["strides"][1] == [1, 2, 2]
    assert net["deep_supervision_levels"] == 3 and net["convs_per_stage"] == [2, 2, 2, 2]
    assert plans["intensity"] == {"scheme": "ct", "clip": [30.2, 150.7], "mean": 97.4, "std": 22.3}
    assert resolve_configuration(_nnunet_plans(), "3d_big")["batch_size"] == 2
    with pytest.raises(AutosegError, match="configuration '2d'"):
        autoseg_plans_from_nnunet(_nnunet_plans(), ds, "2d")


def test_translated_network_builds(tmp_path):
    torch = pytest.importorskip("torch")
    from autoseg.networks import build_network

    plans = autoseg_plans_from_nnunet(_nnunet_plans(), {"labels": {"background": 0, "liver": 1}})
    net = build_network(plans["stages"]["organ"]["network"], 1, 2, deep_supervision=True)
    out = net(torch.zeros(1, 1, 16, 32, 32))
    assert [tuple(o.shape[2:]) for o in out][:2] == [(16, 32, 32), (16, 16, 16)]


def test_capped_patch_and_bench_plans(tmp_path):
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert harness.capped_patch([80, 160, 160], strides, [32, 96, 96]) == [32, 96, 96]
    assert harness.capped_patch([80, 160, 160], strides, [30, 100, 10]) == [28, 96, 8]
    assert harness.capped_patch([80, 160, 160], strides, None) == [80, 160, 160]
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(_nnunet_plans((80, 160, 160))))
    bench = harness.write_bench_plans(tmp_path, [32, 96, 96])
    saved = json.loads((tmp_path / f"{harness.BENCH_PLANS}.json").read_text())
    assert saved == bench and bench["configurations"]["3d_fullres"]["patch_size"] == [32, 96, 96]
    assert harness.needs_own_preprocessing(tmp_path, bench)  # no data folder yet: nnU-Net must preprocess
    # --quality: thinner network and another spacing get their own data identifier, to be preprocessed
    (tmp_path / "nnUNetPlans_3d_fullres").mkdir()
    (tmp_path / "nnUNetPlans_3d_fullres" / "c1.npz").write_bytes(b"")
    thin = harness.write_bench_plans(tmp_path, [32, 64, 64], 0.5, [4.0, 2.0, 2.0])
    cfg = thin["configurations"]["3d_fullres"]
    assert cfg["spacing"] == [4.0, 2.0, 2.0] and cfg["patch_size"] == [32, 64, 64]
    base = _nnunet_plans((80, 160, 160))["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert cfg["architecture"]["arch_kwargs"]["features_per_stage"] == [f // 2 for f in base["features_per_stage"]]
    assert cfg["data_identifier"] != "nnUNetPlans_3d_fullres" and harness.needs_own_preprocessing(tmp_path, thin)
    assert not harness.needs_own_preprocessing(tmp_path, bench)  # same spacing: nnU-Net's data is reused


def test_inference_input_crop_keeps_geometry(tmp_path):
    ds = tmp_path / "Dataset990_Tiny"
    for sub in ("imagesTs", "labelsTs"):
        (ds / sub).mkdir(parents=True)
    (ds / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1}, "file_ending": ".nii.gz"}))
    arr = np.zeros((20, 40, 50), np.int16)
    arr[5:9, 30:34, 40:44] = 1
    for sub, name in (("imagesTs", "c1_0000.nii.gz"), ("labelsTs", "c1.nii.gz")):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((0.8, 0.9, 2.5))
        img.SetOrigin((10.0, -5.0, 3.0))
        sitk.WriteImage(img, str(ds / sub / name))
    ids = inputs.prepare_inference_input(ds, tmp_path / "im", tmp_path / "lab", 1, [8, 16, 16])
    assert ids == ["c1"] and inputs.image_shapes(tmp_path / "im") == [(8, 16, 16)]
    lab = sitk.ReadImage(str(tmp_path / "lab" / "c1.nii.gz"))
    assert sitk.GetArrayFromImage(lab).sum() == arr.sum()  # the labelled anatomy stayed inside the crop
    # the crop moved the origin by whole voxels: physical positions are unchanged
    idx = np.argwhere(sitk.GetArrayFromImage(lab) > 0)[0][::-1]
    assert lab.TransformIndexToPhysicalPoint([int(i) for i in idx]) == pytest.approx((10.0 + 40 * 0.8,
                                                                                       -5.0 + 30 * 0.9, 3.0 + 5 * 2.5))
    assert inputs.crop_window((20, 40, 50), np.array([0.0, 39.0, 25.0]), [8, 16, 100]) == [(0, 8), (24, 40), (0, 50)]


def test_report_table_medians_and_ratios():
    rep = Report(title="t", rows=[Row("train", "iters_per_s", "iterations per second", "it/s", better="higher"),
                                  Row("infer", "per_case_s", "per case", "s", note="not run in --quick")])
    for r, (o, t) in enumerate([(2.0, 1.0), (4.0, 1.0), (3.0, 1.0)]):
        rep.add("train", "iters_per_s", OURS, o, r)
        rep.add("train", "iters_per_s", THEIRS, t, r)
    rep.add("train", "iters_per_s", OURS, None)  # a missing value is not a sample
    assert median_of(rep.samples, "train", "iters_per_s", OURS) == (3.0, 3)
    assert ratio(3.0, 1.0) == 3.0 and ratio(1.0, None) is None
    rep.meta["machine"] = "test box"
    rep.commands.append("autoseg plan_and_preprocess -t 501")
    md = render(rep)
    assert "| train | iterations per second | 3.00 it/s (n=3) | 1.00 it/s (n=3) | 3.000 | higher | ours better ×3.00 |" in md
    assert "not run in --quick" in md and "test box" in md and "autoseg plan_and_preprocess -t 501" in md


def test_peer_env_paths_and_stub_source():
    venv = peer_env.default_venv()
    assert "autoseg-bench" in str(venv) or "AUTOSEG_BENCH_PEER_VENV" in __import__("os").environ
    assert (peer_env.PEER_TRAINER_DIR / f"{peer_env.TRAINER_NAME}.py").is_file()
    compile(peer_env.SITECUSTOMIZE, "sitecustomize.py", "exec")  # the file we install must at least parse


def test_quick_preset_and_stage_rows():
    from benchmarks.run import parse_args
    from benchmarks.rows import WeightSet, rows

    s = parse_args(["--quick", "--stages", "train,infer", "--work", "/tmp/x", "--repeats", "3"])
    assert s.quick and s.stages == ["train", "infer"] and s.size == "small" and s.patch_cap == [32, 96, 96]
    assert s.repeats_preprocess == s.repeats_train == s.repeats_infer == 3
    assert s.their_default_tta and s.infer_cases <= s.n_test
    with pytest.raises(SystemExit):
        parse_args(["--stages", "nonsense"])
    q = parse_args(["--quality"])
    assert q.quality and q.stages == ["train", "infer"] and q.quality_epochs * q.quality_iters >= 500
    assert q.spacing and q.output.name == "RESULTS_trained.md" and q.work != s.work
    with pytest.raises(SystemExit):  # preprocessing times would compare different spacings
        parse_args(["--quality", "--stages", "preprocess,train"])
    with pytest.raises(SystemExit):
        parse_args(["--quick", "--quality"])
    two = [WeightSet(", model A", "_a", reading="A in both"), WeightSet(", model B", "_b", reading="B in both")]
    qrows = rows(False, True, two, preprocess=False)
    assert {r.stage for r in qrows} == {"train", "infer, TTA off, model A", "infer, defaults, model A",
                                        "infer, TTA off, model B", "infer, defaults, model B"}
    assert {r.reading for r in qrows if r.metric == "organ_dsc"} == {"A in both", "B in both"}
    quick_rows = rows(True, False, [WeightSet()])
    assert any(r.note == "not run in --quick" and r.stage == "infer, defaults" for r in quick_rows)
    assert {r.stage for r in quick_rows} >= {"preprocess", "train", "infer, TTA off"}


def test_timm_stub_imports_names_that_fail_when_used(tmp_path):
    import importlib.util
    import subprocess

    if importlib.util.find_spec("timm") is not None:
        pytest.skip("timm is installed here: the stub only acts where it is absent")
    (tmp_path / "sitecustomize.py").write_text(peer_env.SITECUSTOMIZE)
    code = ("from timm.models.eva import EvaBlock\n"
            "class Sub(EvaBlock): pass\n"
            "try:\n    Sub()\nexcept RuntimeError as e:\n    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", f"import sitecustomize\n{code}"], capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "refused: Primus/timm is unavailable" in out.stdout


def test_competing_processes_are_counted():
    import subprocess

    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 20: pass"])
    try:
        m = run_measured([sys.executable, "-c", "import time; time.sleep(1.5)"], interval=0.05)
    finally:
        busy.kill()
        busy.wait()
    assert m.foreign_running_mean > 0.5  # the busy loop outside the measured tree was seen running


def test_report_survives_a_json_round_trip():
    from benchmarks.report import from_json, to_json

    rep = Report(title="t", rows=[Row("infer", "dsc", "DSC", "", better="higher", reading="not a quality test")],
                 setup=["same data"], notes=["quiet"], commands=["x"], meta={"date": "today"})
    rep.add("infer", "dsc", OURS, 0.5)
    rep.add("infer", "dsc", THEIRS, 0.25)
    again = from_json(json.loads(json.dumps(to_json(rep))))
    assert render(again) == render(rep)
    assert "| 2.000 | higher | not a quality test |" in render(rep)


def test_shared_weights_name_map_covers_every_autoseg_tensor():
    """Every parameter of nnU-Net's PlainConvUNet (names as dynamic_network_architectures builds them)
    maps onto exactly one autoseg tensor of the same topology, or is a bias autoseg lacks (zeroed)."""
    from autoseg.networks import build_network
    from benchmarks.nnunet_plans import network_from_arch
    from benchmarks.peer.shared_weights import our_name

    arch = _nnunet_plans()["configurations"]["3d_fullres"]["architecture"]
    n = arch["arch_kwargs"]["n_stages"]
    theirs = []
    for i in range(n):
        for k in range(2):
            theirs += [f"encoder.stages.{i}.0.convs.{k}.{op}.{kind}" for op in ("conv", "norm")
                       for kind in ("weight", "bias")]
    for j in range(n - 1):
        theirs += [f"decoder.transpconvs.{j}.weight", f"decoder.transpconvs.{j}.bias",
                   f"decoder.seg_layers.{j}.weight", f"decoder.seg_layers.{j}.bias"]
        for k in range(2):
            theirs += [f"decoder.stages.{j}.convs.{k}.{op}.{kind}" for op in ("conv", "norm")
                       for kind in ("weight", "bias")]
    mapped = [our_name(name, n) for name in theirs]
    ours = build_network(network_from_arch(arch), 1, 3, deep_supervision=True)
    shapes = {k: tuple(v.shape) for k, v in ours.named_parameters()}
    real = [m for m in mapped if m is not None]
    assert sorted(real) == sorted(shapes) and len(set(real)) == len(real)
    zeroed = [t for t, m in zip(theirs, mapped) if m is None]
    assert all(z.endswith(".bias") and (".conv." in z or "transpconvs" in z) for z in zeroed)
    # the deepest decoder stage (j = 0) works at level n-2, the last one at full resolution
    assert our_name("decoder.seg_layers.0.weight", n) == f"seg_heads.{n - 2}.weight"
    assert shapes[our_name(f"decoder.seg_layers.{n - 2}.weight", n)][1] == arch["arch_kwargs"]["features_per_stage"][0]
    with pytest.raises(SystemExit):
        our_name("decoder.something_new.weight", n)


def test_timing_runs_clear_only_their_own_trainer(tmp_path):
    """The few-iteration timing runs restart from scratch, but --quality's models (another trainer,
    trained once beforehand) must survive them in both tools' results folders."""
    work = harness.Work(tmp_path)
    ours = harness.Ours(work, 501, "cpu", 1)
    theirs = harness.Theirs(work, 501, "cpu", 1, tmp_path / "venv")
    keep = [work.results(OURS) / "D" / "organ" / harness.OUR_QUALITY_TRAINER / "fold_all",
            theirs.trainer_dir("D", harness.THEIR_QUALITY_TRAINER)]
    gone = [work.results(OURS) / "D" / "organ" / harness.OUR_TRAINER / "fold_all",
            theirs.trainer_dir("D")]
    for d in keep + gone:
        d.mkdir(parents=True)
    ours.clear_results("D")
    theirs.clear_results("D")
    assert all(d.is_dir() for d in keep) and not any(d.exists() for d in gone)
    assert theirs.trainer_dir("D").name == f"{harness.THEIR_TRAINER}__{harness.BENCH_PLANS}__3d_fullres"


def test_nnunet_checkpoint_loads_weights_only(tmp_path):
    """nnU-Net's checkpoints log numpy scalars: they load with weights_only=True, nothing else is allowed."""
    import torch

    from autoseg.nnunet.checkpoint import load_nnunet_checkpoint

    good = tmp_path / "good.pth"
    torch.save({"network_weights": {"w": torch.ones(2)}, "logging": {"dice": [np.float64(0.5), np.float32(1)]},
                "init_args": {"fold": "all", "device": torch.device("cpu")}}, good)
    ckpt = load_nnunet_checkpoint(str(good))
    assert float(ckpt["logging"]["dice"][0]) == 0.5 and torch.equal(ckpt["network_weights"]["w"], torch.ones(2))
    bad = tmp_path / "bad.pth"
    torch.save({"callable": textwrap.dedent}, bad)  # an arbitrary global must still be refused
    with pytest.raises(Exception, match="(?i)weights only"):
        load_nnunet_checkpoint(str(bad))


def test_body_cropped_copy_matches_the_predictors_crop(tmp_path):
    """--quality's control gives nnU-Net the box autoseg's predictor crops to, with geometry kept."""
    from autoseg.preprocessing.crop import crop_to_body

    arr = np.full((12, 40, 48), -1000, np.int16)
    arr[2:10, 8:30, 10:40] = 40  # the "patient"
    lab = np.zeros_like(arr, dtype=np.uint8)
    lab[4:6, 12:20, 20:30] = 1
    for d, name, a in ((tmp_path / "im", "c1_0000.nii.gz", arr), (tmp_path / "lab", "c1.nii.gz", lab)):
        d.mkdir()
        img = sitk.GetImageFromArray(a)
        img.SetSpacing((0.8, 0.9, 2.5))
        img.SetOrigin((10.0, -5.0, 3.0))
        sitk.WriteImage(img, str(d / name))
    inputs.body_cropped_copy(tmp_path / "im", tmp_path / "lab", tmp_path / "bim", tmp_path / "blab")
    box = crop_to_body(arr)
    assert inputs.image_shapes(tmp_path / "bim") == [tuple(hi - lo for lo, hi in box)]
    out = sitk.ReadImage(str(tmp_path / "blab" / "c1.nii.gz"))
    assert sitk.GetArrayFromImage(out).sum() == lab.sum()
    assert out.GetOrigin() == pytest.approx((10.0 + box[2][0] * 0.8, -5.0 + box[1][0] * 0.9, 3.0 + box[0][0] * 2.5))


def test_per_class_line_reads_both_summaries(tmp_path):
    from benchmarks.quality import per_class_line

    for tool, dsc in (("a", 0.9), ("b", 0.8)):
        (tmp_path / tool).mkdir()
        (tmp_path / tool / "summary.json").write_text(json.dumps({"per_class": {
            "liver": {"dsc": {"mean": dsc}, "hd95": {"mean": 3.0}}, "tumour": {"dsc": {"mean": 0.0}, "hd95": {}}}}))
    line = per_class_line(tmp_path / "a", tmp_path / "b")
    assert line == ("ours / nnU-Net: liver DSC 0.900 / 0.800, HD95 3.0 / 3.0 mm; "
                    "tumour DSC 0.000 / 0.000, HD95 – / – mm")
    assert per_class_line(tmp_path / "a", tmp_path / "missing") is None


def test_gpu_memory_is_sampled_through_nvidia_smi(tmp_path, monkeypatch):
    """Stage 4's GPU column on a machine without a GPU: a stand-in nvidia-smi reports 300 MB for every
    process; the sampler must sum it over the measured tree only and keep the peak."""
    from benchmarks.measure import gpu_memory_mb

    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'not a row'\nfor p in /proc/[0-9]*; do echo \"${p#/proc/}, 300\"; done\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    assert gpu_memory_mb([os.getpid()]) == 300.0 and gpu_memory_mb([]) == 0.0
    m = run_measured([sys.executable, "-c", TREE_SCRIPT], interval=0.05, gpu=True)
    assert m.returncode == 0 and m.peak_gpu_mb is not None
    assert m.peak_gpu_mb >= 300 and m.peak_gpu_mb % 300 == 0 and m.peak_gpu_mb <= 300 * m.max_processes
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert gpu_memory_mb([os.getpid()]) is None
