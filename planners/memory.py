"""Training-memory estimate of a plain U-Net from its plans topology, for fitting patch and batch
to a GPU budget without touching a GPU.

The count follows what autograd keeps for the backward pass in our U-Net (autoseg.networks): each
conv-InstanceNorm-LeakyReLU unit saves the conv output (for the norm) and the in-place activation
output (for the activation and the next conv); each decoder level also saves its concatenation;
the loss keeps a few tensors per class per deep-supervision output. Bytes per element follow the
precision (2 under AMP). A fitted factor covers what the count leaves out (gradient buffers alive
during backward, cuDNN workspaces, allocator rounding); ``benchmarks/bench_network_memory.py``
measures it against ``torch.cuda.max_memory_allocated`` and checks the count against autograd's
saved tensors on the CPU.
"""
from __future__ import annotations

from collections.abc import Sequence
from math import prod

# Measured / analytical activation ratio, fitted on an H100 (torch 2.11, AMP fp16, SGD, deep supervision,
# Dice+CE): 1.12-1.17 for 32-320 U-Nets at 128^3 / 80x160x160 / 40x256x256 / 96x128^2, 1.23 for the
# 16-256 ROI net at 128^3 (benchmarks/bench_network_memory.py). 1.25 keeps every measured config
# under its estimate (estimate / measured = 1.0-1.1). On the CPU the analytical count is 90-96% of
# the bytes autograd actually saves. The H100 figures are unverified: no results file in benchmarks/
# records that run (rerun benchmarks/bench_network_memory.py on a GPU to check them).
OVERHEAD_FACTOR = 1.25
# fp32 weights + grads + optimizer state (SGD momentum 4 B, Adam 8 B: take the larger).
BYTES_PER_PARAM = 16
LOSS_TENSORS_PER_CLASS = 4
GIB = 1 << 30


def stage_sizes(patch_size: Sequence[int], strides: Sequence[Sequence[int]]) -> list[list[int]]:
    """Feature-map size (z, y, x) of each encoder stage."""
    size = [int(p) for p in patch_size]
    out = []
    for s in strides:
        size = [max(1, a // b) for a, b in zip(size, s)]
        out.append(list(size))
    return out


def _convs(net: dict, i: int) -> int:
    c = net.get("convs_per_stage", 2)
    return int(c[i] if isinstance(c, list) else c)


def activation_elements(net: dict, patch_size: Sequence[int], in_channels: int = 1, num_classes: int = 2,
                        deep_supervision: bool = True) -> int:
    """Elements autograd saves for one sample of a training step of the plain U-Net ``net``."""
    feats = net["features"]
    sizes = [prod(s) for s in stage_sizes(patch_size, net["strides"])]
    total = in_channels * prod(patch_size)
    for i, (f, n) in enumerate(zip(feats, sizes)):
        total += _convs(net, i) * 2 * f * n  # encoder: conv out + act out per unit
    n_stages = len(feats)
    ds_levels = int(net.get("deep_supervision_levels", max(1, n_stages - 1))) if deep_supervision else 1
    for lvl in range(n_stages - 2, -1, -1):
        f, n = feats[lvl], sizes[lvl]
        total += 2 * f * n  # concatenation (input of the first decoder conv)
        total += _convs(net, lvl) * 2 * f * n
        if lvl < ds_levels:
            total += LOSS_TENSORS_PER_CLASS * num_classes * n  # logits, softmax, one-hot / log-probs
    return int(total)


def parameter_count(net: dict, in_channels: int = 1, num_classes: int = 2, deep_supervision: bool = True) -> int:
    """Parameters of the plain U-Net (convs without bias + InstanceNorm affine + transposed convs + heads)."""
    feats, kernels, strides = net["features"], net["kernel_sizes"], net["strides"]
    total, cin = 0, in_channels
    for i, f in enumerate(feats):
        k = prod(kernels[i])
        total += (cin * f * k + 2 * f) + (_convs(net, i) - 1) * (f * f * k + 2 * f)
        cin = f
    n_stages = len(feats)
    ds_levels = int(net.get("deep_supervision_levels", max(1, n_stages - 1))) if deep_supervision else 1
    for lvl in range(n_stages - 2, -1, -1):
        f, k = feats[lvl], prod(kernels[lvl])
        total += feats[lvl + 1] * f * prod(strides[lvl + 1])  # transposed conv
        total += (2 * f * f * k + 2 * f) + (_convs(net, lvl) - 1) * (f * f * k + 2 * f)
        if lvl < ds_levels:
            total += f * num_classes + num_classes
    return int(total)


def estimate_training_bytes(net: dict, patch_size: Sequence[int], batch_size: int, in_channels: int = 1,
                            num_classes: int = 2, deep_supervision: bool = True, amp: bool = True,
                            overhead: float = OVERHEAD_FACTOR) -> int:
    """Peak training memory (bytes) of one step: activations x precision x batch x overhead + the
    weights, gradients and optimizer state; counted per network class (``planners.network_memory``)."""
    from autoseg.planners.network_memory import network_activation_elements, network_parameter_count

    act = network_activation_elements(net, patch_size, in_channels, num_classes, deep_supervision)
    elem_bytes = 2 if amp else 4
    params = network_parameter_count(net, in_channels, num_classes, deep_supervision)
    return int(overhead * act * elem_bytes * batch_size + BYTES_PER_PARAM * params)


def estimate_training_gb(*args, **kwargs) -> float:
    """:func:`estimate_training_bytes` in GiB."""
    return estimate_training_bytes(*args, **kwargs) / GIB
