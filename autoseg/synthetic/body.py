"""The body wall: skin outline, subcutaneous fat, muscle, ribs, the abdominal cavity and the CT table.

The outline is an ellipse (flatter posteriorly) with a few smooth angular harmonics, tapering
slowly along z. Depth below the skin is measured along the ray from the body axis, which is cheap
enough to evaluate on every voxel of a 512x512 slice and accurate for a convex outline.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autoseg.synthetic.grid import Canvas, Frame
from autoseg.synthetic.shapes import INF, Shape


@dataclass
class BodyParams:
    half_width: float          # A: skin at x = +-A (mm)
    half_depth_ant: float      # skin at y = -B_ant (anterior)
    half_depth_post: float     # skin at y = +B_post (posterior, flatter)
    taper: tuple[float, float]  # relative change of (A, B) per 100 mm of z
    harmonics: tuple[float, float, float, float]
    fat: float                 # subcutaneous fat thickness laterally (mm); x1.5 anterior, x0.5 posterior
    muscle: float              # abdominal wall muscle thickness (mm)
    rib_period: float
    rib_phase: float
    rib_z_min: float           # lowest rib level laterally (anatomy z, mm)
    rib_size: tuple[float, float]  # (depth, z) radii in mm
    table: bool
    table_gap: float
    table_thickness: float
    table_rotation_deg: float = 0.0  # the table stays level in the scanner when the patient lies rotated


class Body:
    def __init__(self, p: BodyParams):
        self.p = p

    def depth(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(depth below skin in mm, positive inside; cos and sin of the angle around the body axis)."""
        p = self.p
        rho = np.sqrt(x * x + y * y) + np.float32(1e-3)
        u, v = x / rho, y / rho
        ka, kb = (np.float32(t / 1e4) for t in p.taper)  # percent per 100 mm
        a = np.float32(p.half_width) * (1 + ka * z)
        b = np.where(y > 0, np.float32(p.half_depth_post), np.float32(p.half_depth_ant)) * (1 + kb * z)
        c0, c1, c2, c3 = (np.float32(c) for c in p.harmonics)
        g = 1 + c0 * u + c1 * (u * u - v * v) + c2 * (2 * u * v) + c3 * u * (4 * u * u - 3)
        radius = g / np.sqrt((u / a) ** 2 + (v / b) ** 2 + np.float32(1e-12))
        return radius - rho, u, v

    def layers(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fat and muscle thickness (mm) along each direction: thick anterior fat, thin posterior fat."""
        p = self.p
        fat = np.float32(p.fat) * (1 + 0.5 * np.maximum(-v, 0) - 0.5 * np.maximum(v, 0))
        muscle = np.float32(p.muscle) * (1 + 0.4 * np.maximum(v, 0))
        return fat, muscle

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        p = self.p
        r = 1.2 * max(p.half_width, p.half_depth_ant, p.half_depth_post)
        return np.array([-2 * r, -2 * r, -INF]), np.array([2 * r, 2 * r, INF])

    def posterior_skin(self) -> float:
        """Largest posterior y of the skin at z = 0 (where the back rests on the table)."""
        th = np.linspace(0.05, np.pi - 0.05, 181).astype(np.float32)
        r = np.float32(10.0)
        x, y = r * np.cos(th), r * np.sin(th)
        d, _, _ = self.depth(x, y, np.zeros_like(x))
        return float(((d + r) * np.sin(th)).max())

    def midline_posterior_skin(self) -> float:
        return self.p.half_depth_post * (1 - self.p.harmonics[1])


class Cavity(Shape):
    """Inside of the muscle wall: where organs, bowel and visceral fat live (shrunk by ``margin``)."""

    def __init__(self, body: Body, margin: float = 0.0):
        self.body, self.margin = body, float(margin)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.body.bounds()

    def sdf(self, frame: Frame) -> np.ndarray:
        grid = getattr(frame, "grid", None)
        cached = grid.fields.get(f"cavity{id(self.body)}") if grid is not None else None
        if cached is not None:  # painted after paint_body: a slice of the stored field
            return cached[frame.box].astype(np.float32) + np.float32(self.margin)
        d, u, v = self.body.depth(*frame.local())
        fat, muscle = self.body.layers(u, v)
        return fat + muscle + np.float32(self.margin) - d


def _ramp(signed: np.ndarray, edge: float) -> np.ndarray:
    """Occupancy 0..1 of a region whose signed depth (positive inside) is ``signed``."""
    return np.clip(np.float32(0.5) + signed * np.float32(1.0 / edge), 0.0, 1.0)


def paint_body(canvas: Canvas, body: Body, hu: dict[str, float], slab_voxels: int = 1 << 19) -> None:
    """Fill the whole volume (slab by slab to bound memory): air, table, skin/fat, muscle, ribs, cavity fat."""
    nz, ny, nx = canvas.grid.shape
    step = max(1, slab_voxels // (ny * nx))
    p, e = body.p, canvas.edge
    cavity = np.empty(canvas.grid.shape, np.float16)  # depth in mm; float16 keeps 0.125 mm at 200 mm
    for k0 in range(0, nz, step):
        box = (slice(k0, min(nz, k0 + step)), slice(0, ny), slice(0, nx))
        x, y, z = canvas.grid.region(box).local()
        x, y, z = np.broadcast_arrays(x, y, z)
        d, u, v = body.depth(x, y, z)
        fat, muscle = body.layers(u, v)
        out = np.full(d.shape, np.float32(hu["air"]), np.float32)
        if p.table:
            out += _ramp(_table_depth(body, x, y), e) * np.float32(hu["table"] - hu["air"])
        out += _ramp(d, e) * (np.float32(hu["fat"]) - out)
        out += _ramp(d - fat, e) * (np.float32(hu["muscle"]) - out)
        cav = fat + muscle - d
        cavity[box] = cav
        out += _ramp(-cav, e) * (np.float32(hu["visceral_fat"]) - out)
        dmid = d - fat - 0.5 * muscle
        band = np.abs(dmid) < max(p.rib_size) + e
        if p.rib_size[0] > 0 and band.any():
            rib = _rib_depth(body, dmid[band], u[band], v[band], z[band])
            out[band] += _ramp(rib, e) * (np.float32(hu["rib"]) - out[band])
        canvas.hu[box] = out
    canvas.grid.fields[f"cavity{id(body)}"] = cavity


def _table_depth(body: Body, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed depth inside a gently curved table shell below the patient's back."""
    p = body.p
    if p.table_rotation_deg:
        c, s = np.cos(np.deg2rad(p.table_rotation_deg)), np.sin(np.deg2rad(p.table_rotation_deg))
        x, y = np.float32(c) * x - np.float32(s) * y, np.float32(s) * x + np.float32(c) * y
    top = np.float32(body.posterior_skin() + p.table_gap) - x * x / np.float32(2 * 900.0)
    half = np.float32(p.table_thickness / 2)
    inside_y = half - np.abs(y - top - half)
    inside_x = np.float32(1.1 * p.half_width) - np.abs(x)
    return np.minimum(inside_y, inside_x)


def _rib_depth(body: Body, dmid: np.ndarray, u: np.ndarray, v: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Signed depth inside the rib cross-sections embedded in the wall (lateral and posterior only).

    Ribs descend anteriorly, so the rib coordinate is z shifted by the angle; the lowest ribs stop
    at ``rib_z_min`` laterally, which leaves the lower abdomen rib-free as in real scans.
    """
    p = body.p
    zr = z + np.float32(45.0 * p.rib_period / 30.0) * (1 - v)
    w = np.mod(zr - np.float32(p.rib_phase) + np.float32(p.rib_period / 2), np.float32(p.rib_period))
    w -= np.float32(p.rib_period / 2)
    rd, rz = (np.float32(r) for r in p.rib_size)
    inside = (1 - np.sqrt((dmid / rd) ** 2 + (w / rz) ** 2)) * min(rd, rz)
    low = np.float32(p.rib_z_min) + np.float32(40.0 * p.rib_period / 30.0) * np.maximum(-v, 0)
    allowed = np.minimum(z - low, (np.abs(u) - np.float32(0.35)) * 40)
    return np.minimum(inside, allowed)
