"""Voxel grid <-> anatomy frame, and the canvas that rasterises shapes on their bounding boxes only.

Anatomy is defined in a patient frame in millimetres (LPS axes: +x patient left, +y posterior,
+z superior; origin at the body centre). The voxel grid has its own ITK direction, spacing and
origin, so an index is mapped to the anatomy frame by one affine. Every shape is evaluated at the
physical position of each voxel centre, which is what makes a flipped or oblique grid show the same
abdomen in physical space without any array flipping afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

Box = tuple[slice, slice, slice]  # array (z, y, x) slices


class Frame(Protocol):
    """Where a shape is evaluated: a box of voxels or a set of points."""

    shape: tuple[int, ...]

    def local(self, rot: np.ndarray | None = None, centre: Sequence[float] | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


class Grid:
    """Index (i, j, k) = (x, y, z) array position -> anatomy frame: q = M @ idx + t."""

    def __init__(self, shape_zyx: Sequence[int], spacing_zyx: Sequence[float], direction: np.ndarray,
                 origin: Sequence[float], anatomy_centre: Sequence[float], anatomy_rot: np.ndarray):
        self.shape = tuple(int(v) for v in shape_zyx)
        spacing_xyz = np.asarray(spacing_zyx, dtype=np.float64)[::-1]
        rot_t = np.asarray(anatomy_rot, dtype=np.float64).T
        self.M = rot_t @ np.asarray(direction, dtype=np.float64) @ np.diag(spacing_xyz)
        self.t = rot_t @ (np.asarray(origin, dtype=np.float64) - np.asarray(anatomy_centre, dtype=np.float64))
        self.Minv = np.linalg.inv(self.M)
        self.fields: dict[str, np.ndarray] = {}  # full-volume fields computed once (e.g. the body cavity)
        nz, ny, nx = self.shape
        corners = np.array([[i, j, k] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)], float)
        q = corners @ self.M.T + self.t
        self.lo, self.hi = q.min(0), q.max(0)

    def box_of(self, lo: np.ndarray, hi: np.ndarray) -> Box | None:
        """Array slices covering the anatomy-frame box [lo, hi] (clipped to the grid), None if empty."""
        lo = np.maximum(np.asarray(lo, float), self.lo - 1.0)
        hi = np.minimum(np.asarray(hi, float), self.hi + 1.0)
        if np.any(lo > hi):
            return None
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        idx = (corners - self.t) @ self.Minv.T
        i0 = np.maximum(np.floor(idx.min(0)).astype(int), 0)
        i1 = np.minimum(np.ceil(idx.max(0)).astype(int) + 1, self.shape[::-1])
        if np.any(i1 <= i0):
            return None
        return slice(i0[2], i1[2]), slice(i0[1], i1[1]), slice(i0[0], i1[0])

    def region(self, box: Box) -> "Region":
        return Region(self, box)


class Region:
    """A box of voxels; ``local`` gives coordinates in any shape's own frame as broadcastable arrays."""

    def __init__(self, grid: Grid, box: Box):
        self.grid, self.box = grid, box
        self.shape = tuple(s.stop - s.start for s in box)
        kz, jy, ix = box
        self._idx = (np.arange(ix.start, ix.stop, dtype=np.float64).reshape(1, 1, -1),
                     np.arange(jy.start, jy.stop, dtype=np.float64).reshape(1, -1, 1),
                     np.arange(kz.start, kz.stop, dtype=np.float64).reshape(-1, 1, 1))
        self._anatomy: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def local(self, rot: np.ndarray | None = None, centre: Sequence[float] | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coordinates (mm) in the frame ``rot.T @ (q - centre)``; axis-aligned frames stay low-dimensional."""
        if rot is None and centre is None:
            if self._anatomy is None:
                self._anatomy = self._affine(self.grid.M, self.grid.t)
            return self._anatomy
        rot_t = np.eye(3) if rot is None else np.asarray(rot, float).T
        c = np.zeros(3) if centre is None else np.asarray(centre, float)
        return self._affine(rot_t @ self.grid.M, rot_t @ (self.grid.t - c))

    def _affine(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = []
        for r in range(3):
            terms = [(a[r, axis] * self._idx[axis]) for axis in range(3) if abs(a[r, axis]) > 1e-9]
            if not terms:
                out.append(np.full((1, 1, 1), b[r], np.float32))
                continue
            terms.sort(key=np.size)  # the offset goes on the smallest (1-D) term: one fewer 3-D pass
            acc = (terms[0] + b[r]).astype(np.float32)
            for term in terms[1:]:
                acc = acc + term.astype(np.float32)
            out.append(acc)
        return out[0], out[1], out[2]


class Subset:
    """The voxels of a Region selected by a mask, as flat arrays: HU textures are evaluated only
    where a shape actually paints, not on its whole bounding box."""

    def __init__(self, region: Region, mask: np.ndarray):
        self.region, self.mask = region, mask
        self.shape = (int(mask.sum()),)

    def local(self, rot: np.ndarray | None = None, centre: Sequence[float] | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(np.broadcast_to(c, self.region.shape)[self.mask]
                     for c in self.region.local(rot, centre))  # type: ignore[return-value]


class Points:
    """Shape evaluation at arbitrary anatomy-frame points (used to place tumours inside the liver)."""

    def __init__(self, points: np.ndarray):
        self.points = np.atleast_2d(np.asarray(points, dtype=np.float64))
        self.shape = (len(self.points),)

    def local(self, rot: np.ndarray | None = None, centre: Sequence[float] | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        q = self.points - (np.zeros(3) if centre is None else np.asarray(centre, float))
        if rot is not None:
            q = q @ np.asarray(rot, float)
        q = q.astype(np.float32)
        return q[:, 0], q[:, 1], q[:, 2]


HU = float | Callable[[Frame, np.ndarray], np.ndarray]


@dataclass
class Paint:
    """One rasterisation step: where ``shape`` is inside, set intensity and (optionally) the label.

    label None keeps the labels underneath (vessels inside the liver), 0 carves (bowel over an organ).
    ``within`` restricts the step to voxels that currently carry one of those labels (tumours in liver).
    ``edge`` is the width (mm) of the soft partial-volume ramp; None uses the canvas default.
    """

    shape: "object"
    hu: HU
    label: int | None = 0
    within: tuple[int, ...] | None = None
    edge: float | None = None


class Canvas:
    """Float32 HU image and uint8 label map being painted, in painter's order."""

    def __init__(self, grid: Grid, edge_mm: float, background: float = -1000.0):
        self.grid = grid
        self.edge = float(edge_mm)
        self.hu = np.full(grid.shape, background, dtype=np.float32)
        self.label = np.zeros(grid.shape, dtype=np.uint8)

    def paint(self, step: Paint, slab_voxels: int = 1 << 21) -> None:
        """Rasterise one step on its bounding box, in z-slabs so temporaries stay small."""
        edge = self.edge if step.edge is None else float(step.edge)
        lo, hi = step.shape.bounds()
        box = self.grid.box_of(np.asarray(lo) - edge, np.asarray(hi) + edge)
        if box is None:
            return
        kz, jy, ix = box
        step_z = max(1, slab_voxels // ((jy.stop - jy.start) * (ix.stop - ix.start)))
        for k0 in range(kz.start, kz.stop, step_z):
            self._paint_box(step, (slice(k0, min(kz.stop, k0 + step_z)), jy, ix), edge)

    def _paint_box(self, step: Paint, box: Box, edge: float) -> None:
        region = self.grid.region(box)
        f = np.broadcast_to(step.shape.sdf(region), region.shape)
        occ = np.clip(np.float32(0.5) - f * np.float32(1.0 / edge), 0.0, 1.0)
        inside = f < 0
        lab = self.label[box]
        if step.within is not None:
            ok = np.isin(lab, step.within)
            occ *= ok
            inside &= ok
        h = self.hu[box]
        if callable(step.hu):
            sel = occ > 0
            if not sel.any():
                return
            hs, o = h[sel], occ[sel]
            h[sel] = hs + o * (step.hu(Subset(region, sel), f[sel]) - hs)
        else:
            if not occ.any():
                return
            h += occ * (np.float32(step.hu) - h)
        if step.label is not None:
            lab[inside] = step.label
