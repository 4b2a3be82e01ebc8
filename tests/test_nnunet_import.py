"""`autoseg import_nnunet`: nnU-Net v2 model folders built here (no nnU-Net needed) run in our predictor.

The checkpoints hold tensors under nnU-Net's own names (dynamic_network_architectures' PlainConvUNet
and ResidualEncoderUNet, aliases included), random conv and transposed-conv biases, and a training log
of numpy scalars, as nnU-Net writes them. The networks are checked against an independent functional
forward written from nnU-Net's definition; the preprocessing against numbers the real nnU-Net v2.8.1
produced once (DefaultPreprocessor.run_case_npy / resample_data_or_seg_to_shape, scipy 1.17,
scikit-image 0.26) for the arrays built below.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autoseg import AutosegError

FEATS, KERNELS = [4, 8, 8], [[1, 3, 3], [3, 3, 3], [3, 3, 3]]
STRIDES = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
N, K = 3, 3  # stages, output channels (background + 2 labels)


# ----------------------------------------------------------------------------------- nnU-Net-format folder
def _conv(sd: dict, g: torch.Generator, prefix: str, cout: int, cin: int, k, bias: bool = True) -> None:
    k = [k] * 3 if isinstance(k, int) else k
    sd[f"{prefix}.conv.weight"] = torch.randn(cout, cin, *k, generator=g) * 0.3
    if bias:
        sd[f"{prefix}.conv.bias"] = torch.randn(cout, generator=g)
    sd[f"{prefix}.norm.weight"] = 1 + 0.1 * torch.randn(cout, generator=g)
    sd[f"{prefix}.norm.bias"] = 0.1 * torch.randn(cout, generator=g)
    for i, kind in enumerate(("conv", "norm")):  # the block's second name for each tensor
        for w in ("weight", "bias"):
            if f"{prefix}.{kind}.{w}" in sd:
                sd[f"{prefix}.all_modules.{i}.{w}"] = sd[f"{prefix}.{kind}.{w}"]


def nnunet_state_dict(resenc: bool, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd: dict = {}
    if resenc:
        _conv(sd, g, "encoder.stem.convs.0", FEATS[0], 1, KERNELS[0])
        cin = FEATS[0]
        for i, blocks in enumerate([1, 2, 2]):
            for b in range(blocks):
                p = f"encoder.stages.{i}.blocks.{b}"
                _conv(sd, g, f"{p}.conv1", FEATS[i], cin, KERNELS[i])
                _conv(sd, g, f"{p}.conv2", FEATS[i], FEATS[i], KERNELS[i])
                if cin != FEATS[i]:
                    _conv(sd, g, f"{p}.skip.{1 if b == 0 and i > 0 else 0}", FEATS[i], cin, 1, bias=False)
                cin = FEATS[i]
    else:
        cin = 1
        for i in range(N):
            for j in range(2):
                _conv(sd, g, f"encoder.stages.{i}.0.convs.{j}", FEATS[i], cin, KERNELS[i])
                cin = FEATS[i]
    dec_convs = 1 if resenc else 2
    for d in range(N - 1):
        lv = N - 2 - d
        sd[f"decoder.transpconvs.{d}.weight"] = 0.3 * torch.randn(FEATS[lv + 1], FEATS[lv], *STRIDES[lv + 1],
                                                                  generator=g)
        sd[f"decoder.transpconvs.{d}.bias"] = torch.randn(FEATS[lv], generator=g)
        for j in range(dec_convs):
            cin = 2 * FEATS[lv] if j == 0 else FEATS[lv]
            _conv(sd, g, f"decoder.stages.{d}.convs.{j}", FEATS[lv], cin, KERNELS[lv])
        sd[f"decoder.seg_layers.{d}.weight"] = torch.randn(K, FEATS[lv], 1, 1, 1, generator=g)
        sd[f"decoder.seg_layers.{d}.bias"] = torch.randn(K, generator=g)
    for name in [n for n in sd if n.startswith("encoder.")]:
        sd[f"decoder.{name}"] = sd[name]  # the decoder keeps a reference to the encoder
    return sd


def nnunet_plans(resenc: bool = False, scheme: str = "CTNormalization", spacing=(2.0, 1.5, 1.5),
                 patch=(8, 16, 16), use_mask: bool = False) -> dict:
    kw = {"n_stages": N, "features_per_stage": FEATS, "conv_op": "torch.nn.modules.conv.Conv3d",
          "kernel_sizes": KERNELS, "strides": STRIDES, "n_conv_per_stage_decoder": [1, 1] if resenc else [2, 2],
          "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
          "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
          "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    if resenc:
        kw["n_blocks_per_stage"] = [1, 2, 2]
    else:
        kw["n_conv_per_stage"] = [2, 2, 2]
    arch = "ResidualEncoderUNet" if resenc else "PlainConvUNet"
    return {
        "dataset_name": "Dataset990_Tiny", "plans_name": "nnUNetPlans", "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "foreground_intensity_properties_per_channel": {"0": {"mean": 60.0, "std": 120.0, "percentile_00_5": -250.0,
                                                              "percentile_99_5": 380.0}},
        "configurations": {"3d_fullres": {
            "batch_size": 2, "patch_size": list(patch), "spacing": list(spacing),
            "normalization_schemes": [scheme], "use_mask_for_norm": [use_mask],
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                   "force_separate_z": None},
            "architecture": {"network_class_name": f"dynamic_network_architectures.architectures.unet.{arch}",
                             "arch_kwargs": kw,
                             "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}},
    }


def make_model_folder(root, resenc: bool = False, folds=("0",), **plans_kw):
    folder = root / "Dataset990_Tiny" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    for f in folds:
        (folder / f"fold_{f}").mkdir(parents=True)
        torch.save({"network_weights": nnunet_state_dict(resenc, seed=int(f) if f.isdigit() else 7),
                    "optimizer_state": {"state": {}, "param_groups": [{"lr": np.float64(0.01)}]},
                    "logging": {"ema_fg_dice": [np.float64(0.5), np.float32(0.6)], "epoch_end_timestamps": [1.0]},
                    "_best_ema": np.float64(0.6), "current_epoch": 1000, "trainer_name": "nnUNetTrainer",
                    "init_args": {"configuration": "3d_fullres", "fold": f, "device": torch.device("cpu")},
                    "inference_allowed_mirroring_axes": (0, 1, 2)},
                   folder / f"fold_{f}" / "checkpoint_final.pth")
    (folder / "plans.json").write_text(json.dumps(nnunet_plans(resenc, **plans_kw)))
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2},
                                                     "channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}))
    return folder


# ----------------------------------------------------------------------------------- nnU-Net's forward, written out
def _block(x, sd, p, stride=1, act=True):
    w = sd[f"{p}.conv.weight"]
    x = F.conv3d(x, w, sd.get(f"{p}.conv.bias"), stride, [k // 2 for k in w.shape[2:]])
    x = F.instance_norm(x, weight=sd[f"{p}.norm.weight"], bias=sd[f"{p}.norm.bias"], eps=1e-5)
    return F.leaky_relu(x, 0.01) if act else x


def reference_forward(sd: dict, x: torch.Tensor, resenc: bool) -> torch.Tensor:
    skips = []
    if resenc:
        x = _block(x, sd, "encoder.stem.convs.0")
        for i, blocks in enumerate([1, 2, 2]):
            for b in range(blocks):
                p, st = f"encoder.stages.{i}.blocks.{b}", STRIDES[i] if b == 0 else 1
                out = _block(_block(x, sd, f"{p}.conv1", st), sd, f"{p}.conv2", act=False)
                res = F.avg_pool3d(x, st, st) if st != 1 and st != [1, 1, 1] else x
                proj = [n for n in sd if n.startswith(f"{p}.skip.") and n.endswith(".conv.weight")]
                if proj:
                    res = _block(res, sd, proj[0][: -len(".conv.weight")], act=False)
                x = F.leaky_relu(out + res, 0.01)
            skips.append(x)
    else:
        for i in range(N):
            x = _block(x, sd, f"encoder.stages.{i}.0.convs.0", STRIDES[i])
            x = _block(x, sd, f"encoder.stages.{i}.0.convs.1")
            skips.append(x)
    x = skips[-1]
    for d in range(N - 1):
        lv = N - 2 - d
        x = F.conv_transpose3d(x, sd[f"decoder.transpconvs.{d}.weight"], sd[f"decoder.transpconvs.{d}.bias"],
                               STRIDES[lv + 1])
        x = torch.cat((x, skips[lv]), 1)
        for j in range(1 if resenc else 2):
            x = _block(x, sd, f"decoder.stages.{d}.convs.{j}")
    return F.conv3d(x, sd[f"decoder.seg_layers.{N - 2}.weight"], sd[f"decoder.seg_layers.{N - 2}.bias"])


# ----------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("resenc", [False, True], ids=["PlainConvUNet", "ResEnc"])
def test_imported_network_computes_nnunets_function(tmp_path, resenc):
    from autoseg.inference.models import find_stage_checkpoints, load_stage_model
    from autoseg.nnunet.importer import import_nnunet

    folder = make_model_folder(tmp_path / "nn", resenc)
    dest = import_nnunet(folder, results=tmp_path / "res")
    assert dest == tmp_path / "res" / "Dataset990_Tiny" / "organ" / "Trainer"
    ckpts = find_stage_checkpoints(990, results=tmp_path / "res")
    sm = load_stage_model("organ", ckpts["organ"], torch.device("cpu"))
    assert sm.classes == [1, 2] and sm.config["mirror_axes"] == [0, 1, 2]
    assert sm.config["network"]["class"] == ("NnUNetResEncUNet" if resenc else "NnUNetPlainUNet")
    x = torch.randn(1, 1, 8, 16, 16, generator=torch.Generator().manual_seed(3))
    sd = nnunet_state_dict(resenc)
    with torch.no_grad():
        ours, ref = sm.network(x), reference_forward(sd, x, resenc)
        # the transposed-conv biases matter: without them the logits move
        no_bias = dict(sd, **{k: torch.zeros_like(v) for k, v in sd.items() if k.startswith("decoder.transpconvs")
                              and k.endswith("bias")})
        moved = (reference_forward(no_bias, x, resenc) - ref).abs().max()
    assert (ours - ref).abs().max() < 1e-4 * max(1.0, float(ref.abs().max()))
    assert moved > 1e-2
    record = json.loads((dest / "import.json").read_text())
    assert record["configuration"] == "3d_fullres" and len(record["checkpoints"]["fold_0"]["sha256"]) == 64


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_checkpoint_is_refused(tmp_path):
    from autoseg.nnunet.checkpoint import load_nnunet_checkpoint
    from autoseg.nnunet.importer import import_nnunet

    folder = make_model_folder(tmp_path / "nn")
    torch.save({"network_weights": {}, "payload": _Evil()}, folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(AutosegError, match="refused: loading it would execute code"):
        load_nnunet_checkpoint(folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(AutosegError, match="refused"):
        import_nnunet(folder, results=tmp_path / "res")
    assert not (tmp_path / "res").exists()  # nothing half-imported


def test_import_refuses_what_it_cannot_reproduce(tmp_path):
    from autoseg.nnunet.importer import import_nnunet

    folder = make_model_folder(tmp_path / "nn")
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["norm_op"] = "torch.nn.BatchNorm3d"
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(AutosegError, match="InstanceNorm3d"):
        import_nnunet(folder, results=tmp_path / "res")
    (folder / "plans.json").unlink()
    with pytest.raises(AutosegError, match="no plans.json"):
        import_nnunet(folder, results=tmp_path / "res")
    # an autoseg-trained model of the same name is not overwritten by accident
    folder = make_model_folder(tmp_path / "nn2")
    for stage in ("roi", "organ"):
        (tmp_path / "res" / "Dataset990_Tiny" / stage / "Trainer" / "fold_0").mkdir(parents=True)
        with pytest.raises(AutosegError, match=f"{stage}/Trainer: holds an autoseg-trained model"):
            import_nnunet(folder, results=tmp_path / "res")
        (tmp_path / "res" / "Dataset990_Tiny" / stage / "Trainer" / "fold_0").rmdir()
    (tmp_path / "res" / "Dataset990_Tiny" / "organ" / "Trainer" / "fold_0").mkdir(parents=True)
    assert import_nnunet(folder, results=tmp_path / "res", trainer_name="FromNnUNet").name == "FromNnUNet"


def _image() -> np.ndarray:
    z, y, x = np.meshgrid(np.arange(6), np.arange(10), np.arange(9), indexing="ij")
    a = 300 * np.sin(0.9 * z + 0.5 * y) * np.cos(0.4 * x) + 40 * y - 100
    a[:, :2] = 0
    a[:, :, -1] = 0  # zero border: cropped to the non-zero box
    return a.astype(np.float32)


# nnU-Net v2.8.1 DefaultPreprocessor.run_case_npy on _image() (see module docstring): shape, crop box, sums, probes
NNUNET_REFERENCE = {
    "ct_aniso": ("CTNormalization", [3.5, 1.0, 1.0], [2.0, 1.5, 1.5], False, [10, 5, 5], 110.42966086417437,
                 535.733560006006, [1.595098853111267, 0.05054797977209091, 0.6777110695838928, 1.3667830228805542,
                                    -1.9429377317428589, -2.1085705757141113]),
    "ct_iso": ("CTNormalization", [1.2, 1.0, 1.0], [2.0, 1.5, 1.5], False, [4, 5, 5], 43.6584841683507,
               210.3855494290868, [1.6613126993179321, -1.2620460987091064, -2.4985506534576416, 2.6493027210235596,
                                   1.0505725145339966, 0.5090866684913635]),
    "zscore_mask": ("ZScoreNormalization", [1.2, 1.0, 1.0], [1.0, 0.7, 0.8], True, [7, 11, 10], -0.07419708254747093,
                    765.3570503546327, [0.5969005823135376, -0.304660826921463, -1.5079541206359863,
                                        0.6810477375984192, -2.175879955291748, -0.15143655240535736]),
}


@pytest.mark.parametrize("case", sorted(NNUNET_REFERENCE))
def test_preprocessing_matches_nnunet(case):
    from autoseg.nnunet.plans import imported_plans
    from autoseg.nnunet.preprocessing import nonzero_box, prepare

    scheme, orig, target, mask, shape, total, sumsq, probe = NNUNET_REFERENCE[case]
    plans = imported_plans(nnunet_plans(scheme=scheme, spacing=target, use_mask=mask),
                           {"labels": {"background": 0, "liver": 1, "spleen": 2}}, "3d_fullres", [], {})
    block = plans["stages"]["organ"]["nnunet"]
    img = _image()
    box = nonzero_box(img)
    assert box == [[0, 6], [2, 10], [0, 8]]
    crop = torch.from_numpy(img[tuple(slice(a, b) for a, b in box)].copy())[None]
    d = prepare(crop, orig, block, target)[0].double().numpy()
    assert list(d.shape) == shape
    assert d.sum() == pytest.approx(total, abs=2e-3) and (d ** 2).sum() == pytest.approx(sumsq, rel=1e-5)
    got = [d[i % d.shape[0], (3 * i) % d.shape[1], (5 * i) % d.shape[2]] for i in range(6)]
    assert got == pytest.approx(probe, abs=2e-5)


def _logits() -> torch.Tensor:
    z, y, x = np.meshgrid(np.arange(4), np.arange(7), np.arange(6), indexing="ij")
    return torch.from_numpy(np.stack([np.sin(z + 0.3 * y) + 0.2 * x - 0.5, np.cos(0.7 * x - y + z)]).astype(np.float32))


@pytest.mark.parametrize("net_spacing,ones,rows,cols", [
    ([5.0, 1.5, 1.5], 327, [21, 21, 12, 12, 47, 47, 47, 60, 60], [57, 56, 41, 37, 36, 29, 24, 26, 21]),
    ([2.0, 1.5, 1.5], 305, [21, 20, 14, 12, 27, 45, 51, 55, 60], [55, 52, 42, 37, 30, 26, 21, 22, 20]),
], ids=["separate-z", "trilinear"])
def test_logit_export_matches_nnunet(net_spacing, ones, rows, cols):
    """nnU-Net's resample_data_or_seg_to_shape (order 1, order_z 0) + argmax, slab by slab."""
    from autoseg.nnunet.plans import imported_plans
    from autoseg.nnunet.predict import WholeVolumeResampler, logits_resampler

    block = imported_plans(nnunet_plans(), {"labels": {"background": 0, "liver": 1, "spleen": 2}},
                           "3d_fullres", [], {})["stages"]["organ"]["nnunet"]
    for general in (False, True):
        out = torch.zeros(9, 10, 9, dtype=torch.uint8)
        args = (out, 2, torch.float32, 1 << 20, None, None)
        res = WholeVolumeResampler((4, 7, 6), out, 2, block["resampling_probabilities"], net_spacing, [1.0] * 3) \
            if general else logits_resampler(block, net_spacing, [1.0] * 3, (4, 7, 6), *args)
        lg = _logits()
        res.push(0, 2, lg[:, :2])
        res.push(2, 4, lg[:, 2:])
        lab = out.long().numpy()
        assert int(lab.sum()) == ones and lab.sum(axis=(1, 2)).tolist() == rows
        assert lab.sum(axis=(0, 1)).tolist() == cols


