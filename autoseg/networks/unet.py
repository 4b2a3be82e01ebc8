"""nnU-Net-style U-Net from plans: plain (conv-norm-act x n) or residual encoder, plain decoder."""
from __future__ import annotations

from torch import nn

from autoseg.networks.base import SegNetwork
from autoseg.networks.blocks import PlainStage, ResidualStage


class UNet(SegNetwork):
    """Encoder stage i: stride ``strides[i]`` in its first conv, kernels ``kernel_sizes[i]``.

    ``blocks: "residual"`` swaps each encoder stage for ``blocks_per_stage`` basic residual blocks
    (default ``convs_per_stage // 2``, so the conv count matches the plain net) with a 1x1x1 strided
    projection on the shortcut. The decoder is plain in both cases: transposed-conv upsampling,
    concatenation with the skip, ``convs_per_stage`` convs at that level.
    """

    def encoder_stage(self, i: int, cin: int, cout: int) -> nn.Module:
        c = self.cfg
        if c.blocks == "residual":
            return ResidualStage(cin, cout, c.kernel_sizes[i], c.strides[i], c.blocks_per_stage[i])
        return PlainStage(cin, cout, c.kernel_sizes[i], c.strides[i], c.convs_per_stage[i])

    def decoder_stage(self, level: int) -> nn.Module:
        c = self.cfg
        f = c.features[level]
        return PlainStage(2 * f, f, c.kernel_sizes[level], (1, 1, 1), c.convs_per_stage[level])
