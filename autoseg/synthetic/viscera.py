"""Bowel and vessels: the unlabelled clutter whose HU overlaps the labelled organs.

Collapsed jejunal loops and the duodenum (~90-115 HU) next to the pancreas, the IVC and portal
vein next to the aorta, and oral contrast in some cases are what make the segmentation problem
non-trivial. Vessels inside the liver keep the liver label (as in real annotations).
"""
from __future__ import annotations

import numpy as np

from autoseg.synthetic.anatomy import LABELS, Landmarks
from autoseg.synthetic.body import Body, Cavity
from autoseg.synthetic.grid import Frame, Paint, Points
from autoseg.synthetic.shapes import (AxisTube, BelowDome, Capsule, Ellipsoid, Intersect, Offset, Shape,
                                      SmoothField, polyline, rotation)


def _lumen_hu(kind: str, hu: dict, rng: np.random.Generator, s: float):
    """Bowel content: fluid, oral contrast, collapsed (wall-like), or gas-and-stool (colon)."""
    if kind == "colon":
        mottle = SmoothField(rng, 1.0, 7 * s, terms=7)
        gas, stool = hu["gas"], hu["stool"]

        def colon(frame: Frame, f: np.ndarray) -> np.ndarray:
            return np.where(mottle(*frame.local()) > 0.3, np.float32(gas), np.float32(stool))
        return colon
    return {"fluid": hu["bowel_fluid"], "oral": hu["oral"], "collapsed": hu["bowel_wall"] - 8,
            "gas": hu["gas"]}[kind]


def _tube(points: np.ndarray, radius: float, wall: float, lumen, hu: dict, clip: Shape) -> list[Paint]:
    caps = polyline(points, radius)
    steps = [Paint(Intersect(c, clip), hu["bowel_wall"]) for c in caps]
    steps += [Paint(Intersect(Offset(c, -wall), clip), lumen) for c in caps]
    return steps


def _walk(start: np.ndarray, n: int, step: float, rng: np.random.Generator, lo: np.ndarray,
          hi: np.ndarray) -> np.ndarray:
    """A smooth random walk kept inside a box: the centreline of a small-bowel loop."""
    pts = [np.asarray(start, float)]
    d = rng.normal(size=3)
    for _ in range(n - 1):
        d = 0.55 * d / np.linalg.norm(d) + rng.normal(size=3) * 0.6
        nxt = np.clip(pts[-1] + step * d / np.linalg.norm(d), lo, hi)
        pts.append(nxt)
    return np.array(pts)


def bowel(m: Landmarks, body: Body, hu: dict, oral: bool, rng: np.random.Generator) -> list[Paint]:
    s, t, u = m.s, m.t, rng.uniform
    cav = Intersect(Cavity(body, 2.0), BelowDome(m.dome, 4 * s))
    steps: list[Paint] = []
    zb = m.z_range[0] - 30
    colon = np.array([[-95, 12, zb / s], [-92, 2, -60], [-86, -22, -25], [-70, -45, -5], [-35, -70, -42],
                      [0, -76, -52], [40, -70, -38], [80, -30, 30], [96, 8, 5], [96, 14, -60], [90, 6, zb / s]])
    colon = colon * s + rng.normal(0, 5 * s, colon.shape)
    steps += _tube(colon, u(11, 17) * t, 2.5 * s, _lumen_hu("colon", hu, rng, s), hu, cav)
    kinds = ["collapsed", "fluid", "oral" if oral else "fluid", "collapsed", "gas"]
    lo, hi = np.array([-60, -85, zb / s]) * s, np.array([70, -15, -20]) * s
    for i in range(int(rng.integers(4, 8))):
        start = np.array([u(-45, 60), u(-75, -30), u(zb / s + 20, -30)]) * s
        pts = _walk(start, int(rng.integers(4, 7)), 24 * s, rng, lo, hi)
        kind = kinds[int(rng.integers(len(kinds)))] if i else "collapsed"
        steps += _tube(pts, u(8, 12) * t, 2.5 * s, _lumen_hu(kind, hu, rng, s), hu, cav)
    # Jejunal loops in the left upper quadrant, just below/in front of the pancreatic body and tail.
    for _ in range(int(rng.integers(1, 3))):
        start = np.array([u(25, 60), u(-60, -40), u(-20, 0)]) * s
        pts = _walk(start, 4, 20 * s, rng, np.array([0, -80, -60]) * s, np.array([85, -15, 10]) * s)
        steps += _tube(pts, u(8, 11) * t, 2.5 * s, _lumen_hu("collapsed", hu, rng, s), hu, cav)
    return steps + stomach(m, body, hu, oral, rng) + duodenum(m, hu, oral, rng, cav)


