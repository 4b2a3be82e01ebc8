"""Sliding-window prediction with Gaussian importance weighting, several windows per forward pass.

Windows are visited in z order and the accumulator only spans the z range that unfinished windows can
still touch, so ``iter_sliding_window`` hands out finished z slabs as soon as they are final: a caller
that resamples and argmaxes slab by slab never holds the logits of a whole volume (a 1000-slice CT on
CPU fits in a few GB). ``predict_sliding_window`` is the whole-volume convenience used by validation.

Given a ``mask`` (the body, or a region a localiser found), windows holding no mask voxel are not
computed: every mask voxel still gets exactly the windows (and weights) it would get without the mask,
and voxels no computed window covers get ``BACKGROUND_LOGIT`` for class 0 and 0 for the others.
"""
from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F


def compute_steps(image_size: Sequence[int], patch_size: Sequence[int], step_size: float) -> list[list[int]]:
    """Window starts per axis: evenly spread, neighbours at most ``step_size * patch`` apart, last flush."""
    steps = []
    for size, patch in zip(image_size, patch_size):
        if size <= patch:
            steps.append([0])
            continue
        n = int(math.ceil((size - patch) / (patch * step_size))) + 1
        span = size - patch
        steps.append([int(round(i * span / (n - 1))) for i in range(n)])
    return steps


@lru_cache(maxsize=8)
def _gaussian_cpu(patch_size: tuple[int, int, int], sigma_scale: float) -> torch.Tensor:
    axes = []
    for p in patch_size:
        c = (p - 1) / 2.0
        x = torch.arange(p, dtype=torch.float64)
        axes.append(torch.exp(-((x - c) ** 2) / (2 * (p * sigma_scale) ** 2)))
    g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    g = g / g.max()
    # The corners of a window are still the only cover of an image corner: never weight them to zero
    # (and stay well above fp16's smallest normal number).
    return g.clamp_min(1e-3).float()


_GAUSS_DEVICE_CACHE: dict[tuple, torch.Tensor] = {}


def gaussian_importance_map(patch_size: Sequence[int], device: torch.device | str = "cpu",
                            sigma_scale: float = 1.0 / 8) -> torch.Tensor:
    """Separable Gaussian (max 1) that trusts window centres over borders; cached per size and device."""
    key = (tuple(int(p) for p in patch_size), str(device), sigma_scale)
    if key not in _GAUSS_DEVICE_CACHE:
        if len(_GAUSS_DEVICE_CACHE) > 16:
            _GAUSS_DEVICE_CACHE.clear()
        _GAUSS_DEVICE_CACHE[key] = _gaussian_cpu(key[0], sigma_scale).to(device)
    return _GAUSS_DEVICE_CACHE[key]


