"""A random abdomen: body wall, chest base, spine and the solid organs, placed per real anatomy.

All positions are in the anatomy frame (mm, LPS: +x patient left, +y posterior, +z superior) and
scale with the case's ``scale``; thin structures (pancreas, vessels) scale with sqrt(scale) so a
paediatric-sized phantom keeps them resolvable. The scene is a list of paint steps in painter's
order: later steps overwrite earlier ones in both image and label, which keeps the two consistent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from autoseg.synthetic.body import Body, BodyParams, Cavity
from autoseg.synthetic.grid import Frame, Paint
from autoseg.synthetic.params import LEAN_HALF_WIDTH_MM, CaseParams
from autoseg.synthetic.shapes import (AxisTube, BelowDome, Dome, Ellipsoid, Intersect, Offset, Shape, Slab,
                                      SmoothField, Subtract, Union, rotation)

LABELS: dict[str, int] = {"background": 0, "liver": 1, "spleen": 2, "kidney_right": 3, "kidney_left": 4,
                          "pancreas": 5, "aorta": 6, "liver_tumour": 7}


@dataclass
class Landmarks:
    """Positions later structures are placed relative to (all mm, anatomy frame)."""

    s: float
    t: float                       # sqrt(scale): thin-structure scale
    y_vb: float                    # vertebral body centre (y)
    r_vb: tuple[float, float]      # vertebral body radii (x, y)
    y_canal: float
    dome: Dome
    z_range: tuple[float, float]
    aorta: tuple[float, float, float]  # (x, y, radius) at z = 0
    ivc: tuple[float, float]           # (x, y) at z = 0
    kidney: dict[str, Ellipsoid] = field(default_factory=dict)
    pancreas_line: tuple[np.ndarray, ...] = ()  # (x knots, y, z, ry, rz)


@dataclass
class Scene:
    body: Body
    marks: Landmarks
    steps: list[Paint]
    liver: Shape
    avoid: list[Shape]  # tumour centres keep clear of these (gallbladder, IVC, kidneys)


def hu_field(base: float, fld: SmoothField):
    """HU = base + smooth texture, evaluated in the anatomy frame (same texture in any orientation)."""
    def fn(frame: Frame, f: np.ndarray) -> np.ndarray:
        return np.float32(base) + fld(*frame.local())
    return fn


def make_body(p: CaseParams, rng: np.random.Generator) -> Body:
    s, u = p.scale, rng.uniform
    fat = p.fat_mm
    period = u(27, 33) * s
    return Body(BodyParams(
        half_width=LEAN_HALF_WIDTH_MM * s + fat, half_depth_ant=97 * s * u(0.93, 1.07) + 1.5 * fat,
        half_depth_post=92 * s + 0.5 * fat, taper=(u(-4, 3), u(-4, 3)),
        harmonics=tuple(float(c) for c in u(-0.025, 0.025, 4)), fat=fat, muscle=u(9, 14) * s,
        rib_period=period, rib_phase=u(0, period), rib_z_min=u(-25, 5) * s,
        rib_size=(3.5 * math.sqrt(s), 6.0 * math.sqrt(s)), table=p.table, table_gap=u(0, 8),
        table_thickness=u(5, 10), table_rotation_deg=p.rotation_deg))


def make_landmarks(p: CaseParams, body: Body, rng: np.random.Generator) -> Landmarks:
    s, t, u = p.scale, math.sqrt(p.scale), rng.uniform
    y_vb = body.midline_posterior_skin() - 0.5 * p.fat_mm - 68 * s
    r_vb = (21 * s * u(0.9, 1.1), 16 * s * u(0.9, 1.1))
    zr = u(118, 132) * s
    dome = Dome(right=(-55 * s, -5 * s, zr, 85 * s, 95 * s, u(40, 55) * s),
                left=(55 * s, -5 * s, zr - u(8, 20) * s, 85 * s, 95 * s, u(40, 55) * s))
    r_ao = 11 * t * u(0.85, 1.15)
    aorta = (u(9, 15) * s, y_vb - r_vb[1] - r_ao - u(1.5, 4) * s, r_ao)
    ivc = (-u(20, 26) * s, y_vb - r_vb[1] + u(-4, 2) * s)
    return Landmarks(s, t, y_vb, r_vb, y_vb + r_vb[1] + 9 * s, dome, p.z_range, aorta, ivc)


def chest_and_muscles(m: Landmarks, body: Body, hu: dict, rng: np.random.Generator
                      ) -> tuple[list[Paint], list[Paint]]:
    """(lung bases, mediastinal fat, heart, diaphragm), (paraspinal and psoas muscles).

    The muscles are painted after the bowel (so loops never cross them) and before the organs."""
    s, u = m.s, rng.uniform
    cav = Cavity(body)
    floor = m.dome.lowest(body.p.half_width, max(body.p.half_depth_ant, body.p.half_depth_post))

    def lung_hu(frame: Frame, f: np.ndarray) -> np.ndarray:  # dependent (posterior) lung is denser
        return np.float32(hu["lung"]) + np.float32(0.3) * np.clip(frame.local()[1], -80 * s, 100 * s)

    heart = Ellipsoid((15 * s, -30 * s, m.dome.top + 40 * s), np.array([65, 50, 55]) * s * u(0.9, 1.1),
                      rotation(rz_deg=-30 + u(-10, 10)), SmoothField(rng, 0.03, 1.0))
    med = AxisTube(2, [m.dome.top - 150 * s, m.dome.top + 300], [0, 0], [m.y_vb - m.r_vb[1] - 14 * s] * 2,
                   [24 * s] * 2, [18 * s] * 2)
    above = BelowDome(m.dome, 2.5 * s, above=True, floor=floor)

    def heart_hu(frame: Frame, f: np.ndarray) -> np.ndarray:
        return np.where(f > -9 * s, np.float32(hu["myocardium"]), np.float32(hu["heart_blood"]))

    chest = [Paint(Intersect(cav, above), lung_hu), Paint(Intersect(med, above, cav), hu["visceral_fat"]),
             Paint(Intersect(heart, above, cav), heart_hu),
             Paint(Intersect(Slab(m.dome, 2.5 * s, floor), cav), hu["muscle"])]
    muscles: list[Paint] = []
    z0, z1 = m.z_range[0] - 50, m.z_range[1] + 50
    for side in (-1, 1):
        para = AxisTube(2, [z0, z1], [side * 33 * s] * 2, [m.y_canal + 12 * s] * 2,
                        [25 * s * u(0.9, 1.1)] * 2, [20 * s * u(0.9, 1.1)] * 2)
        zt = u(15, 35) * s
        zk = np.array([z0, -100 * s, -40 * s, zt])
        psoas = AxisTube(2, zk, side * (m.r_vb[0] + np.array([28, 26, 20, 12]) * s), m.y_vb + np.array([4, 3, 2, 0]) * s,
                         np.array([22, 20, 13, 2]) * s, np.array([20, 18, 11, 2]) * s)
        muscles += [Paint(para, hu["muscle"] - 5), Paint(psoas, hu["muscle"])]
    return chest, muscles


def spine(m: Landmarks, hu: dict, rng: np.random.Generator) -> list[Paint]:
    """Vertebral bodies with cortical shell and discs, posterior arch, canal, spinous/transverse processes."""
    s, u = m.s, rng.uniform
    z0, z1 = m.z_range[0] - 50, m.z_range[1] + 50
    period, disc = u(29, 34) * s, u(6, 9) * s
    phase = u(0, period)

    def level(z: np.ndarray) -> np.ndarray:
        return np.mod(z - np.float32(phase), np.float32(period))

    def vb_hu(frame: Frame, f: np.ndarray) -> np.ndarray:
        w = level(frame.local()[2])
        shell = (f > -1.8 * s) | (w < disc + 1.5 * s) | (w > period - 1.5 * s)
        bone = np.where(shell, np.float32(hu["bone_cortex"]), np.float32(hu["bone_marrow"]))
        return np.where(w < disc, np.float32(hu["disc"]), bone)

    def periodic(frac: float, inside: float, outside: float):
        def fn(frame: Frame, f: np.ndarray) -> np.ndarray:
            on = level(frame.local()[2] + np.float32(0.3 * period)) < frac * period
            return np.where(on, np.float32(inside), np.float32(outside))
        return fn

    zk = [z0, z1]
    vb = AxisTube(2, zk, [0, 0], [m.y_vb, m.y_vb], [m.r_vb[0], m.r_vb[0] * 1.08], [m.r_vb[1], m.r_vb[1] * 1.05])
    canal = AxisTube(2, zk, [0, 0], [m.y_canal] * 2, [9 * s] * 2, [8 * s] * 2)
    bone = (hu["bone_cortex"] + hu["bone_marrow"]) / 2
    spinous = AxisTube(2, zk, [0, 0], [m.y_canal + 20 * s] * 2, [4 * s] * 2, [14 * s] * 2)
    steps = [Paint(vb, vb_hu), Paint(Offset(canal, 5 * s), bone),
             Paint(spinous, periodic(0.6, bone, hu["muscle"]))]
    for side in (-1, 1):
        tp = AxisTube(2, zk, [side * 27 * s] * 2, [m.y_canal - 3 * s] * 2, [15 * s] * 2, [5 * s] * 2)
        steps.append(Paint(tp, periodic(0.4, bone, hu["muscle"])))
    steps.append(Paint(canal, hu["csf"]))
    return steps


def liver(m: Landmarks, body: Body, rng: np.random.Generator) -> Shape:
    """Right lobe + left lobe (smooth union) under the right dome, cut by the body wall and kept
    anterior/superior to the right kidney (the hepatorenal recess), as in a supine CT."""
    s, u = m.s, rng.uniform
    j = lambda mm: rng.normal(0, mm * s)  # noqa: E731
    right = Ellipsoid((-58 * s + j(4), -5 * s + j(4), 55 * s + j(5)), np.array([80, 88, 85]) * s * u(0.88, 1.12, 3),
                      rotation(rz_deg=u(-8, 8)), SmoothField(rng, 0.05, 0.9), exponent=u(2.0, 2.6))
    left = Ellipsoid((18 * s + j(5), -48 * s + j(3), 72 * s + j(5)), np.array([62, 30, 40]) * s * u(0.8, 1.2, 3),
                     rotation(ry_deg=u(-15, 0), rz_deg=u(-15, 5)), SmoothField(rng, 0.06, 0.9))
    k = m.kidney["kidney_right"]
    behind = Ellipsoid((k.centre[0] + 15 * s, m.y_vb + 45 * s, k.centre[2] - 5 * s),
                       np.array([70 * s, 55 * s, 1.05 * k.axes[2]]), exponent=4.0)  # retroperitoneum
    xa, ya, ra = m.aorta
    front = ya - ra - 5 * s  # the liver stays in front of the aorta, crura and spine
    spine_block = AxisTube(2, [m.z_range[0] - 50, m.z_range[1] + 50], [xa / 2] * 2, [m.y_vb + 5 * s] * 2,
                           [38 * s] * 2, [m.y_vb + 5 * s - front] * 2)
    inside = Intersect(Union(right, left, k=20 * s), Cavity(body, 1.0), BelowDome(m.dome, 3.0 * s))
    return Subtract(inside, behind, spine_block)


def spleen(m: Landmarks, body: Body, rng: np.random.Generator) -> Shape:
    s, u = m.s, rng.uniform
    j = lambda mm: rng.normal(0, mm * s)  # noqa: E731
    rot = rotation(rx_deg=u(-30, -15), rz_deg=u(25, 45))
    e = Ellipsoid((86 * s + j(4), 22 * s + j(4), 72 * s + j(6)), np.array([21, 38, 55]) * s * u(0.85, 1.15, 3),
                  rot, SmoothField(rng, 0.05, 1.0), bend=u(0.2, 0.35))
    return Intersect(e, Cavity(body, 1.0), BelowDome(m.dome, 3.0 * s))


def kidney(m: Landmarks, side: int, rng: np.random.Generator) -> Ellipsoid:
    """side -1 = right (patient right, -x), +1 = left. Local +x points laterally, the hilum medially."""
    s, u = m.s, rng.uniform
    j = lambda mm: rng.normal(0, mm * s)  # noqa: E731
    centre = (side * 70 * s + j(4), m.y_vb + 6 * s + j(3), (-15 if side < 0 else 0) * s + j(6))
    phi = 30 + u(-8, 12)
    rot = rotation(rz_deg=phi if side > 0 else 180 - phi) @ rotation(ry_deg=-u(6, 16))
    return Ellipsoid(centre, np.array([27, 22, 52]) * s * u(0.88, 1.12, 3), rot, SmoothField(rng, 0.03, 1.2))


def kidney_steps(m: Landmarks, hu: dict, rng: np.random.Generator) -> list[Paint]:
    s, u = m.s, rng.uniform
    steps = []
    for side, name in ((-1, "kidney_right"), (1, "kidney_left")):
        k = m.kidney[name]
        a = k.axes
        cortex = u(5, 9) * s
        med = hu["kidney_cortex"] - hu["kidney_medulla_drop"]
        tex = SmoothField(rng, 1.0, 9 * s)

        def k_hu(frame: Frame, f: np.ndarray, cortex=cortex, med=med, tex=tex) -> np.ndarray:
            depth = np.clip((-f - cortex) / (2 * s), 0.0, 1.0) * (tex(*frame.local()) > -0.2)
            return np.float32(hu["kidney_cortex"]) + depth * np.float32(med - hu["kidney_cortex"])

        sinus = Ellipsoid(k.centre + k.rot @ np.array([-0.75 * a[0], 0, 0]), a * np.array([0.55, 0.45, 0.5]), k.rot)
        pelvis = Ellipsoid(k.centre + k.rot @ np.array([-0.8 * a[0], 0, -0.1 * a[2]]), a * np.array([0.3, 0.22, 0.2]),
                           k.rot)
        steps += [Paint(Offset(k, u(2, 6) * s), hu["visceral_fat"]), Paint(k, k_hu, LABELS[name]),
                  Paint(sinus, hu["visceral_fat"] + 10), Paint(pelvis, hu["urine"])]
    return steps


def pancreas(m: Landmarks, rng: np.random.Generator) -> Shape:
    """Head in the duodenal C-loop, neck in front of the portal confluence, body over the aorta,
    tail towards the splenic hilum; lobulated by a short-wavelength surface field."""
    s, t, u = m.s, m.t, rng.uniform
    x = np.array([-54, -48, -36, -18, 0, 22, 44, 66, 72], float) * s
    y = np.array([-14, -14, -18, -30, -36, -33, -22, -10, -8], float) * s
    z = np.array([-14, -14, -8, 0, 6, 12, 22, 32, 34], float) * s
    ry = np.array([7, 13, 15, 10, 9, 9, 8, 7, 4], float) * t
    rz = np.array([10, 20, 20, 13, 11, 10, 9, 8, 4], float) * t
    y = y + rng.normal(0, 3 * s, len(x))
    z = z + np.cumsum(rng.normal(0, 1.5 * s, len(x)))
    ry, rz = ry * u(0.85, 1.15, len(x)), rz * u(0.85, 1.15, len(x))
    m.pancreas_line = (x, y, z, ry, rz)
    tube = AxisTube(0, x, y, z, ry, rz, SmoothField(rng, 0.12, 14 * s))
    uncinate = Ellipsoid((-27 * s, y[2] + 8 * s, z[2] - 14 * s), np.array([13, 8, 11]) * t * u(0.85, 1.15, 3))
    return Union(tube, uncinate, k=5 * s)


def pancreas_hu(base: float, rng: np.random.Generator, s: float):
    """Lobulated enhancement with fatty clefts: the texture that makes the pancreas hard."""
    tex, clefts = SmoothField(rng, 7.0, 10 * s), SmoothField(rng, 1.0, 5 * s)
    fat_drop = rng.uniform(10, 35)

    def fn(frame: Frame, f: np.ndarray) -> np.ndarray:
        x, y, z = frame.local()
        return np.float32(base) + tex(x, y, z) - np.float32(fat_drop) * (clefts(x, y, z) > 1.1)
    return fn
