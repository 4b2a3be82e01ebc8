"""The one registry of network classes: the planner names a class, the trainer and the predictor build
it here, and user modules on the trainer path add to it.

A class is registered with ``@register_network`` (or ``register_network(cls, "Name")``); a
``SegNetwork`` subclass defined in a file on the trainer path (``--trainer-path`` /
``AUTOSEG_TRAINER_PATH``) is registered by just being there, so a network written beside a user's
trainer trains and predicts with no extra step.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import overload

from torch import nn

from autoseg import AutosegError

log = logging.getLogger(__name__)

NETWORKS: dict[str, type] = {}


@overload
def register_network(cls: type, name: str | None = None) -> type: ...
@overload
def register_network(cls: None = None, name: str | None = None) -> Callable[[type], type]: ...


def register_network(cls: type | None = None, name: str | None = None):
    """Make ``cls`` selectable as ``network.class`` (under ``name`` or its class name). Usable as
    ``@register_network`` or ``@register_network(name="X")``. Re-registering a name replaces the entry,
    so a user can override a built-in."""
    if cls is None:
        return lambda c: register_network(c, name)
    if not callable(getattr(cls, "from_config", None)):
        raise AutosegError(f"register_network: {cls!r} has no from_config(net_cfg, in_channels, "
                           "num_classes, deep_supervision) classmethod")
    NETWORKS[name or cls.__name__] = cls
    return cls


def register_module_networks(module: object) -> list[str]:
    """Register every concrete ``SegNetwork`` subclass *defined* in ``module`` under its class name
    (used for user files on the trainer path). A name already taken by another class is left alone
    with a warning: an explicit ``register_network`` call is how a built-in is overridden."""
    import inspect

    from autoseg.networks.base import SegNetwork

    added = []
    for _, obj in inspect.getmembers(module, inspect.isclass):
        if not (issubclass(obj, SegNetwork) and obj.__module__ == getattr(module, "__name__", None)
                and not inspect.isabstract(obj)):
            continue
        if obj in NETWORKS.values():
            continue
        if obj.__name__ in NETWORKS:
            log.warning("%s: network class name '%s' is already registered; not replaced (use "
                        "register_network(cls, name) to override it)", getattr(module, "__file__", module),
                        obj.__name__)
            continue
        NETWORKS[obj.__name__] = obj
        added.append(obj.__name__)
    return added


def known_networks() -> list[str]:
    return sorted(NETWORKS)


def network_class(name: object, key: str = "network.class") -> type:
    """The class registered as ``name``; on a miss the user modules on the trainer path are imported
    first (they may define it). Unknown -> one line naming ``key`` and the known names."""
    if isinstance(name, str) and name in NETWORKS:
        return NETWORKS[name]
    from autoseg.trainers.registry import load_user_modules

    load_user_modules()
    if isinstance(name, str) and name in NETWORKS:
        return NETWORKS[name]
    raise AutosegError(f"{key}: unknown network class {name!r}; known: {', '.join(known_networks())} "
                       "(user networks are found in files on --trainer-path / AUTOSEG_TRAINER_PATH)")


def build_network(net_cfg: dict, in_channels: int, num_classes: int,
                  deep_supervision: bool = False) -> nn.Module:
    """Build the network named by ``net_cfg["class"]``. With ``deep_supervision`` the forward returns a
    list of logits, full resolution first, at ``deep_supervision_scales(net_cfg)``; toggle it later
    through the module's ``deep_supervision`` attribute (weights are the same either way)."""
    if not isinstance(net_cfg, dict):
        raise AutosegError(f"plans network config: must be an object, got {type(net_cfg).__name__}")
    return network_class(net_cfg.get("class")).from_config(net_cfg, in_channels, num_classes, deep_supervision)


def deep_supervision_scales(net_cfg: dict) -> list[list[float]]:
    """Scale of each deep-supervision output relative to the input, (z, y, x); first is [1, 1, 1].

    A registered class may define its own ``deep_supervision_scales(net_cfg)`` static method."""
    from autoseg.networks.config import parse_config, scales_from_strides

    if not isinstance(net_cfg, dict):
        raise AutosegError(f"plans network config: must be an object, got {type(net_cfg).__name__}")
    hook = getattr(network_class(net_cfg.get("class")), "deep_supervision_scales", None)
    if hook is not None:
        return hook(net_cfg)
    cfg = parse_config(net_cfg)
    return scales_from_strides(cfg.strides, cfg.deep_supervision_levels)