def stomach(m: Landmarks, body: Body, hu: dict, oral: bool, rng: np.random.Generator) -> list[Paint]:
    s, u = m.s, rng.uniform
    clip = Intersect(Cavity(body, 2.0), BelowDome(m.dome, 4 * s))
    shape = Ellipsoid((50 * s, -38 * s, 62 * s), np.array([40, 30, 55]) * s * u(0.75, 1.15, 3),
                      rotation(rx_deg=u(-30, -10), rz_deg=u(15, 35)), SmoothField(rng, 0.08, 0.9))
    level = -38 * s + u(-25, 5) * s  # gas rises anteriorly (supine patient): y below the level is gas
    fluid = hu["oral"] if oral and u() < 0.6 else hu["bowel_fluid"]

    def lumen(frame: Frame, f: np.ndarray) -> np.ndarray:
        return np.where(frame.local()[1] < level, np.float32(hu["gas"]), np.float32(fluid))

    return [Paint(Intersect(shape, clip), hu["bowel_wall"]),
            Paint(Intersect(Offset(shape, -u(3, 6) * s), clip), lumen)]


def duodenum(m: Landmarks, hu: dict, oral: bool, rng: np.random.Generator, clip: Shape) -> list[Paint]:
    s, t, u = m.s, m.t, rng.uniform
    ya = m.aorta[1] - m.aorta[2]
    pts = np.array([[-8, -52, 26], [-38, -38, 24], [-58, -18, 12], [-62, -10, -22], [-40, -12, -44],
                    [0, ya / s - 16, -50], [26, -22, -34], [30, -30, -16]]) * s
    pts += rng.normal(0, 3 * s, pts.shape)
    kind = ["fluid", "collapsed", "oral" if oral else "fluid", "gas"][int(rng.integers(4))]
    return _tube(pts, u(10, 14) * t, 2.5 * s, _lumen_hu(kind, hu, rng, s), hu, clip)


def gallbladder(m: Landmarks, rng: np.random.Generator) -> Ellipsoid:
    s, u = m.s, rng.uniform
    return Ellipsoid((-38 * s + rng.normal(0, 4 * s), -45 * s, -2 * s + rng.normal(0, 5 * s)),
                     np.array([14, 16, 33]) * s * u(0.7, 1.2, 3), rotation(rx_deg=u(-40, -20), rz_deg=u(-20, 10)),
                     SmoothField(rng, 0.05, 1.0))


def liver_vessels(m: Landmarks, liver: Shape, hu: dict, rng: np.random.Generator) -> list[Paint]:
    """Portal and hepatic venous branches inside the liver; they keep the liver label."""
    s, t, u = m.s, m.t, rng.uniform
    hilum = np.array([-30 * s, -15 * s, 40 * s])
    lo, hi = liver.bounds()
    cand = rng.uniform(lo, hi, size=(400, 3))
    inside = cand[liver.sdf(Points(cand)) < -12 * s]
    steps = []
    ivc_top = np.array([m.ivc[0] + 4 * s, m.ivc[1] - 4 * s, m.dome.top - 25 * s])
    for root, n, r0, key in ((hilum, 5, 5.5 * t, "portal"), (ivc_top, 3, 5.0 * t, "hepatic_vein")):
        for target in inside[rng.permutation(len(inside))[:n]]:
            mid = (root + target) / 2 + rng.normal(0, 8 * s, 3)
            for seg in polyline([root, mid, target], [r0, 0.65 * r0, 1.5 * t]):
                steps.append(Paint(seg, hu[key], label=None, within=(LABELS["liver"],)))
        inside = inside[rng.permutation(len(inside))]
    return steps


