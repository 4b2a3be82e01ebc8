"""Networks built from the plans' network config, looked up by ``network.class`` in a registry.

Users add their own architecture with ``register_network(MyNet)`` (a ``SegNetwork`` subclass, or any
class with a ``from_config(net_cfg, in_channels, num_classes, deep_supervision)`` classmethod) and then
name it in the plans; ``build_network`` is the one entry point trainers and predictors use.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from autoseg import AutosegError
from autoseg.networks.base import SegNetwork, count_parameters
from autoseg.networks.config import NetConfig, parse_config, scales_from_strides
from autoseg.networks.efficientseg import EfficientSegNet
from autoseg.networks.nnunet_compat import NnUNetPlainUNet, NnUNetResEncUNet
from autoseg.networks.unet import UNet

__all__ = ["build_network", "deep_supervision_scales", "register_network", "known_networks", "NETWORKS",
           "count_parameters", "SegNetwork", "UNet", "EfficientSegNet", "NetConfig", "parse_config"]

NETWORKS: dict[str, type] = {}


def register_network(cls: type, name: str | None = None) -> type:
    """Make ``cls`` selectable as ``network.class`` (under ``name`` or its class name). Usable as a
    decorator. Re-registering a name replaces the entry, so a user can override a built-in."""
    if not callable(getattr(cls, "from_config", None)):
        raise AutosegError(f"register_network: {cls!r} has no from_config(net_cfg, in_channels, "
                           "num_classes, deep_supervision) classmethod")
    NETWORKS[name or cls.__name__] = cls
    return cls


register_network(UNet)
register_network(EfficientSegNet)
register_network(NnUNetPlainUNet)
register_network(NnUNetResEncUNet)


def known_networks() -> list[str]:
    return sorted(NETWORKS)


def _lookup(net_cfg: dict) -> type:
    if not isinstance(net_cfg, dict):
        raise AutosegError(f"plans network config: must be an object, got {type(net_cfg).__name__}")
    name = net_cfg.get("class")
    if name not in NETWORKS:
        raise AutosegError(f"plans network config: unknown network class {name!r}; "
                           f"known: {', '.join(known_networks())}")
    return NETWORKS[name]


def build_network(net_cfg: dict, in_channels: int, num_classes: int,
                  deep_supervision: bool = False) -> nn.Module:
    """Build the network named by ``net_cfg["class"]``. With ``deep_supervision`` the forward returns a
    list of logits, full resolution first, at ``deep_supervision_scales(net_cfg)``; toggle it later
    through the module's ``deep_supervision`` attribute (weights are the same either way)."""
    cls = _lookup(net_cfg)
    return cls.from_config(net_cfg, in_channels, num_classes, deep_supervision)


def deep_supervision_scales(net_cfg: dict) -> list[list[float]]:
    """Scale of each deep-supervision output relative to the input, (z, y, x); first is [1, 1, 1].

    A registered class may define its own ``deep_supervision_scales(net_cfg)`` static method."""
    hook: Callable[[dict], list[list[float]]] | None = getattr(_lookup(net_cfg), "deep_supervision_scales", None)
    if hook is not None:
        return hook(net_cfg)
    cfg = parse_config(net_cfg)
    return scales_from_strides(cfg.strides, cfg.deep_supervision_levels)