def test_run_inference_on_an_imported_model(tmp_path):
    """CLI end to end: import, predict a file; outside nnU-Net's non-zero crop nothing is labelled, and
    the labels equal the same pipeline written out with nnU-Net's network forward."""
    from autoseg.cli import main
    from autoseg.io import Geometry, read_image, write_image
    from autoseg.nnunet.plans import imported_plans
    from autoseg.nnunet.preprocessing import prepare

    folder = make_model_folder(tmp_path / "nn", patch=(16, 16, 16))
    assert main(["import_nnunet", str(folder), "--results", str(tmp_path / "res")]) == 0
    img = np.zeros((10, 30, 28), np.float32)
    z, y, x = np.meshgrid(np.arange(8), np.arange(24), np.arange(24), indexing="ij")
    img[1:9, 3:27, 2:26] = 300 * np.sin(0.5 * z + 0.3 * y) * np.cos(0.2 * x) + 10 * y - 101.5
    (tmp_path / "in").mkdir()
    geom = Geometry((3.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()), img.shape)
    write_image(img, geom, tmp_path / "in" / "c1_0000.nii.gz")
    rc = main(["run_inference", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-t", "990",
               "--results", str(tmp_path / "res"), "--device", "cpu", "--precision", "fp32"])
    assert rc == 0
    lab, _ = read_image(tmp_path / "out" / "c1.nii.gz")
    assert lab.shape == img.shape and not lab[0].any() and not lab[:, :3].any() and not lab[:, :, 26:].any()
    # the same case through nnU-Net's steps with the functional forward (one window covers it all)
    block = imported_plans(nnunet_plans(patch=(16, 16, 16)), {"labels": {"background": 0, "liver": 1, "spleen": 2}},
                           "3d_fullres", [], {})["stages"]["organ"]["nnunet"]
    crop = torch.from_numpy(img[1:9, 3:27, 2:26].copy())[None]
    x = prepare(crop, [3.0, 1.0, 1.0], block, [2.0, 1.5, 1.5])
    assert list(x.shape[1:]) == [12, 16, 16]
    pad = torch.zeros(1, 1, 16, 16, 16)
    pad[0, :, 2:14] = x  # nnU-Net pads to the patch, centred
    with torch.no_grad():
        logits = reference_forward(nnunet_state_dict(False), pad, False)[0, :, 2:14]
    up = F.interpolate(logits[None], size=(8, 24, 24), mode="trilinear", align_corners=False)[0]
    expect = up.argmax(0).numpy()
    agree = (lab[1:9, 3:27, 2:26] == expect).mean()
    assert agree > 0.995, agree


