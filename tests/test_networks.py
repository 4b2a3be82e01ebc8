"""Networks built from plans: shapes, deep supervision, registry, state_dict, autocast (CPU, tiny)."""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from autoseg import AutosegError
from autoseg.networks import (NETWORKS, EfficientSegNet, SegNetwork, UNet, build_network, count_parameters,
                              deep_supervision_scales, known_networks, register_network)
from autoseg.networks.blocks import AnisotropicBlock, StripPoolingContext

torch.set_num_threads(2)

ISO = {"features": [4, 8, 16], "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]]}
ANISO = {"features": [4, 8, 8, 16], "kernel_sizes": [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]],
         "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]}
VARIANTS = [("UNet", "plain"), ("UNet", "residual"), ("EfficientSegNet", "plain")]


def cfg(base: dict, cls: str = "UNet", blocks: str = "plain", **kw) -> dict:
    return {**base, "class": cls, "blocks": blocks, **kw}


def expected_shapes(net_cfg: dict, n: int, k: int, patch: tuple[int, int, int]) -> list[tuple]:
    return [(n, k, *(round(p * s) for p, s in zip(patch, sc))) for sc in deep_supervision_scales(net_cfg)]


@pytest.mark.parametrize("cls,blocks", VARIANTS)
@pytest.mark.parametrize("base,patch", [(ISO, (16, 16, 16)), (ANISO, (16, 64, 64))])
def test_output_shapes_and_deep_supervision(cls, blocks, base, patch):
    c = cfg(base, cls, blocks)
    net = build_network(c, in_channels=1, num_classes=3, deep_supervision=True)
    x = torch.randn(2, 1, *patch)
    outs = net(x)
    assert isinstance(outs, list)
    assert [tuple(o.shape) for o in outs] == expected_shapes(c, 2, 3, patch)
    assert len(outs) == len(base["features"]) - 1
    net.deep_supervision = False
    out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, *patch)
    # the full-resolution output does not depend on the deep-supervision switch
    torch.testing.assert_close(out, outs[0])


def test_deep_supervision_scales_anisotropic():
    assert deep_supervision_scales(cfg(ANISO)) == [[1.0, 1.0, 1.0], [1.0, 0.5, 0.5], [0.5, 0.25, 0.25]]
    assert deep_supervision_scales(cfg(ANISO, deep_supervision_levels=2)) == [[1.0, 1.0, 1.0], [1.0, 0.5, 0.5]]
    net = build_network(cfg(ANISO, deep_supervision_levels=2), 1, 2, deep_supervision=True)
    outs = net(torch.randn(1, 1, 8, 32, 32))
    assert [tuple(o.shape[2:]) for o in outs] == [(8, 32, 32), (8, 16, 16)]


def test_single_stage_and_two_channel_input():
    c = {"class": "UNet", "features": [4], "kernel_sizes": [[3, 3, 3]], "strides": [[1, 1, 1]]}
    assert deep_supervision_scales(c) == [[1.0, 1.0, 1.0]]
    net = build_network(c, 2, 5, deep_supervision=True)
    outs = net(torch.randn(1, 2, 6, 6, 6))
    assert len(outs) == 1 and outs[0].shape == (1, 5, 6, 6, 6)


def test_residual_differs_from_plain_and_has_projection():
    plain = build_network(cfg(ISO, blocks="plain"), 1, 2)
    res = build_network(cfg(ISO, blocks="residual"), 1, 2)
    assert any(k.startswith("encoder.1.0.skip") for k in res.state_dict())
    assert not any(".skip" in k for k in plain.state_dict())
    assert count_parameters(res) != count_parameters(plain)
    res2 = build_network(cfg(ISO, blocks="residual", blocks_per_stage=[1, 2, 3]), 1, 2)
    assert len(res2.encoder[2]) == 3


def test_plain_unet_matches_nnunet_layout():
    net = build_network(cfg(ANISO, convs_per_stage=3), 1, 2)
    convs = [m for m in net.encoder[1].modules() if isinstance(m, nn.Conv3d)]
    assert len(convs) == 3
    assert convs[0].stride == (1, 2, 2) and convs[0].kernel_size == (1, 3, 3) and convs[1].stride == (1, 1, 1)
    norms = [m for m in net.modules() if isinstance(m, nn.InstanceNorm3d)]
    assert norms and all(m.affine for m in norms)
    ups = [m for m in net.modules() if isinstance(m, nn.ConvTranspose3d)]
    assert [u.stride for u in ups] == [(2, 2, 2), (2, 2, 2), (1, 2, 2)]
    assert all(u.kernel_size == u.stride for u in ups)


