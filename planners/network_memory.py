"""Training-memory counts for every built-in network class, so the planner sizes each one honestly.

``planners.memory`` counts the plain U-Net; this module adds what autograd keeps for the other
classes, by the same rule: a conv's input, a norm's input and an in-place activation's output are
saved; additions, concatenations, averaging and trilinear upsampling save nothing of their own (their
outputs are saved by whatever reads them next). A residual block (conv-norm-act, conv-norm, add, act)
keeps 4 maps, plus 1 for a projection shortcut; an anisotropic block the same, its in-plane half
before the z stride. Parameters are counted exactly by building the network on the meta device.
``benchmarks/bench_network_memory.py --networks`` checks the counts against autograd on the CPU.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import lru_cache
from math import prod

from autoseg.planners.memory import LOSS_TENSORS_PER_CLASS, activation_elements, parameter_count, stage_sizes


def _ints(net: dict, key: str, default: int, n: int) -> list[int]:
    v = net.get(key, default)
    return [int(x) for x in v] if isinstance(v, list) else [int(v)] * n


def _ds_levels(net: dict, deep_supervision: bool) -> int:
    n = len(net["features"])
    return int(net.get("deep_supervision_levels", max(1, n - 1))) if deep_supervision else 1


def _heads(net: dict, sizes: list[int], num_classes: int, deep_supervision: bool) -> int:
    return sum(LOSS_TENSORS_PER_CLASS * num_classes * sizes[lv] for lv in range(_ds_levels(net, deep_supervision)))


def _residual_encoder(net: dict, sizes: list[int], in_channels: int, blocks: list[int]) -> int:
    total, cin = 0, in_channels
    for i, (f, n) in enumerate(zip(net["features"], sizes)):
        projection = cin != f or any(s != 1 for s in net["strides"][i])
        total += (4 * blocks[i] + projection) * f * n
        cin = f
    return total


def _plain_decoder(net: dict, sizes: list[int], convs: list[int]) -> int:
    f = net["features"]
    return sum((2 + 2 * convs[lv]) * f[lv] * sizes[lv] for lv in range(len(f) - 1))


def _residual_unet(net: dict, patch: Sequence[int], in_channels: int, num_classes: int, ds: bool) -> int:
    from autoseg.networks.resenc import resenc_config

    if net.get("class") == "ResEncUNet":
        net = resenc_config(net)
    n = len(net["features"])
    convs = _ints(net, "convs_per_stage", 2, n)
    blocks = _ints(net, "blocks_per_stage", 1, n) if "blocks_per_stage" in net else [max(1, c // 2) for c in convs]
    sizes = [prod(s) for s in stage_sizes(patch, net["strides"])]
    return (in_channels * prod(patch) + _residual_encoder(net, sizes, in_channels, blocks)
            + _plain_decoder(net, sizes, convs) + _heads(net, sizes, num_classes, ds))


def _efficientseg(net: dict, patch: Sequence[int], in_channels: int, num_classes: int, ds: bool) -> int:
    """Our anisotropic variant: anisotropic encoder, strip gates on the deepest stages, additive decoder."""
    feats = net["features"]
    n_st = len(feats)
    sizes = [prod(s) for s in stage_sizes(patch, net["strides"])]
    blocks = _ints(net, "blocks_per_stage", 1, n_st) if "blocks_per_stage" in net else \
        [max(1, c // 2) for c in _ints(net, "convs_per_stage", 2, n_st)]
    total = in_channels * prod(patch)
    n_ctx = int(net.get("context_levels", 2))
    for i, (f, n) in enumerate(zip(feats, sizes)):
        sz = net["strides"][i][0]
        total += (4 * blocks[i] + (i > 0)) * f * n + 2 * f * n * (sz - 1)
        if i > 0 and i >= n_st - n_ctx:
            total += f * n  # the gated map
    dec = int(net.get("decoder_blocks", 1))
    total += sum((1 + 4 * dec) * feats[lv] * sizes[lv] for lv in range(n_st - 1))
    return total + _heads(net, sizes, num_classes, ds)


def _efficientseg_published(net: dict, patch: Sequence[int], in_channels: int, num_classes: int, ds: bool) -> int:
    feats = net["features"]
    n_st = len(feats)
    sizes = [prod(s) for s in stage_sizes(patch, net["strides"])]
    blocks = _ints(net, "blocks_per_stage", 2, n_st)
    total = in_channels * prod(patch) + _residual_encoder(net, sizes, in_channels, blocks)
    if n_st > 1:
        mid = max(8, feats[-1] // int(net.get("context_reduction", 4)))
        total += (12 * mid + feats[-1]) * sizes[-1]  # context block at the bottleneck
    dec = int(net.get("decoder_blocks", 1))
    for lv in range(n_st - 1):
        total += 2 * feats[lv] * sizes[lv + 1]  # 1x1 conv-norm-act before the trilinear upsampling
        total += (1 + 4 * dec) * feats[lv] * sizes[lv]
    return total + _heads(net, sizes, num_classes, ds)


def _scn(net: dict, patch: Sequence[int], in_channels: int, num_classes: int, ds: bool) -> int:
    total = _unet(net, patch, in_channels, num_classes, ds)
    level = min(int(net.get("sc_level", 2)), len(net["features"]) - 1)
    coarse = prod(stage_sizes(patch, net["strides"])[level])
    width = int(net.get("sc_features", 2 * net["features"][0]))
    convs = int(net.get("sc_convs", 4))
    # full resolution: logsigmoid's input and its buffer
    return total + (num_classes + convs * width) * coarse + 2 * num_classes * prod(patch)


def _unet(net: dict, patch: Sequence[int], in_channels: int, num_classes: int, ds: bool) -> int:
    if net.get("blocks", "plain") == "residual":
        return _residual_unet(net, patch, in_channels, num_classes, ds)
    return activation_elements(net, patch, in_channels, num_classes, ds)


COUNTERS: dict[str, Callable[..., int]] = {
    "UNet": _unet, "ResEncUNet": _residual_unet, "EfficientSegNet": _efficientseg,
    "EfficientSegNetPublished": _efficientseg_published, "SpatialConfigurationNet": _scn,
}


def network_activation_elements(net: dict, patch_size: Sequence[int], in_channels: int = 1, num_classes: int = 2,
                                deep_supervision: bool = True) -> int:
    """Elements autograd saves for one sample; classes without a counter are counted as a plain U-Net."""
    return int(COUNTERS.get(net.get("class"), _unet)(net, patch_size, in_channels, num_classes, deep_supervision))


@lru_cache(maxsize=256)
def _meta_parameters(key: str, in_channels: int, num_classes: int) -> int:
    import torch

    from autoseg.networks import build_network, count_parameters

    with torch.device("meta"):
        return count_parameters(build_network(json.loads(key), in_channels, num_classes, deep_supervision=True))


def network_parameter_count(net: dict, in_channels: int = 1, num_classes: int = 2,
                            deep_supervision: bool = True) -> int:
    """Exact parameter count of the built network (analytical for the plain U-Net)."""
    if net.get("class") == "UNet" and net.get("blocks", "plain") == "plain":
        return parameter_count(net, in_channels, num_classes, deep_supervision)
    return _meta_parameters(json.dumps(net, sort_keys=True), in_channels, num_classes)
