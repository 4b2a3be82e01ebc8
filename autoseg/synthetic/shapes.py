"""Signed-distance-like shape primitives (mm, negative inside) evaluated on a Region or Points.

The distances are approximations that are accurate near the surface, which is all the renderer
needs: the label is ``sdf < 0`` at each voxel centre and the image uses a soft ramp across the
surface (partial volume). Organs are deformed ellipsoids/superquadrics whose surface is displaced
by a smooth random field, so every case gets a different but anatomically plausible shape.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

from autoseg.synthetic.grid import Frame

INF = 1e6


def rotation(rx_deg: float = 0.0, ry_deg: float = 0.0, rz_deg: float = 0.0) -> np.ndarray:
    """Rotation matrix R = Rz @ Ry @ Rx (columns are the rotated frame's axes)."""
    ax, ay, az = np.deg2rad([rx_deg, ry_deg, rz_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


class SmoothField:
    """A few random plane waves: cheap, seeded, smooth noise defined in continuous space."""

    def __init__(self, rng: np.random.Generator, amplitude: float, wavelength: float, terms: int = 4):
        dirs = rng.normal(size=(terms, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        k = 2 * np.pi / (wavelength * rng.uniform(0.7, 1.4, size=(terms, 1)))
        self.waves = (dirs * k).astype(np.float32)
        self.phase = rng.uniform(0, 2 * np.pi, size=terms).astype(np.float32)
        self.amp = np.float32(amplitude * np.sqrt(2.0 / terms))
        self.amplitude = float(amplitude)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out: np.ndarray | float = 0.0
        for (wx, wy, wz), ph in zip(self.waves, self.phase):
            out = out + np.sin(wx * x + wy * y + wz * z + ph)
        return np.asarray(out, dtype=np.float32) * self.amp


class Shape(ABC):
    """Base class: ``bounds`` is a conservative anatomy-frame box, ``sdf`` the distance-like field."""

    @abstractmethod
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Conservative anatomy-frame box (lo, hi) outside which the shape is empty."""

    @abstractmethod
    def sdf(self, frame: Frame) -> np.ndarray:
        """Approximate signed distance (mm, negative inside), broadcastable to ``frame.shape``."""


def _rotated_box(centre: Sequence[float], half: Sequence[float], rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ext = np.abs(rot) @ np.asarray(half, float)
    c = np.asarray(centre, float)
    return c - ext, c + ext


class Ellipsoid(Shape):
    """Superquadric (exponent 2 = ellipsoid) with a smooth surface displacement and optional bend.

    ``bend`` curves the shape around its local y-z plane (a crescent such as the spleen); ``noise``
    displaces the surface by a fraction of the radius, giving smooth lobulated organ outlines.
    """

    def __init__(self, centre: Sequence[float], axes: Sequence[float], rot: np.ndarray | None = None,
                 noise: SmoothField | None = None, exponent: float = 2.0, bend: float = 0.0):
        self.centre = np.asarray(centre, float)
        self.axes = np.asarray(axes, float)
        self.rot = np.eye(3) if rot is None else np.asarray(rot, float)
        self.noise, self.p, self.bend = noise, float(exponent), float(bend)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        grow = 1.0 + (3.0 * self.noise.amplitude if self.noise is not None else 0.0)
        half = self.axes * grow + abs(self.bend) * self.axes[0] * 2.0
        return _rotated_box(self.centre, half, self.rot)

    def sdf(self, frame: Frame) -> np.ndarray:
        x, y, z = frame.local(self.rot, self.centre)
        a, b, c = (np.float32(v) for v in self.axes)
        if self.bend:
            x = x + np.float32(self.bend) * a * ((y / b) ** 2 + (z / c) ** 2)
        X, Y, Z = x / a, y / b, z / c
        if self.p == 2.0:
            r = np.sqrt(X * X + Y * Y + Z * Z)
        elif self.p == 4.0:  # boxy cut-outs: squares instead of float powers
            r = np.sqrt(np.sqrt((X * X) ** 2 + (Y * Y) ** 2 + (Z * Z) ** 2))
        else:
            p = np.float32(self.p)
            r = (np.abs(X) ** p + np.abs(Y) ** p + np.abs(Z) ** p) ** np.float32(1.0 / self.p)
        grad = np.sqrt((X / a) ** 2 + (Y / b) ** 2 + (Z / c) ** 2) / np.maximum(r, np.float32(1e-6))
        grad = np.maximum(grad, np.float32(1.0 / max(self.axes)))
        surface = 1.0 if self.noise is None else 1.0 + self.noise(X, Y, Z)
        return (r - surface) / grad


class AxisTube(Shape):
    """A tube along anatomy axis ``axis`` (0 = x, 2 = z) whose centre and radii vary along it.

    Used for the aorta/IVC (along z) and the pancreas (along x). Radii are measured perpendicular
    to the centreline; the cross-section in the axis plane is widened by the slope to compensate.
    """

    def __init__(self, axis: int, t: Sequence[float], centre_a: Sequence[float], centre_b: Sequence[float],
                 radius_a: Sequence[float], radius_b: Sequence[float], noise: SmoothField | None = None):
        self.axis = axis
        self.others = (1, 2) if axis == 0 else (0, 1)
        tt = np.asarray(t, float)
        keep = np.concatenate([[True], np.diff(np.maximum.accumulate(tt)) > 1e-3])  # np.interp needs increasing knots
        tt = tt[keep]
        self.t = tt
        ca, cb = np.asarray(centre_a, float)[keep], np.asarray(centre_b, float)[keep]
        ra, rb = np.asarray(radius_a, float)[keep], np.asarray(radius_b, float)[keep]
        self.ca, self.cb = ca, cb
        slope_a, slope_b = np.gradient(ca, tt), np.gradient(cb, tt)
        self.ra = ra * np.sqrt(1 + slope_a ** 2)
        self.rb = rb * np.sqrt(1 + slope_b ** 2)
        self.rperp = np.minimum(ra, rb)
        self.noise = noise

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = np.empty(3), np.empty(3)
        lo[self.axis], hi[self.axis] = self.t[0], self.t[-1]
        grow = 1.0 + (3.0 * self.noise.amplitude if self.noise is not None else 0.0)
        for k, c, r in ((self.others[0], self.ca, self.ra), (self.others[1], self.cb, self.rb)):
            lo[k], hi[k] = (c - r * grow).min(), (c + r * grow).max()
        return lo, hi

    def sdf(self, frame: Frame) -> np.ndarray:
        xyz = frame.local()
        s, a, b = xyz[self.axis], xyz[self.others[0]], xyz[self.others[1]]
        shape = s.shape
        sf = s.ravel()
        ca, cb, ra, rb, rp = (np.interp(sf, self.t, v).astype(np.float32).reshape(shape)
                              for v in (self.ca, self.cb, self.ra, self.rb, self.rperp))
        rho = np.sqrt(((a - ca) / ra) ** 2 + ((b - cb) / rb) ** 2)
        if self.noise is not None:
            rho = rho - self.noise(*xyz)
        f = (rho - 1.0) * rp
        ends = np.maximum(np.float32(self.t[0]) - s, s - np.float32(self.t[-1]))
        return np.maximum(f, ends)


class Capsule(Shape):
    """A straight segment with linearly varying radius: the building block of vessels and bowel."""

    def __init__(self, p0: Sequence[float], p1: Sequence[float], r0: float, r1: float | None = None):
        self.p0, self.p1 = np.asarray(p0, float), np.asarray(p1, float)
        self.r0, self.r1 = float(r0), float(r0 if r1 is None else r1)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        r = max(self.r0, self.r1)
        return np.minimum(self.p0, self.p1) - r, np.maximum(self.p0, self.p1) + r

    def sdf(self, frame: Frame) -> np.ndarray:
        x, y, z = frame.local(None, self.p0)
        d = (self.p1 - self.p0).astype(np.float32)
        dd = float(d @ d) or 1.0
        t = np.clip((x * d[0] + y * d[1] + z * d[2]) / np.float32(dd), 0.0, 1.0)
        dist = np.sqrt((x - t * d[0]) ** 2 + (y - t * d[1]) ** 2 + (z - t * d[2]) ** 2)
        return dist - (np.float32(self.r0) + t * np.float32(self.r1 - self.r0))


def polyline(points: Sequence[Sequence[float]], radii: Sequence[float] | float) -> list[Capsule]:
    """A tube through ``points`` as consecutive capsules (painted one after the other).

    Long segments are split into pieces about three radii long: a diagonal segment's bounding box
    grows with the cube of its length, short pieces keep the evaluated volume close to the tube's.
    """
    pts = np.asarray(points, float)
    r = np.broadcast_to(np.asarray(radii, float), (len(pts),))
    out = []
    for i in range(len(pts) - 1):
        n = max(1, int(np.ceil(np.linalg.norm(pts[i + 1] - pts[i]) / (3.0 * max(r[i], r[i + 1], 1e-3)))))
        for k in range(n):
            a, b = k / n, (k + 1) / n
            out.append(Capsule(pts[i] + a * (pts[i + 1] - pts[i]), pts[i] + b * (pts[i + 1] - pts[i]),
                               r[i] + a * (r[i + 1] - r[i]), r[i] + b * (r[i + 1] - r[i])))
    return out


class Intersect(Shape):
    def __init__(self, *shapes: Shape):
        self.shapes = shapes

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        b = [s.bounds() for s in self.shapes]
        return np.max([lo for lo, _ in b], axis=0), np.min([hi for _, hi in b], axis=0)

    def sdf(self, frame: Frame) -> np.ndarray:
        out = self.shapes[0].sdf(frame)
        for s in self.shapes[1:]:
            out = np.maximum(out, s.sdf(frame))
        return out


class Union(Shape):
    """Smooth union (polynomial smooth-min with blend width ``k`` mm) so lobes merge organically."""

    def __init__(self, *shapes: Shape, k: float = 0.0):
        self.shapes, self.k = shapes, float(k)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        b = [s.bounds() for s in self.shapes]
        return np.min([lo for lo, _ in b], axis=0), np.max([hi for _, hi in b], axis=0)

    def sdf(self, frame: Frame) -> np.ndarray:
        out = self.shapes[0].sdf(frame)
        for s in self.shapes[1:]:
            f = s.sdf(frame)
            if self.k <= 0:
                out = np.minimum(out, f)
            else:
                k = np.float32(self.k)
                h = np.clip(0.5 + 0.5 * (f - out) / k, 0.0, 1.0)
                out = f * (1 - h) + out * h - k * h * (1 - h)
        return out


class Subtract(Shape):
    def __init__(self, shape: Shape, *cut: Shape):
        self.shape, self.cut = shape, cut

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.shape.bounds()

    def sdf(self, frame: Frame) -> np.ndarray:
        out = self.shape.sdf(frame)
        for c in self.cut:
            out = np.maximum(out, -c.sdf(frame))
        return out


class Offset(Shape):
    """Grow (d > 0) or shrink a shape by d mm: capsules of fat around organs, vessel walls."""

    def __init__(self, shape: Shape, d: float):
        self.shape, self.d = shape, float(d)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.shape.bounds()
        return lo - max(self.d, 0.0), hi + max(self.d, 0.0)

    def sdf(self, frame: Frame) -> np.ndarray:
        return self.shape.sdf(frame) - np.float32(self.d)


class Dome:
    """Diaphragm height z(x, y): the upper envelope of a right and a left paraboloid dome."""

    def __init__(self, right: Sequence[float], left: Sequence[float]):
        # each: (x_apex, y_apex, z_apex, half_width_x, half_width_y, drop_mm)
        self.right, self.left = np.asarray(right, float), np.asarray(left, float)

    def height(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = None
        for xa, ya, za, wx, wy, drop in (self.right, self.left):
            h = np.float32(za) - np.float32(drop) * (((x - np.float32(xa)) / np.float32(wx)) ** 2
                                                    + ((y - np.float32(ya)) / np.float32(wy)) ** 2)
            out = h if out is None else np.maximum(out, h)
        return out

    def below(self, frame: Frame, slab_voxels: int = 1 << 20) -> np.ndarray:
        """z - height(x, y): negative below the diaphragm. On a voxel grid it is computed once for the
        whole volume and sliced, since many shapes (bowel, liver, spleen, lungs) are clipped by it."""
        grid = getattr(frame, "grid", None)
        if grid is None:
            x, y, z = frame.local()
            return z - self.height(x, y)
        key = f"dome{id(self)}"
        if key not in grid.fields:
            field = np.empty(grid.shape, np.float16)  # 0.25 mm steps at +-400 mm: ample, half the memory
            nz, ny, nx = grid.shape
            step = max(1, slab_voxels // (ny * nx))
            for k0 in range(0, nz, step):
                box = (slice(k0, min(nz, k0 + step)), slice(0, ny), slice(0, nx))
                x, y, z = grid.region(box).local()
                field[box] = z - self.height(x, y)
            grid.fields[key] = field
        return grid.fields[key][frame.box].astype(np.float32)

    @property
    def top(self) -> float:
        return float(max(self.right[2], self.left[2]))

    def lowest(self, half_width: float, half_depth: float) -> float:
        """Lowest diaphragm height inside a (2 half_width x 2 half_depth) box: bounds for the lungs."""
        x, y = np.meshgrid(np.linspace(-half_width, half_width, 33), np.linspace(-half_depth, half_depth, 33))
        return float(self.height(x.astype(np.float32), y.astype(np.float32)).min())


class BelowDome(Shape):
    """Everything below the diaphragm minus ``gap`` (abdomen); ``above=True`` for the chest side.

    ``floor`` is the lowest the diaphragm gets inside the body (bounds only)."""

    def __init__(self, dome: Dome, gap: float = 0.0, above: bool = False, floor: float | None = None):
        self.dome, self.gap, self.above = dome, float(gap), above
        self.floor = self.dome.top - 400.0 if floor is None else float(floor)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        if self.above:
            return np.array([-INF, -INF, self.floor]), np.array([INF, INF, INF])
        return np.array([-INF, -INF, -INF]), np.array([INF, INF, self.dome.top])

    def sdf(self, frame: Frame) -> np.ndarray:
        below = self.dome.below(frame)
        return np.float32(self.gap) - below if self.above else below + np.float32(self.gap)


class Slab(Shape):
    """|dist to the diaphragm| < half thickness: the diaphragm muscle sheet."""

    def __init__(self, dome: Dome, half_thickness: float, floor: float | None = None):
        self.dome, self.half = dome, float(half_thickness)
        self.floor = self.dome.top - 400.0 if floor is None else float(floor)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array([-INF, -INF, self.floor - self.half]), np.array([INF, INF, self.dome.top + self.half])

    def sdf(self, frame: Frame) -> np.ndarray:
        return np.abs(self.dome.below(frame)) - np.float32(self.half)
