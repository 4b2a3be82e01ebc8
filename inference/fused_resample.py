"""Resample logits back to the crop's original grid and argmax, slab by slab, never whole-volume.

nnU-Net resamples the full (classes × Z × Y × X) logits on the CPU, which takes minutes and many GB
for a big CT. Here network-resolution slabs arrive in z order (from ``iter_sliding_window``); each
row is upsampled in-plane once (bilinear), output rows are linear blends of two such rows, and only
the argmax of a few output rows exists at a time. Separable linear interpolation with PyTorch's
``align_corners=False`` convention is exactly trilinear interpolation, so the result equals
``argmax(interpolate(logits, out_shape, mode="trilinear"))`` without ever holding that tensor.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def linear_source_indices(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each output index: the two input indices and the blend weight (PyTorch half-pixel rule)."""
    scale = n_in / n_out
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * scale - 0.5).clamp_min(0)
    i0 = src.floor().long().clamp_max(n_in - 1)
    i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
    return i0, i1, (src - i0).float()


def channel_argmax(x: torch.Tensor) -> torch.Tensor:
    """argmax over dim 1 of (N, K, ...). On CPU a running max over the few channels is 4-12x faster
    than ``argmax(1)`` (a strided reduction); ties go to the first channel either way."""
    if x.device.type != "cpu":
        return x.argmax(1)
    best = x[:, 0].clone()
    idx = torch.zeros(best.shape, dtype=torch.uint8 if x.shape[1] < 256 else torch.int16)
    for k in range(1, x.shape[1]):
        xk = x[:, k]
        idx.masked_fill_(xk > best, k)
        torch.maximum(best, xk, out=best)
    return idx


class SlabArgmaxResampler:
    """Consume network-resolution logit slabs (K, dz, Yi, Xi) in z order; fill ``out`` (Zo, Yo, Xo)
    with the channel index of the largest resampled logit.

    ``budget_bytes`` bounds the in-flight upsampled rows (a few output rows' worth of all classes).
    ``lut`` maps channel indices to the values written (original label ids).
    ``probabilities`` optionally receives softmax probabilities (K, Zo, Yo, Xo) on any device.
    """

    def __init__(self, in_shape: Sequence[int], out: torch.Tensor, num_classes: int,
                 work_dtype: torch.dtype = torch.float32, budget_bytes: int = 256 << 20,
                 probabilities: torch.Tensor | None = None, lut: torch.Tensor | None = None):
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out = out
        self.out_shape = tuple(out.shape)
        self.k = num_classes
        self.dtype = work_dtype
        self.probs = probabilities
        self.lut = lut
        self.same_plane = self.in_shape[1:] == self.out_shape[1:]
        row_bytes = num_classes * self.out_shape[1] * self.out_shape[2] * torch.finfo(work_dtype).bits // 8
        self.chunk = max(1, int(budget_bytes // max(1, 3 * row_bytes)))
        self.i0, self.i1, self.w = linear_source_indices(self.in_shape[0], self.out_shape[0])
        self.i0_list, self.i1_list = self.i0.tolist(), self.i1.tolist()
        self.i0, self.i1 = self.i0.to(out.device), self.i1.to(out.device)
        self.w_dev = self.w.to(out.device)
        self.rows: torch.Tensor | None = None  # upsampled rows (n, K, Yo, Xo) for global rows [r0, r0+n)
        self.r0 = 0
        self.received = 0
        self.next_out = 0

    def _upsample(self, slab: torch.Tensor) -> torch.Tensor:
        x = slab.permute(1, 0, 2, 3).to(self.dtype)  # (dz, K, Yi, Xi): rows as a batch
        if self.same_plane:
            return x.contiguous()
        if x.device.type == "cpu" and x.dtype != torch.float32:
            return F.interpolate(x.float(), size=self.out_shape[1:], mode="bilinear",
                                 align_corners=False).to(self.dtype)
        return F.interpolate(x, size=self.out_shape[1:], mode="bilinear", align_corners=False)

    def push(self, z0: int, z1: int, slab: torch.Tensor) -> None:
        if z0 != self.received:
            raise ValueError(f"slabs must arrive in order: expected z0={self.received}, got {z0}")
        for a in range(0, z1 - z0, self.chunk):
            b = min(z1 - z0, a + self.chunk)
            self._drop_unneeded()
            up = self._upsample(slab[:, a:b])
            self.rows = up if self.rows is None or len(self.rows) == 0 else torch.cat([self.rows, up])
            self.received = z0 + b
            self._emit()
        if self.received == self.in_shape[0] and self.next_out < self.out_shape[0]:
            raise RuntimeError("resampler finished input without completing output")

    def _drop_unneeded(self) -> None:
        if self.rows is None or self.next_out >= self.out_shape[0]:
            return
        # invariant: the buffer holds rows [r0, received)
        keep_from = min(self.i0_list[self.next_out], self.received)
        if keep_from > self.r0:
            self.rows = self.rows[keep_from - self.r0:]
            self.r0 = keep_from

    def _emit(self) -> None:
        n_out = self.out_shape[0]
        while self.next_out < n_out and self.i1_list[self.next_out] < self.received:
            j0 = self.next_out
            j1 = j0
            while j1 < n_out and j1 - j0 < self.chunk and self.i1_list[j1] < self.received:
                j1 += 1
            a = self.rows[self.i0[j0:j1] - self.r0]
            b = self.rows[self.i1[j0:j1] - self.r0]
            w = self.w_dev[j0:j1].view(-1, 1, 1, 1).to(a.dtype)
            blended = torch.lerp(a, b, w)  # (n, K, Yo, Xo)
            idx = channel_argmax(blended)
            self.out[j0:j1] = self.lut[idx.long()] if self.lut is not None else idx.to(self.out.dtype)
            if self.probs is not None:
                self.probs[:, j0:j1] = torch.softmax(blended.float(), 1).permute(1, 0, 2, 3).to(
                    self.probs.device, self.probs.dtype)
            self.next_out = j1
            self._drop_unneeded()

    @property
    def done(self) -> bool:
        return self.next_out >= self.out_shape[0]