def autocast_dtype(device: torch.device, amp: bool | None) -> torch.dtype | None:
    """The dtype networks run in: fp16 on CUDA, bf16 on CPU, None without autocast (``amp=None``: CUDA only)."""
    if amp is None:
        amp = device.type == "cuda"
    if not amp:
        return None
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def _forward(network: torch.nn.Module, x: torch.Tensor, mirror_axes: Sequence[int] | None,
             amp_dtype: torch.dtype | None) -> torch.Tensor:
    """Logits (float32) of a batch, averaged over every combination of the mirrored spatial axes."""
    dev = x.device.type
    with torch.autocast(dev, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        combos: list[tuple[int, ...]] = [()]
        if mirror_axes:
            axes = [int(a) + 2 for a in mirror_axes]
            combos = [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]
        out = None
        for flip in combos:
            y = network(torch.flip(x, flip) if flip else x)
            if isinstance(y, (list, tuple)):
                y = y[0]
            y = (torch.flip(y, flip) if flip else y).float()
            out = y if out is None else out.add_(y)
    return out / len(combos) if len(combos) > 1 else out


BACKGROUND_LOGIT = 10.0  # class 0's logit where no window was computed (softmax ~1 for background)


def _accumulate(acc: torch.Tensor, wsum: torch.Tensor, starts: list[tuple[int, int, int]], logits: torch.Tensor,
                weight: torch.Tensor | None, patch: Sequence[int], count: bool = False) -> None:
    """Add each window's (weighted) logits at its start (z relative to the buffer) into ``acc``;
    ``count``: unweighted windows still mark ``wsum`` (what was covered, when windows were skipped)."""
    for (z, y, x), lg in zip(starts, logits):
        sl = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
        if weight is None:
            acc[(slice(None), *sl)].add_(lg)
            if count:
                wsum[sl] += 1
        else:  # in place, no temporaries: 4.7x the speed of ``+= lg * weight`` on a CPU (RESULTS_equal_work)
            acc[(slice(None), *sl)].addcmul_(lg, weight)
            wsum[sl] += weight


def iter_sliding_window(network: torch.nn.Module, image: torch.Tensor, patch_size: Sequence[int],
                        num_classes: int, step_size: float = 0.5, windows_per_batch: int = 4,
                        gaussian: bool | torch.Tensor = True, mirror_axes: Sequence[int] | None = None,
                        amp: bool | None = None, out_dtype: torch.dtype = torch.float32,
                        accumulate_device: torch.device | None = None, mask: torch.Tensor | None = None,
                        stats: dict | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(z0, z1, logits[:, z0:z1])`` slabs of the image in order, each final when yielded.

    ``image`` is (C, Z, Y, X) on the network's device; images smaller than the patch are padded with 0
    (the normalised mean) and the padding is cropped from the slabs. ``accumulate_device`` (default:
    the image's) holds the rolling accumulator: the CPU when device memory ran out. ``mask`` (Z, Y, X,
    any dtype, nonzero = needed): windows without a mask voxel are skipped. ``stats`` (a dict) gets
    ``computed`` and ``skipped`` window counts added.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (C, Z, Y, X), got shape {tuple(image.shape)}")
    patch = [int(p) for p in patch_size]
    shape = list(image.shape[1:])
    pad = [max(0, p - s) for p, s in zip(patch, shape)]
    lo = [p // 2 for p in pad]
    if any(pad):
        image = F.pad(image, (lo[2], pad[2] - lo[2], lo[1], pad[1] - lo[1], lo[0], pad[0] - lo[0]))
    padded = list(image.shape[1:])
    amp_dtype = autocast_dtype(image.device, amp)
    device = accumulate_device or image.device
    steps = compute_steps(padded, patch, step_size)
    windows = list(itertools.product(*steps))  # z-major: z starts are non-decreasing
    single = all(len(s) == 1 for s in steps)
    n_all = len(windows)
    if mask is not None:
        if list(mask.shape) != shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} differs from the image's {tuple(shape)}")
        windows = windows_in_mask(windows, mask, lo, patch)
    skipped = n_all - len(windows)
    if stats is not None:
        stats["computed"] = stats.get("computed", 0) + len(windows)
        stats["skipped"] = stats.get("skipped", 0) + skipped
    if isinstance(gaussian, torch.Tensor):  # the caller's own importance map (an imported nnU-Net model's)
        weight = None if single else gaussian.to(device)
    else:
        weight = gaussian_importance_map(patch, device) if gaussian and not single else None
    acc_dtype = torch.float32 if out_dtype == torch.float32 or device.type == "cpu" else out_dtype

    buf0 = 0  # global padded z index of acc[:, 0]
    acc = torch.zeros((num_classes, 0, padded[1], padded[2]), dtype=acc_dtype, device=device)
    wsum = torch.zeros((0, padded[1], padded[2]), dtype=torch.float32, device=device)

    def grow(z_top: int) -> None:
        """Extend the rolling buffer to cover padded z up to ``z_top``."""
        nonlocal acc, wsum
        more = z_top - buf0 - acc.shape[1]
        if more > 0:
            acc = torch.cat([acc, acc.new_zeros((num_classes, more, padded[1], padded[2]))], 1)
            wsum = torch.cat([wsum, wsum.new_zeros((more, padded[1], padded[2]))], 0)

    def emit(z_end: int) -> Iterator[tuple[int, int, torch.Tensor]]:
        nonlocal acc, wsum, buf0
        n = z_end - buf0
        if n <= 0:
            return
        grow(z_end)  # a gap of skipped windows has no rows yet
        slab = acc[:, :n]
        if weight is not None:
            slab = slab / wsum[:n].clamp_min(1e-8).to(acc_dtype)
        if skipped:
            uncovered = wsum[:n] == 0
            if bool(uncovered.any()):
                slab[0].masked_fill_(uncovered, BACKGROUND_LOGIT)  # a view of rows about to be dropped
        # crop padding: global padded z -> image z
        a, b = max(buf0, lo[0]), min(z_end, lo[0] + shape[0])
        if b > a:
            out = slab[:, a - buf0:b - buf0, lo[1]:lo[1] + shape[1], lo[2]:lo[2] + shape[2]]
            yield a - lo[0], b - lo[0], out.to(out_dtype).contiguous()
        acc, wsum, buf0 = acc[:, n:], wsum[n:], z_end

    for i in range(0, len(windows), max(1, windows_per_batch)):
        batch = windows[i:i + windows_per_batch]
        grow(max(z for z, _, _ in batch) + patch[0])  # the rolling buffer covers this batch
        x = torch.stack([image[:, z:z + patch[0], y:y + patch[1], xx:xx + patch[2]] for z, y, xx in batch])
        logits = _forward(network, x, mirror_axes, amp_dtype).to(device)
        del x
        if logits.shape[1] != num_classes:
            raise ValueError(f"network returned {logits.shape[1]} channels, expected {num_classes}")
        _accumulate(acc, wsum, [(z - buf0, y, xx) for z, y, xx in batch], logits, weight, patch, bool(skipped))
        del logits  # not alive during the next forward pass (nor is a view of an outgrown buffer)
        next_z = windows[i + len(batch)][0] if i + len(batch) < len(windows) else padded[0]
        yield from emit(next_z)
    if not windows:  # every window skipped: all background
        yield from emit(padded[0])


def windows_in_mask(windows: list[tuple[int, int, int]], mask: torch.Tensor, offset: Sequence[int],
                    patch: Sequence[int]) -> list[tuple[int, int, int]]:
    """The windows (padded-image starts) that hold at least one nonzero voxel of ``mask`` (unpadded,
    ``offset`` = the padding before it); one batched device check per z row of windows."""
    if mask.ndim != 3:
        raise ValueError(f"mask must be (Z, Y, X), got shape {tuple(mask.shape)}")
    m = mask != 0
    keep = []
    for z, rows in itertools.groupby(windows, key=lambda w: w[0]):
        rows = list(rows)
        a, b = max(0, z - offset[0]), max(0, z + patch[0] - offset[0])
        plane = m[a:b].any(0)  # (Y, X): is any voxel of this z range in the mask
        hits = torch.stack([plane[max(0, y - offset[1]):max(0, y + patch[1] - offset[1]),
                                  max(0, x - offset[2]):max(0, x + patch[2] - offset[2])].any()
                            for _, y, x in rows]).tolist() if plane.numel() else [False] * len(rows)
        keep += [w for w, h in zip(rows, hits) if h]
    return keep


def predict_sliding_window(network: torch.nn.Module, image: torch.Tensor, patch_size: Sequence[int],
                           num_classes: int, step_size: float = 0.5, windows_per_batch: int = 4,
                           gaussian: bool = True, mirror_axes: Sequence[int] | None = None,
                           amp: bool | None = None, out_dtype: torch.dtype = torch.float32,
                           mask: torch.Tensor | None = None, stats: dict | None = None) -> torch.Tensor:
    """Logits (num_classes, Z, Y, X) of a (C, Z, Y, X) image, on the image's device.

    ``amp=None`` means fp16 autocast on CUDA and full precision elsewhere; ``mask`` and ``stats`` as
    in ``iter_sliding_window``.
    """
    out = torch.empty((num_classes, *image.shape[1:]), dtype=out_dtype, device=image.device)
    with torch.inference_mode():
        for z0, z1, slab in iter_sliding_window(network, image, patch_size, num_classes, step_size,
                                                windows_per_batch, gaussian, mirror_axes, amp, out_dtype,
                                                mask=mask, stats=stats):
            out[:, z0:z1] = slab
    return out
