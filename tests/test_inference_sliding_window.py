import pytest
import torch

from autoseg.inference.sliding_window import (compute_steps, gaussian_importance_map, iter_sliding_window,
                                      predict_sliding_window)


class SignNet(torch.nn.Module):
    """Identity-like network: channel 0 = input, channel 1 = -input (translation-equivariant)."""

    def forward(self, x):
        return torch.cat([x, -x], 1)


class DeepSupNet(SignNet):
    def forward(self, x):
        return [super().forward(x), x[:, :, ::2, ::2, ::2]]


@pytest.mark.parametrize("shape", [(37, 50, 21), (16, 32, 32), (5, 7, 9), (40, 64, 70)])
@pytest.mark.parametrize("wpb", [1, 3])
def test_identity_network_reproduces_input(shape, wpb):
    torch.manual_seed(0)
    img = torch.randn(1, *shape)
    out = predict_sliding_window(SignNet(), img, (16, 32, 32), 2, windows_per_batch=wpb)
    assert out.shape == (2, *shape) and out.dtype == torch.float32
    torch.testing.assert_close(out[0], img[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], -img[0], atol=1e-5, rtol=1e-5)


def test_mirroring_and_deep_supervision_output():
    img = torch.randn(1, 20, 40, 33)
    out = predict_sliding_window(DeepSupNet(), img, (16, 32, 32), 2, mirror_axes=(0, 1, 2))
    torch.testing.assert_close(out[0], img[0], atol=1e-5, rtol=1e-5)


def test_slabs_cover_volume_in_order_and_match_whole():
    torch.manual_seed(1)
    net = torch.nn.Conv3d(1, 3, 3, padding=1)
    img = torch.randn(1, 50, 40, 40)
    with torch.inference_mode():
        whole = predict_sliding_window(net, img, (16, 32, 32), 3, step_size=0.5)
        slabs = list(iter_sliding_window(net, img, (16, 32, 32), 3, windows_per_batch=2))
    z = 0
    for z0, z1, s in slabs:
        assert z0 == z and z1 > z0 and s.shape == (3, z1 - z0, 40, 40)
        torch.testing.assert_close(s, whole[:, z0:z1])
        z = z1
    assert z == 50 and len(slabs) > 1  # streamed, not one block


def test_steps_and_gaussian():
    assert compute_steps([16, 100, 20], [16, 32, 32], 0.5) == [[0], [0, 14, 27, 41, 54, 68], [0]]
    steps = compute_steps([200], [64], 0.5)[0]
    assert steps[0] == 0 and steps[-1] == 136 and max(b - a for a, b in zip(steps, steps[1:])) <= 32
    g = gaussian_importance_map((16, 32, 32))
    assert g.shape == (16, 32, 32) and float(g.max()) == pytest.approx(1.0, abs=1e-3)
    assert float(g.min()) >= 1e-3 and g[8, 16, 16] > g[0, 0, 0]


def test_wrong_channel_count_is_reported():
    with pytest.raises(ValueError, match="channels"):
        predict_sliding_window(SignNet(), torch.zeros(1, 16, 32, 32), (16, 32, 32), 3)


@pytest.mark.parametrize("ins,outs", [((10, 12, 14), (25, 30, 20)), ((30, 20, 20), (7, 40, 41)),
                                      ((9, 16, 16), (9, 16, 16)), ((1, 5, 5), (4, 9, 9))])
@pytest.mark.parametrize("budget", [1, 1 << 30])
def test_fused_resample_argmax_equals_trilinear(ins, outs, budget):
    import torch.nn.functional as F

    from autoseg.inference.fused_resample import SlabArgmaxResampler

    g = torch.Generator().manual_seed(0)
    lg = torch.randn(4, *ins, generator=g)
    ref = F.interpolate(lg[None], size=outs, mode="trilinear", align_corners=False)[0]
    out = torch.zeros(outs, dtype=torch.uint8)
    probs = torch.zeros((4, *outs))
    lut = torch.tensor([0, 5, 6, 9], dtype=torch.uint8)
    r = SlabArgmaxResampler(ins, out, 4, budget_bytes=budget, probabilities=probs, lut=lut)
    z = 0
    for step in [1, 3, 2, 5] * 20:  # slabs of uneven sizes, as the sliding window hands them out
        if z >= ins[0]:
            break
        r.push(z, min(ins[0], z + step), lg[:, z:z + step])
        z = min(ins[0], z + step)
    assert r.done
    assert torch.equal(out, lut[ref.argmax(0)])
    torch.testing.assert_close(probs, ref.softmax(0), atol=1e-5, rtol=0)
