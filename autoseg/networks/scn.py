"""SpatialConfiguration-Net (Payer et al. 2019; FLARE21 low-memory entry by Thaler et al.).

Two branches multiplied: a local-appearance U-Net proposes every organ wherever the texture fits, and a
spatial-configuration branch, working on the appearance output at a coarse scale with large kernels,
says where each organ can be given where the others are. The product suppresses look-alike responses
(a spleen-like patch on the wrong side, bowel that looks like pancreas) without an ROI crop, which is
why this network may run as the organ model on the whole body-cropped volume.

The product is taken between class probabilities: softmax(la) * sigmoid(sc), renormalised, i.e.
logits ``la + logsigmoid(sc)``. The last spatial conv starts at zero, so training begins as the plain
U-Net and the spatial prior grows from there.

Config keys beyond the U-Net's: ``sc_level`` (encoder level whose resolution the spatial branch works
at, default 2, clipped to the network), ``sc_features`` (default 2 x features[0]), ``sc_convs``
(default 4), ``sc_kernel`` (default 7; 3 on an axis whose kernel at that level is 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.networks.blocks import act, conv3d
from autoseg.networks.config import NetConfig
from autoseg.networks.efficientseg import _count
from autoseg.networks.unet import UNet


class SpatialConfigurationNet(UNet):
    """U-Net local appearance x coarse spatial configuration (see module docstring)."""

    def __init__(self, cfg: NetConfig, in_channels: int, num_classes: int, deep_supervision: bool = False):
        super().__init__(cfg, in_channels, num_classes, deep_supervision)
        e = cfg.extra
        level = min(_count(e, "sc_level", 2, 0), cfg.num_stages - 1)
        factor = [1, 1, 1]
        for s in cfg.strides[:level + 1]:
            factor = [a * b for a, b in zip(factor, s)]
        self.sc_factor = tuple(factor)
        big = _count(e, "sc_kernel", 7, 1)
        if big % 2 == 0:
            big += 1
        kernel = [big if k > 1 else min(big, 3) for k in cfg.kernel_sizes[level]]
        width = _count(e, "sc_features", 2 * cfg.features[0], 1)
        layers: list[nn.Module] = []
        cin = num_classes
        for _ in range(_count(e, "sc_convs", 4, 1)):
            layers += [conv3d(cin, width, kernel, bias=True), act()]
            cin = width
        last = conv3d(cin, num_classes, kernel, bias=True)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.spatial = nn.Sequential(*layers, last)

    def spatial_prior(self, la: torch.Tensor) -> torch.Tensor:
        """Spatial-configuration logits at the appearance output's size."""
        n, c, z, y, x = la.shape
        fz, fy, fx = self.sc_factor
        # block means by reshaping (the U-Net makes the size divisible): CPU avg_pool3d has no bf16 kernel
        coarse = la.reshape(n, c, z // fz, fz, y // fy, fy, x // fx, fx).mean(dim=(3, 5, 7))
        # float32: torch 2.13's CPU trilinear backward crashed on this bf16 channels-last map
        return F.interpolate(self.spatial(coarse).float(), size=la.shape[2:], mode="trilinear", align_corners=False)

    def combine(self, la: torch.Tensor) -> torch.Tensor:
        log_prior = F.logsigmoid(self.spatial_prior(la))
        if not torch.is_grad_enabled() and torch.promote_types(log_prior.dtype, la.dtype) == log_prior.dtype:
            return log_prior.add_(la)  # no gradients: reuse the buffer (same sum, bit for bit)
        return la + log_prior

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        out = super().forward(x)
        if isinstance(out, list):
            return [self.combine(out[0]), *out[1:]]  # lower heads supervise the appearance branch
        return self.combine(out)