def test_efficientsegnet_blocks_and_backward():
    c = cfg(ANISO, "EfficientSegNet")
    net = build_network(c, 1, 4, deep_supervision=True)
    assert isinstance(net, EfficientSegNet)
    assert isinstance(net.context[3], StripPoolingContext) and isinstance(net.context[2], StripPoolingContext)
    assert isinstance(net.context[0], nn.Identity)
    blk = net.encoder[2][0]
    assert isinstance(blk, AnisotropicBlock)
    assert blk.inplane[0].kernel_size == (1, 3, 3) and blk.inplane[0].stride == (1, 2, 2)
    assert blk.through.kernel_size == (3, 1, 1) and blk.through.stride == (2, 1, 1)
    # z kernel 1 in the plans: the through-plane conv degenerates to a channel mix
    assert net.encoder[1][0].through.kernel_size == (1, 1, 1)
    # the stem block (from the raw image) has no shortcut; later blocks do
    assert net.encoder[0][0].skip is None and net.encoder[1][0].skip is not None
    x = torch.randn(2, 1, 16, 64, 64)
    outs = net(x)
    loss = sum(o.square().mean() for o in outs)
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) > 0 for g in grads) > 0.9 * len(grads)
    assert count_parameters(net) < count_parameters(build_network(cfg(ANISO), 1, 4))


def test_efficientsegnet_z_stride_with_z_kernel_one_keeps_all_slices():
    blk = AnisotropicBlock(2, 4, (1, 3, 3), (2, 2, 2))
    assert blk.through.kernel_size == (2, 1, 1)
    assert blk(torch.randn(1, 2, 4, 8, 8)).shape == (1, 4, 2, 4, 4)


def test_strip_pooling_is_a_global_gate():
    ctx = StripPoolingContext(8).requires_grad_(False)
    x = torch.randn(2, 8, 3, 5, 7)
    y = ctx(x)
    assert y.shape == x.shape
    gate = y / x
    assert float(gate.min()) > 0 and float(gate.max()) < 1
    # context along z: changing one slice changes the gate at every other slice
    x2 = x.clone()
    x2[:, :, 0] += 5
    assert not torch.allclose(ctx(x2)[:, :, 2], y[:, :, 2])
    # works on strips of a single element (no norm inside)
    assert ctx.train()(torch.randn(1, 8, 1, 1, 4)).shape == (1, 8, 1, 1, 4)