def vessels(m: Landmarks, hu: dict, rng: np.random.Generator) -> list[Paint]:
    """Splenic vein, portal vein, SMV, SMA, renal veins, IVC and the aorta (the only labelled vessel)."""
    s, t, u = m.s, m.t, rng.uniform
    px, py, pz, pry, prz = m.pancreas_line
    xs = np.array([-6, 20, 44, 66, 82]) * s
    sv = np.stack([xs, np.interp(xs, px, py + pry) + 4 * t, np.interp(xs, px, pz)], 1)
    sv[-1] += np.array([0, 12 * s, 12 * s])
    conf = sv[0]
    porta = np.array([-30 * s, -15 * s, 40 * s])
    xa, ya, ra = m.aorta
    sma = np.array([[xa, ya - ra + 2 * t, 0], [xa - 2 * s, ya - ra - 9 * s, -20 * s], [xa - 4 * s, ya - ra - 22 * s,
                                                                                     m.z_range[0] - 30]])
    smv = np.array([conf, [-8 * s, conf[1] - 14 * s, -40 * s], [-10 * s, conf[1] - 24 * s, m.z_range[0] - 30]])
    steps = [Paint(c, hu["portal"]) for c in polyline(sv, 4.0 * t)]
    steps += [Paint(c, hu["portal"]) for c in polyline([conf, porta], 7 * t)]
    steps += [Paint(c, hu["portal"]) for c in polyline(smv, 5 * t)]
    kr, kl = m.kidney["kidney_right"], m.kidney["kidney_left"]
    hil_r = kr.centre + kr.rot @ np.array([-0.8 * kr.axes[0], 0, 0])
    hil_l = kl.centre + kl.rot @ np.array([-0.8 * kl.axes[0], 0, 0])
    ivc_at = lambda z: np.array([m.ivc[0], m.ivc[1], z])  # noqa: E731
    lrv = [hil_l, [xa, ya - ra - 3.5 * t, hil_l[2] + 2 * s], ivc_at(hil_l[2])]
    steps += [Paint(c, hu["ivc"]) for c in polyline(lrv, 4.0 * t)]
    steps += [Paint(c, hu["ivc"]) for c in polyline([hil_r, ivc_at(hil_r[2] + 4 * s)], 4.5 * t)]
    steps += [Paint(Offset(c, 2.5 * s), hu["visceral_fat"]) for c in polyline(sma, 3.5 * t)]
    steps += [Paint(c, hu["aorta"]) for c in polyline(sma, 3.5 * t)]
    z0, z1 = m.z_range[0] - 40, m.z_range[1] + 40
    zt = m.dome.top - 10 * s
    ivc = AxisTube(2, [z0, 60 * s, zt], [m.ivc[0], m.ivc[0] + 2 * s, m.ivc[0] + 4 * s],
                   [m.ivc[1], m.ivc[1] - 2 * s, m.ivc[1] - 4 * s], [12 * t * u(0.85, 1.2)] * 3,
                   [8 * t * u(0.7, 1.2)] * 3)
    steps.append(Paint(ivc, hu["ivc"]))
    zk = np.array([z0, -60 * s, 0, 60 * s, 120 * s, z1])
    jit = rng.normal(0, 2 * s, (2, len(zk)))
    ax = np.array([xa - 2 * s, xa, xa, xa + 2 * s, xa + 6 * s, m.r_vb[0] + ra + 4 * s]) + jit[0]
    ay = np.array([ya, ya, ya, ya + 3 * s, ya + 8 * s, m.y_vb]) + jit[1]
    ar = ra * np.array([0.85, 0.92, 1.0, 1.0, 1.02, 1.05])
    steps.append(Paint(AxisTube(2, zk, ax, ay, ar, ar), hu["aorta"], LABELS["aorta"]))
    return steps


def capsule_avoid(m: Landmarks) -> list[Shape]:
    """The IVC as a simple shape for tumour placement (tumours are kept out of it)."""
    s, t = m.s, m.t
    return [Capsule([m.ivc[0], m.ivc[1], m.z_range[0]], [m.ivc[0] + 4 * s, m.ivc[1] - 4 * s, m.dome.top],
                    14 * t)]
