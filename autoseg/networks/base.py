"""Encoder-decoder skeleton shared by the U-Net and EfficientSegNet.

Subclasses only say how to build an encoder stage, a decoder stage, and how to merge an upsampled map
with its skip; the skeleton owns the topology from the plans, the deep-supervision heads and forward.
Heads exist for every supervised level whether or not ``deep_supervision`` is on, so a checkpoint
trained with deep supervision loads into a predictor built without it (same state_dict keys).
"""
from __future__ import annotations

from abc import ABCMeta, abstractmethod

import torch
from torch import nn

from autoseg.networks.blocks import SegHead, init_weights, upsample
from autoseg.networks.config import NetConfig, parse_config, scales_from_strides


class SegNetwork(nn.Module, metaclass=ABCMeta):
    """U-shaped network from a ``NetConfig``; forward returns logits or a list (full res first)."""

    def __init__(self, cfg: NetConfig, in_channels: int, num_classes: int, deep_supervision: bool = False):
        super().__init__()
        self.cfg = cfg
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision
        n, f = cfg.num_stages, cfg.features
        self.encoder = nn.ModuleList()
        cin = in_channels
        for i in range(n):
            self.encoder.append(self.encoder_stage(i, cin, f[i]))
            cin = f[i]
        self.context = nn.ModuleList(self.context_block(i) for i in range(n))
        # decoder index j goes from the deepest skip (level n-2) up to full resolution (level 0)
        levels = list(range(n - 2, -1, -1))
        self.upsamplers = nn.ModuleList(self.upsampler(lv) for lv in levels)
        self.decoder = nn.ModuleList(self.decoder_stage(lv) for lv in levels)
        self.seg_heads = nn.ModuleList(SegHead(f[lv], num_classes) for lv in range(cfg.deep_supervision_levels))
        self.apply(init_weights)

    @classmethod
    def from_config(cls, net_cfg: dict, in_channels: int, num_classes: int,
                    deep_supervision: bool = False) -> "SegNetwork":
        return cls(parse_config(net_cfg), in_channels, num_classes, deep_supervision)

    @staticmethod
    def deep_supervision_scales(net_cfg: dict) -> list[list[float]]:
        cfg = parse_config(net_cfg)
        return scales_from_strides(cfg.strides, cfg.deep_supervision_levels)

    # -- hooks for subclasses ------------------------------------------------------------------------
    @abstractmethod
    def encoder_stage(self, i: int, cin: int, cout: int) -> nn.Module:
        """Encoder stage i: ``cin`` -> ``cout`` channels, downsampling by ``cfg.strides[i]``."""

    @abstractmethod
    def decoder_stage(self, level: int) -> nn.Module:
        """Block applied after merging at ``level``; must output ``features[level]`` channels."""

    def upsampler(self, level: int) -> nn.Module:
        """Brings level ``level + 1`` up to ``level``'s size and ``features[level]`` channels."""
        f = self.cfg.features
        return upsample(f[level + 1], f[level], self.cfg.strides[level + 1])

    def context_block(self, i: int) -> nn.Module:
        """Module applied to encoder stage i's output (identity by default)."""
        return nn.Identity()

    def merge(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat((up, skip), dim=1)

    def merge_inference(self, upsampler: nn.Module, deep: list[torch.Tensor],
                        skips: list[torch.Tensor]) -> torch.Tensor:
        """``merge(upsampler(deep), skip)`` without gradients, taking ownership of ``deep[0]`` and
        ``skips[-1]`` (popped) so that each is freed as soon as it is used.

        The default concatenation fills one preallocated buffer: skip first (then freed), upsampled map
        second, so ``up``, ``skip`` and their concatenation never coexist (3 full-resolution maps at the
        top level instead of 4). A subclass that overrides ``merge`` gets it called unchanged unless it
        overrides this too."""
        skip = skips.pop()
        if type(self).merge is not SegNetwork.merge or not isinstance(upsampler, nn.ConvTranspose3d):
            return self.merge(upsampler(deep.pop()), skip)
        c_up = upsampler.out_channels
        dev = skip.device.type
        up_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else upsampler.weight.dtype
        fmt = (torch.channels_last_3d if not skip.is_contiguous()
               and skip.is_contiguous(memory_format=torch.channels_last_3d) else torch.contiguous_format)
        buf = torch.empty((skip.shape[0], c_up + skip.shape[1], *skip.shape[2:]), device=skip.device,
                          dtype=torch.promote_types(skip.dtype, up_dtype), memory_format=fmt)
        buf[:, c_up:] = skip
        del skip
        buf[:, :c_up] = upsampler(deep.pop())
        return buf

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if not torch.is_grad_enabled() and not self.deep_supervision:
            return self._forward_inference(x)
        skips = []
        for stage, ctx in zip(self.encoder, self.context):
            x = ctx(stage(x))
            skips.append(x)
        n = len(skips)
        n_heads = len(self.seg_heads)
        outputs = []
        if n == 1:
            outputs.append(self.seg_heads[0](x))
        for j, (up, dec) in enumerate(zip(self.upsamplers, self.decoder)):
            level = n - 2 - j
            x = dec(self.merge(up(x), skips[level]))
            if level == 0 or (self.deep_supervision and level < n_heads):
                outputs.append(self.seg_heads[level](x))
        if self.deep_supervision:
            return outputs[::-1]
        return outputs[-1]

    def _forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        """The same computation as ``forward`` with every full-resolution map freed as soon as it is
        used (skips after their merge, a merged map after the first conv that reads it): the peak of a
        window's forward pass falls from about 5 to about 3 top-level feature maps."""
        skips = []
        for stage, ctx in zip(self.encoder, self.context):
            x = ctx(stage(x))
            skips.append(x)
        del x
        deep = [skips.pop()]
        for up, dec in zip(self.upsamplers, self.decoder):
            merged = [self.merge_inference(up, deep, skips)]
            deep = [_run_consuming(dec, merged)]
        return self.seg_heads[0](deep.pop())

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, num_classes={self.num_classes}, "
                f"deep_supervision={self.deep_supervision}")


def _leaves(module: nn.Module):
    """The modules a plain ``nn.Sequential`` (nested or not) calls in order; others are leaves."""
    if type(module).forward is nn.Sequential.forward:
        for child in module:
            yield from _leaves(child)
    else:
        yield module


def _run_consuming(module: nn.Module, holder: list[torch.Tensor]) -> torch.Tensor:
    """``module(holder.pop())`` where the input is released after the first leaf module reads it."""
    x = holder.pop()
    for leaf in _leaves(module):
        x = leaf(x)
    return x


def count_parameters(net: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)
