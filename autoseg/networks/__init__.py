"""Networks built from the plans' network config, looked up by ``network.class`` in one registry.

Users add their own architecture with ``@register_network`` (a ``SegNetwork`` subclass, or any class
with a ``from_config(net_cfg, in_channels, num_classes, deep_supervision)`` classmethod), or just by
defining a ``SegNetwork`` subclass in a file on the trainer path, and then name it in the plans;
``build_network`` is the one entry point the trainer and the predictor use.
"""
from __future__ import annotations

from autoseg.networks.base import SegNetwork, count_parameters
from autoseg.networks.config import NetConfig, parse_config
from autoseg.networks.efficientseg import EfficientSegNet
from autoseg.networks.efficientseg_published import EfficientSegNetPublished
from autoseg.networks.nnunet_compat import NnUNetPlainUNet, NnUNetResEncUNet
from autoseg.networks.registry import (NETWORKS, build_network, deep_supervision_scales, known_networks,
                                       network_class, register_module_networks, register_network)
from autoseg.networks.resenc import ResEncUNet
from autoseg.networks.scn import SpatialConfigurationNet
from autoseg.networks.unet import UNet

__all__ = ["build_network", "deep_supervision_scales", "register_network", "known_networks", "NETWORKS",
           "network_class", "register_module_networks", "count_parameters", "SegNetwork", "UNet",
           "EfficientSegNet", "NetConfig", "parse_config", "EfficientSegNetPublished", "ResEncUNet",
           "SpatialConfigurationNet", "NnUNetPlainUNet", "NnUNetResEncUNet"]

for _cls in (UNet, EfficientSegNet, EfficientSegNetPublished, ResEncUNet, SpatialConfigurationNet,
             NnUNetPlainUNet, NnUNetResEncUNet):
    register_network(_cls)
