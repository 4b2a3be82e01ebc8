"""EfficientSegNet as published (Zhang et al. 2021, arXiv 2109.10601, the FLARE21 winner).

The paper's network differs from our ``EfficientSegNet`` variant in three places, kept here as written:

* encoder: basic residual blocks (conv-norm-act, conv-norm, shortcut) with the plans' kernels (3x3x3
  wherever the spacing is near-isotropic), two blocks per stage;
* one context block, at the bottleneck only: a pyramid-pooling branch (the map at full, 1/2 and 1/4
  bottleneck resolution) and a strip-pooling branch (the map averaged to one strip along each axis),
  fused and added back residually to the bottleneck features;
* slim decoder: a 1x1x1 conv-norm-act to the skip's width, trilinear upsampling, addition of the skip,
  then anisotropic (in-plane, then through-plane) residual blocks.

Optional config keys: ``blocks_per_stage`` (default 2), ``decoder_blocks`` (default 1),
``context_reduction`` (bottleneck channels / context channels, default 4).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.networks.blocks import ConvNormAct, ResidualStage, act, conv3d, norm, triple
from autoseg.networks.config import parse_config
from autoseg.networks.efficientseg import EfficientSegNet, _count


class TrilinearUpsample(nn.Module):
    """Trilinear upsampling by a fixed integer factor per axis (no weights)."""

    def __init__(self, scale: Sequence[int]):
        super().__init__()
        self.scale = tuple(float(s) for s in triple(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == (1.0, 1.0, 1.0):
            return x
        return F.interpolate(x, scale_factor=self.scale, mode="trilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def _fp32(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A convolution on a pooled map, outside autocast: oneDNN's bf16 conv3d backward returned a NaN weight
    gradient on 2x2x2 maps (4 runs in 6 on an AVX512-BF16 EPYC, torch 2.13), which made the whole network
    NaN within 20 steps; these maps are a few voxels, so float32 costs nothing."""
    bias = conv.bias.float() if conv.bias is not None else None
    with torch.autocast(x.device.type, enabled=False):  # weights may be stored bf16 for inference: cast back
        return conv._conv_forward(x.float(), conv.weight.float(), bias)


class PyramidStripContext(nn.Module):
    """Bottleneck context: pyramid pooling + strip pooling on reduced channels, added back residually.

    The pooled maps may hold a single voxel, so the convolutions on them carry a bias and no norm;
    pooling windows shrink to the map's size on small bottlenecks, so any patch size works.
    """

    pyramid_factors = (2, 4)

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        mid = max(8, channels // reduction)
        self.reduce = ConvNormAct(channels, mid, (1, 1, 1))
        self.local = conv3d(mid, mid, (3, 3, 3))
        self.pyramid = nn.ModuleList(conv3d(mid, mid, (3, 3, 3), bias=True) for _ in self.pyramid_factors)
        self.strips = nn.ModuleList(conv3d(mid, mid, k, bias=True) for k in ((3, 1, 1), (1, 3, 1), (1, 1, 3)))
        self.fuse_pyramid = ConvNormAct(mid, mid, (3, 3, 3))
        self.fuse_strips = ConvNormAct(mid, mid, (3, 3, 3))
        self.merge = nn.Sequential(conv3d(2 * mid, mid, (1, 1, 1)), norm(mid))
        self.act = act()
        self.expand = nn.Conv3d(mid, channels, 1, bias=True)

    def _pyramid(self, r: torch.Tensor) -> torch.Tensor:
        size = r.shape[2:]
        y = self.local(r)
        for f, conv in zip(self.pyramid_factors, self.pyramid):
            k = [min(f, s) for s in size]
            pooled = F.avg_pool3d(r.float(), kernel_size=k, stride=k, ceil_mode=True)  # no bf16 CPU kernel
            y = y + F.interpolate(_fp32(conv, pooled), size=size, mode="trilinear", align_corners=False)
        return self.fuse_pyramid(y)

    def _strips(self, r: torch.Tensor) -> torch.Tensor:
        z = _fp32(self.strips[0], r.mean(dim=(3, 4), keepdim=True))  # (N, C, Z, 1, 1)
        y = _fp32(self.strips[1], r.mean(dim=(2, 4), keepdim=True))  # (N, C, 1, Y, 1)
        x = _fp32(self.strips[2], r.mean(dim=(2, 3), keepdim=True))  # (N, C, 1, 1, X)
        return self.fuse_strips(z + y + x)  # broadcasting = upsampling a one-wide axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.reduce(x)
        both = torch.cat((self._pyramid(r), self._strips(r)), dim=1)
        return x + self.expand(self.act(self.merge(both) + r))


class EfficientSegNetPublished(EfficientSegNet):
    """Residual encoder, one pyramid+strip context block, slim additive decoder with trilinear upsampling."""

    @classmethod
    def from_config(cls, net_cfg: dict, in_channels: int, num_classes: int,
                    deep_supervision: bool = False) -> "EfficientSegNetPublished":
        return cls(parse_config({"blocks_per_stage": 2, **net_cfg}), in_channels, num_classes, deep_supervision)

    @staticmethod
    def deep_supervision_scales(net_cfg: dict) -> list[list[float]]:
        return EfficientSegNet.deep_supervision_scales({"blocks_per_stage": 2, **net_cfg})

    def encoder_stage(self, i: int, cin: int, cout: int) -> nn.Module:
        c = self.cfg
        return ResidualStage(cin, cout, c.kernel_sizes[i], c.strides[i], c.blocks_per_stage[i])

    def context_block(self, i: int) -> nn.Module:
        c = self.cfg
        if i == c.num_stages - 1 and i > 0:
            return PyramidStripContext(c.features[i], _count(c.extra, "context_reduction", 4, 1))
        return nn.Identity()

    def upsampler(self, level: int) -> nn.Module:
        f = self.cfg.features
        return nn.Sequential(ConvNormAct(f[level + 1], f[level], (1, 1, 1)),
                             TrilinearUpsample(self.cfg.strides[level + 1]))