def test_transpose_forward_is_applied_and_undone(tmp_path):
    """A model planned with transpose_forward [0, 2, 1] sees the image in that axis order; its labels
    come back in the input's order (= the identity model on the transposed image, transposed back)."""
    from autoseg.inference.models import find_stage_checkpoints
    from autoseg.inference.predictor import CascadePredictor
    from autoseg.nnunet.importer import import_nnunet

    folder = make_model_folder(tmp_path / "nn", patch=(16, 16, 16))
    import_nnunet(folder, results=tmp_path / "res", trainer_name="Plain")
    plans = json.loads((folder / "plans.json").read_text())
    plans["transpose_forward"] = plans["transpose_backward"] = [0, 2, 1]
    (folder / "plans.json").write_text(json.dumps(plans))
    import_nnunet(folder, results=tmp_path / "res", trainer_name="Transposed")
    z, y, x = np.meshgrid(np.arange(8), np.arange(20), np.arange(14), indexing="ij")
    img = (300 * np.sin(0.5 * z + 0.3 * y) * np.cos(0.2 * x) + 10 * y - 101.5).astype(np.float32)

    def predictor(name):
        return CascadePredictor(find_stage_checkpoints(990, name, results=tmp_path / "res"), device="cpu",
                                precision="fp32")

    got = predictor("Transposed").predict_array(img, [3.0, 1.0, 1.2])
    want = predictor("Plain").predict_array(np.ascontiguousarray(img.transpose(0, 2, 1)), [3.0, 1.2, 1.0])
    assert got.shape == img.shape and np.array_equal(got, want.transpose(0, 2, 1))
    assert len(np.unique(got)) > 1


def test_window_weights_are_nnunets():
    """nnU-Net v2.8.1 compute_gaussian((8, 16, 16), 1/8, value_scaling_factor=10) in float16: sum, minimum, probes."""
    from autoseg.nnunet.predict import nnunet_gaussian

    g = nnunet_gaussian([8, 16, 16])
    assert float(g.sum()) == pytest.approx(629.7806396484375, rel=1e-6)
    assert float(g.min()) == pytest.approx(5.960464477539063e-08) and float(g[0, 0, 0]) == float(g.min())
    assert float(g[4, 8, 8]) == 10.0 and float(g[3, 5, 9]) == 1.7373046875