@pytest.mark.parametrize("cls,blocks", VARIANTS)
def test_state_dict_round_trip_ignores_deep_supervision_flag(cls, blocks):
    c = cfg(ANISO, cls, blocks)
    torch.manual_seed(0)
    trained = build_network(c, 1, 3, deep_supervision=True)
    buf = io.BytesIO()
    torch.save(trained.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(1)
    pred = build_network(c, 1, 3, deep_supervision=False)
    pred.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    x = torch.randn(1, 1, 8, 32, 32)
    trained.eval(), pred.eval()
    with torch.no_grad():
        torch.testing.assert_close(pred(x), trained(x)[0])


def test_unknown_class_lists_known_names():
    with pytest.raises(AutosegError, match="UNet.*EfficientSegNet|EfficientSegNet.*UNet"):
        build_network(cfg(ISO, "VNet"), 1, 2)
    with pytest.raises(AutosegError, match="known"):
        deep_supervision_scales(cfg(ISO, "VNet"))


@pytest.mark.parametrize("bad,key", [
    ({"strides": [[2, 2, 2], [2, 2, 2], [2, 2, 2]]}, "strides"),
    ({"kernel_sizes": [[3, 3, 3]] * 2}, "kernel_sizes"),
    ({"kernel_sizes": [[3, 3, 3], [2, 2, 2], [3, 3, 3]]}, r"kernel_sizes\[1\]"),
    ({"blocks": "dense"}, "blocks"),
    ({"features": []}, "features"),
    ({"deep_supervision_levels": 5}, "deep_supervision_levels"),
    ({"convs_per_stage": 0}, "convs_per_stage"),
])
def test_bad_config_names_the_key(bad, key):
    with pytest.raises(AutosegError, match=key):
        build_network({**cfg(ISO), **bad}, 1, 2)


def test_register_custom_network():
    class TinyNet(UNet):
        def decoder_stage(self, level: int) -> nn.Module:
            f = self.cfg.features[level]
            return nn.Sequential(nn.Conv3d(2 * f, f, 1), nn.LeakyReLU(0.01))

    try:
        register_network(TinyNet)
        assert "TinyNet" in known_networks()
        net = build_network(cfg(ISO, "TinyNet"), 1, 2)
        assert isinstance(net, TinyNet) and isinstance(net, SegNetwork)
        assert net(torch.randn(1, 1, 8, 8, 8)).shape == (1, 2, 8, 8, 8)
    finally:
        NETWORKS.pop("TinyNet", None)
    with pytest.raises(AutosegError, match="from_config"):
        register_network(nn.Conv3d)


def test_init_is_he_normal():
    net = build_network({**cfg(ISO), "features": [64, 64, 64]}, 1, 2)
    w = net.encoder[1][1][0].weight.detach()  # 64 -> 64, 3x3x3: fan_in 1728
    std = (2 / (1 + 1e-4) / 1728) ** 0.5
    assert abs(float(w.std()) / std - 1) < 0.05
    assert all(float(m.bias.detach().abs().sum()) == 0 for m in net.modules() if isinstance(m, nn.Conv3d) and m.bias is not None)


@pytest.mark.parametrize("cls", ["UNet", "EfficientSegNet"])
def test_autocast_bf16_and_channels_last(cls):
    net = build_network(cfg(ANISO, cls, "residual"), 1, 3, deep_supervision=True).eval()
    x = torch.randn(1, 1, 8, 32, 32)
    with torch.no_grad():
        ref = net(x)
        net = net.to(memory_format=torch.channels_last_3d)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs = net(x.to(memory_format=torch.channels_last_3d))
    assert [o.shape for o in outs] == [r.shape for r in ref]
    for o, r in zip(outs, ref):
        assert torch.isfinite(o).all()
        assert float((o.float() - r).abs().mean()) < 0.1 * float(r.abs().mean()) + 1e-3


def test_torch_compile_full_graph():
    """No graph breaks (fullgraph) with the cheap aot_eager backend; toggling recompiles cleanly."""
    net = build_network(cfg(ISO, "EfficientSegNet", context_levels=1), 1, 2, deep_supervision=True)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    x = torch.randn(1, 1, 8, 8, 8)
    outs = compiled(x)
    assert len(outs) == 2
    net.deep_supervision = False
    assert compiled(x).shape == (1, 2, 8, 8, 8)


@pytest.mark.parametrize("cls,blocks", VARIANTS)
@pytest.mark.parametrize("amp", [False, True])
def test_inference_forward_equals_training_forward(cls, blocks, amp):
    """Without gradients the forward frees maps as it goes; the logits must not change by a bit."""
    net = build_network(cfg(ANISO, cls, blocks), 1, 3).eval()
    x = torch.randn(1, 1, 8, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        ref = net(x).detach()  # gradients on: the plain forward
        with torch.no_grad():
            lean = net(x)
        with torch.no_grad():
            cl = net.to(memory_format=torch.channels_last_3d)(x.to(memory_format=torch.channels_last_3d))
        net.to(memory_format=torch.contiguous_format)
    assert lean.dtype == ref.dtype and torch.equal(lean, ref)
    assert torch.allclose(cl.float(), ref.float(), atol=1e-2 if amp else 1e-4)


def test_inference_forward_peak_is_lower():
    """The CPU allocator's peak during one forward (profiler memory events): freeing skips after
    their merge and merging into one buffer must save at least one full-resolution feature map."""
    from benchmarks.tensor_memory import peak_tensor_bytes

    net = build_network(cfg(ISO, features=[32, 64, 128]), 1, 3).eval()  # wide enough for oneDNN convs
    x = torch.randn(1, 1, 32, 48, 48)
    with torch.no_grad():
        _, lean = peak_tensor_bytes(lambda: net(x))
        net.deep_supervision = True  # the plain forward (plus two tiny low-resolution heads)
        _, plain = peak_tensor_bytes(lambda: net(x))
    top_map = 32 * x.numel() * 4
    assert plain - lean >= 1.0 * top_map, (plain / top_map, lean / top_map)


def test_torch_compile_inference_forward():
    net = build_network(cfg(ISO, "UNet"), 1, 2).eval()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        assert torch.allclose(compiled(x), net(x), atol=1e-5)
