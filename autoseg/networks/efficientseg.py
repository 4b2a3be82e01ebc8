"""EfficientSegNet-style network (after the FLARE21 winner, Zhang et al. 2021).

Anisotropic residual blocks (in-plane (1,3,3) conv then through-plane (3,1,1) conv, in (z,y,x)) in the
encoder, strip-pooling context gates on the deepest stages, and a slim decoder: transposed-conv
upsampling, additive skip (no concatenation, so half the decoder input width) and one anisotropic
block per level. A quarter of the U-Net's parameters and about half its CPU time for the same features;
on a GPU with fp16 the two cost about the same (normalisation and memory traffic dominate there).

Extra optional config keys: ``context_levels`` (how many of the deepest encoder stages get a context
gate, default 2) and ``decoder_blocks`` (anisotropic blocks per decoder level, default 1).
"""
from __future__ import annotations

import torch
from torch import nn

from autoseg import AutosegError
from autoseg.networks.base import SegNetwork
from autoseg.networks.blocks import AnisotropicStage, StripPoolingContext
from autoseg.networks.config import WHERE


def _count(extra: dict, key: str, default: int, lo: int) -> int:
    v = extra.get(key, default)
    if not (isinstance(v, int) and not isinstance(v, bool) and v >= lo):
        raise AutosegError(f"{WHERE}: key '{key}' must be an integer >= {lo}, got {v!r}")
    return v


class EfficientSegNet(SegNetwork):
    """Anisotropic encoder (``blocks_per_stage`` blocks per stage), context gates, slim decoder."""

    def encoder_stage(self, i: int, cin: int, cout: int) -> nn.Module:
        c = self.cfg
        return AnisotropicStage(cin, cout, c.kernel_sizes[i], c.strides[i], c.blocks_per_stage[i], stem=i == 0)

    def context_block(self, i: int) -> nn.Module:
        c = self.cfg
        n_ctx = _count(c.extra, "context_levels", 2, 0)
        if i >= c.num_stages - n_ctx and i > 0:
            return StripPoolingContext(c.features[i], c.kernel_sizes[i])
        return nn.Identity()

    def decoder_stage(self, level: int) -> nn.Module:
        c = self.cfg
        f = c.features[level]
        return AnisotropicStage(f, f, c.kernel_sizes[level], (1, 1, 1), _count(c.extra, "decoder_blocks", 1, 1))

    def merge(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return up + skip

    def merge_inference(self, upsampler: nn.Module, deep: list[torch.Tensor],
                        skips: list[torch.Tensor]) -> torch.Tensor:
        """Add into the skip's memory (no gradients: nothing else reads it); its dtype must hold the
        sum, so a lower-precision skip falls back to the out-of-place add."""
        skip = skips.pop()
        up = upsampler(deep.pop())
        if torch.promote_types(skip.dtype, up.dtype) != skip.dtype:
            return up + skip
        return skip.add_(up)
