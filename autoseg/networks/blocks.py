"""Building blocks shared by the networks: conv-norm-act, residual and anisotropic blocks, context gate.

All blocks use InstanceNorm3d(affine=True) + LeakyReLU(0.01) (nnU-Net's defaults, robust to batch size
2) and contain no data-dependent Python control flow, so they trace under torch.compile and run under
torch.autocast and channels_last_3d.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

Triple = tuple[int, int, int]


def triple(v: int | Sequence[int]) -> Triple:
    if isinstance(v, int):
        return (v, v, v)
    a, b, c = (int(x) for x in v)
    return (a, b, c)


def same_padding(kernel: Triple) -> Triple:
    """Padding that keeps the size for odd kernels (and gives size/stride when stride > 1)."""
    return tuple(k // 2 if k % 2 else 0 for k in kernel)  # type: ignore[return-value]


def conv3d(cin: int, cout: int, kernel: Sequence[int] | int, stride: Sequence[int] | int = 1,
           bias: bool = False) -> nn.Conv3d:
    """A 3-D conv with 'same' padding. Bias is off by default: InstanceNorm follows and would cancel it."""
    k = triple(kernel)
    return nn.Conv3d(cin, cout, k, triple(stride), same_padding(k), bias=bias)


def norm(channels: int) -> nn.Module:
    return nn.InstanceNorm3d(channels, eps=1e-5, affine=True)


def act() -> nn.Module:
    return nn.LeakyReLU(0.01, inplace=True)


class ConvNormAct(nn.Sequential):
    """conv -> InstanceNorm -> LeakyReLU: the unit of the plain U-Net."""

    def __init__(self, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int] = (1, 1, 1)):
        super().__init__(conv3d(cin, cout, kernel, stride), norm(cout), act())


class PlainStage(nn.Sequential):
    """n conv-norm-act units; the first carries the stage's stride (nnU-Net encoder/decoder stage)."""

    def __init__(self, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int], n_convs: int):
        layers = [ConvNormAct(cin, cout, kernel, stride)]
        layers += [ConvNormAct(cout, cout, kernel) for _ in range(n_convs - 1)]
        super().__init__(*layers)


class Projection(nn.Sequential):
    """1x1x1 strided conv + norm: matches the shortcut to a block's output when shape or width changes."""

    def __init__(self, cin: int, cout: int, stride: Sequence[int]):
        super().__init__(nn.Conv3d(cin, cout, 1, triple(stride), bias=False), norm(cout))


def shortcut(cin: int, cout: int, stride: Sequence[int]) -> nn.Module:
    return Projection(cin, cout, stride) if cin != cout or any(s != 1 for s in stride) else nn.Identity()


class ResidualBlock(nn.Module):
    """Basic residual block: conv-norm-act, conv-norm, add shortcut, act (strided first conv)."""

    def __init__(self, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int] = (1, 1, 1)):
        super().__init__()
        self.conv1 = ConvNormAct(cin, cout, kernel, stride)
        self.conv2 = conv3d(cout, cout, kernel)
        self.norm2 = norm(cout)
        self.skip = shortcut(cin, cout, stride)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm2(self.conv2(self.conv1(x))) + self.skip(x))


class ResidualStage(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int], n_blocks: int):
        blocks = [ResidualBlock(cin, cout, kernel, stride)]
        blocks += [ResidualBlock(cout, cout, kernel) for _ in range(n_blocks - 1)]
        super().__init__(*blocks)


def through_plane_kernel(kz: int, sz: int) -> int:
    """z kernel of the through-plane conv: kz, or stride-sized when kz is 1 but the stage still
    downsamples z (so no slice is skipped)."""
    return kz if kz > 1 or sz == 1 else sz


class AnisotropicBlock(nn.Module):
    """EfficientSegNet anisotropic conv block, residual: in-plane (1,ky,kx) then through-plane (kz,1,1).

    Splitting a 3x3x3 conv this way costs ~12/27 of the FLOPs and suits thick-slice CT. Where the plans
    say kz == 1 (a very anisotropic stage) the through-plane conv degenerates to a 1x1x1 channel mix.
    The stride is split the same way: (1,sy,sx) in-plane, (sz,1,1) through-plane.
    """

    def __init__(self, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int] = (1, 1, 1),
                 residual: bool = True):
        super().__init__()
        kz, ky, kx = triple(kernel)
        sz, sy, sx = triple(stride)
        self.inplane = ConvNormAct(cin, cout, (1, ky, kx), (1, sy, sx))
        self.through = conv3d(cout, cout, (through_plane_kernel(kz, sz), 1, 1), (sz, 1, 1))
        self.norm = norm(cout)
        self.skip = shortcut(cin, cout, (sz, sy, sx)) if residual else None
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.through(self.inplane(x)))
        if self.skip is not None:
            y = y + self.skip(x)
        return self.act(y)


class AnisotropicStage(nn.Sequential):
    """n anisotropic blocks; ``stem`` makes the first one plain (a shortcut from the raw 1-channel
    image is a wasted full-resolution conv + norm)."""

    def __init__(self, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int], n_blocks: int,
                 stem: bool = False):
        blocks = [AnisotropicBlock(cin, cout, kernel, stride, residual=not stem)]
        blocks += [AnisotropicBlock(cout, cout, kernel) for _ in range(n_blocks - 1)]
        super().__init__(*blocks)


class StripPoolingContext(nn.Module):
    """Anisotropic strip-pooling context gate (EfficientSegNet's context block).

    Averages the feature map into three strips (along z, y and x, each pooled over the other two axes),
    runs a 1-D conv along each strip, broadcast-adds them into a full-size map, and gates the input
    with its sigmoid. Gives every voxel whole-volume context along each axis at almost no cost; no
    normalisation in the strips because a strip may hold a single element.
    """

    def __init__(self, channels: int, kernel: Sequence[int] = (3, 3, 3), reduction: int = 4):
        super().__init__()
        mid = max(8, channels // reduction)
        kz, ky, kx = triple(kernel)
        self.reduce = nn.Conv3d(channels, mid, 1, bias=False)
        self.conv_z = conv3d(mid, mid, (max(kz, 3), 1, 1), bias=True)
        self.conv_y = conv3d(mid, mid, (1, max(ky, 3), 1), bias=True)
        self.conv_x = conv3d(mid, mid, (1, 1, max(kx, 3)), bias=True)
        self.act = act()
        self.expand = nn.Conv3d(mid, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.reduce(x)
        z = self.conv_z(r.mean(dim=(3, 4), keepdim=True))  # (N, mid, Z, 1, 1)
        y = self.conv_y(r.mean(dim=(2, 4), keepdim=True))  # (N, mid, 1, Y, 1)
        w = self.conv_x(r.mean(dim=(2, 3), keepdim=True))  # (N, mid, 1, 1, X)
        gate = torch.sigmoid(self.expand(self.act(z + y + w)))
        return x * gate


class SegHead(nn.Conv3d):
    """1x1x1 conv to class logits (bias on: no norm follows)."""

    def __init__(self, cin: int, num_classes: int):
        super().__init__(cin, num_classes, 1, bias=True)


def upsample(cin: int, cout: int, stride: Sequence[int]) -> nn.ConvTranspose3d:
    """Transposed conv with kernel == stride: exact, non-overlapping upsampling by the stage's stride."""
    s = triple(stride)
    return nn.ConvTranspose3d(cin, cout, s, s, bias=False)


def init_weights(module: nn.Module) -> None:
    """He-normal init (a=1e-2, matching LeakyReLU's slope) on convs; zero biases. Use with net.apply."""
    if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
