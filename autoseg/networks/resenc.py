"""Residual-encoder U-Net as in nnU-Net's ResEnc presets (Isensee et al. 2024, "nnU-Net revisited").

More residual blocks per encoder stage the deeper it goes (1, 3, 4, 6, 6, 6, ...) and one conv per
decoder level. nnU-Net's M / L / XL presets share this architecture and differ in the GPU memory the
planner fills (8 / 24 / 40 GB) with patch and batch; ``RESENC_PRESETS`` records those targets for the
planner. Any key in the plans overrides the defaults (``blocks_per_stage``, ``convs_per_stage``).
"""
from __future__ import annotations

from torch import nn

from autoseg.networks.blocks import ResidualStage
from autoseg.networks.config import parse_config, scales_from_strides
from autoseg.networks.unet import UNet

RESENC_BLOCKS = (1, 3, 4, 6, 6, 6)
RESENC_PRESETS = {"M": 8.0, "L": 24.0, "XL": 40.0}  # preset -> GPU memory target (GB), as nnU-Net


def resenc_config(net_cfg: dict) -> dict:
    """``net_cfg`` with the ResEnc defaults filled in (what the network and the memory estimate read)."""
    n = len(net_cfg.get("features") or [])
    blocks = [RESENC_BLOCKS[min(i, len(RESENC_BLOCKS) - 1)] for i in range(n)]
    return {"blocks_per_stage": blocks, "convs_per_stage": 1, **net_cfg, "blocks": "residual"}


class ResEncUNet(UNet):
    """U-Net whose encoder stages are ``blocks_per_stage`` residual blocks; plain slim decoder."""

    @classmethod
    def from_config(cls, net_cfg: dict, in_channels: int, num_classes: int,
                    deep_supervision: bool = False) -> "ResEncUNet":
        return cls(parse_config(resenc_config(net_cfg)), in_channels, num_classes, deep_supervision)

    @staticmethod
    def deep_supervision_scales(net_cfg: dict) -> list[list[float]]:
        cfg = parse_config(resenc_config(net_cfg))
        return scales_from_strides(cfg.strides, cfg.deep_supervision_levels)

    def encoder_stage(self, i: int, cin: int, cout: int) -> nn.Module:
        c = self.cfg
        return ResidualStage(cin, cout, c.kernel_sizes[i], c.strides[i], c.blocks_per_stage[i])
