"""U-Nets that compute exactly what nnU-Net v2's PlainConvUNet and ResidualEncoderUNet compute, so an
nnU-Net checkpoint runs in autoseg's predictor (``autoseg import_nnunet``) with its memory-lean forward.

Both are autoseg ``UNet``s with three differences that nnU-Net's networks need, read from the network
config (extra keys, kept by the plans as unknown keys are):

- ``upsample_bias`` (bool): nnU-Net's transposed convolutions carry a bias that autoseg's do not.
- ``decoder_convs_per_stage`` (one int per decoder level, index = level, full resolution first): nnU-Net
  sets the decoder's conv count on its own (ResEnc plans use one conv per level).
- ``NnUNetResEncUNet``: nnU-Net's residual encoder, a stem conv then ResNet-D basic blocks whose shortcut
  average-pools before its 1x1 conv (autoseg's ``blocks: residual`` uses a strided 1x1 conv instead).

Conv biases before instance normalisation are not represented: the normalisation removes them exactly.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from autoseg import AutosegError
from autoseg.networks.blocks import ConvNormAct, PlainStage, conv3d, norm, act, triple
from autoseg.networks.unet import UNet


class NnUNetPlainUNet(UNet):
    """nnU-Net's PlainConvUNet: autoseg's plain U-Net with biased upsampling and its own decoder depth."""

    def __init__(self, cfg, in_channels: int, num_classes: int, deep_supervision: bool = False):
        super().__init__(cfg, in_channels, num_classes, deep_supervision)
        if cfg.extra.get("upsample_bias", True):
            for up in self.upsamplers:
                up.bias = nn.Parameter(torch.zeros(up.out_channels))

    def decoder_convs(self, level: int) -> int:
        dec = self.cfg.extra.get("decoder_convs_per_stage")
        if dec is None:
            return self.cfg.convs_per_stage[level]
        if not (isinstance(dec, list) and len(dec) == self.cfg.num_stages - 1
                and all(isinstance(d, int) and d > 0 for d in dec)):
            raise AutosegError(f"plans network config: key 'decoder_convs_per_stage' must be a list of "
                               f"{self.cfg.num_stages - 1} positive integers, got {dec!r}")
        return dec[level]

    def decoder_stage(self, level: int) -> nn.Module:
        c = self.cfg
        f = c.features[level]
        return PlainStage(2 * f, f, c.kernel_sizes[level], (1, 1, 1), self.decoder_convs(level))


class ResidualBlockD(nn.Module):
    """ResNet-D basic block as nnU-Net builds it: conv-norm-act, conv-norm, plus a shortcut that
    average-pools by the stride and projects with a 1x1 conv + norm when the width changes; then act."""

    def __init__(self, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int] = (1, 1, 1)):
        super().__init__()
        s = triple(stride)
        self.conv1 = ConvNormAct(cin, cout, kernel, s)
        self.conv2 = nn.Sequential(conv3d(cout, cout, kernel), norm(cout))
        skip: list[nn.Module] = []
        if any(v != 1 for v in s):
            skip.append(nn.AvgPool3d(s, s))
        if cin != cout:
            skip.append(nn.Sequential(nn.Conv3d(cin, cout, 1, bias=False), norm(cout)))
        self.skip = nn.Sequential(*skip) if skip else nn.Identity()
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.skip(x))


class ResEncStage(nn.Module):
    """One encoder level: (stage 0 only) the stem conv, then the level's residual blocks."""

    def __init__(self, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int], n_blocks: int,
                 stem: bool):
        super().__init__()
        self.stem = ConvNormAct(cin, cout, kernel) if stem else None
        width = cout if stem else cin
        blocks = [ResidualBlockD(width, cout, kernel, stride)]
        blocks += [ResidualBlockD(cout, cout, kernel) for _ in range(n_blocks - 1)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stem is not None:
            x = self.stem(x)
        return self.blocks(x)


class NnUNetResEncUNet(NnUNetPlainUNet):
    """nnU-Net's ResidualEncoderUNet (ResEnc M/L/XL presets): residual encoder, plain decoder.
    ``blocks_per_stage`` gives the residual blocks per level."""

    def encoder_stage(self, i: int, cin: int, cout: int) -> nn.Module:
        c = self.cfg
        return ResEncStage(cin, cout, c.kernel_sizes[i], c.strides[i], c.blocks_per_stage[i], stem=i == 0)
