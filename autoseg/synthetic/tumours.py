"""Liver tumours: 0-3 per case, hypodense, rim-enhancing or nearly iso-dense, painted only on liver.

Centres are drawn from their own seeded stream and accepted only well inside the liver shape, so
the number of tumours can be overridden without changing the rest of the case.
"""
from __future__ import annotations

import logging

import numpy as np

from autoseg.synthetic.anatomy import LABELS
from autoseg.synthetic.grid import Frame, Paint, Points
from autoseg.synthetic.shapes import Ellipsoid, Shape, SmoothField, rotation

log = logging.getLogger(__name__)


def _tumour_hu(kind: str, liver_hu: float, radius: float, rng: np.random.Generator):
    u = rng.uniform
    if kind == "iso":
        core = liver_hu - u(12, 25)
    else:
        core = float(np.clip(liver_hu - u(35, 80), 30.0, 80.0))
    ring = liver_hu + u(10, 35) if kind == "rim" else None
    ring_w = u(1.5, 3.5)
    necrosis = core - u(15, 30) if radius > 12 and u() < 0.5 else None
    tex = SmoothField(rng, 4.0, max(radius / 2, 3.0))

    def fn(frame: Frame, f: np.ndarray) -> np.ndarray:
        out = np.float32(core) + tex(*frame.local())
        if necrosis is not None:
            out = np.where(f < -0.55 * radius, np.float32(necrosis), out)
        if ring is not None:
            out = np.where((f > -ring_w) & (f < 0.5), np.float32(ring), out)
        return out
    return fn


def tumour_steps(num: int, diameter_mm: tuple[float, float], liver: Shape, avoid: list[Shape], liver_hu: float,
                 rng: np.random.Generator) -> list[Paint]:
    """Paint steps for ``num`` tumours (diameters uniform in ``diameter_mm``)."""
    steps: list[Paint] = []
    lo, hi = liver.bounds()
    for i in range(num):
        radius = float(rng.uniform(*diameter_mm)) / 2
        cand = rng.uniform(lo, hi, size=(256, 3))
        depth = liver.sdf(Points(cand))
        ok = depth < -0.6 * radius - 2.0
        for shape in avoid:
            ok &= shape.sdf(Points(cand)) > 0.3 * radius
        idx = np.flatnonzero(ok)
        if len(idx) == 0:
            log.debug("tumour %d of radius %.1f mm does not fit in this liver; skipped", i, radius)
            continue
        centre = cand[idx[0]]
        kind = ("hypo", "rim", "iso")[int(rng.choice(3, p=[0.55, 0.25, 0.2]))]
        axes = radius * rng.uniform(0.8, 1.2, 3)
        shape = Ellipsoid(centre, axes, rotation(*rng.uniform(-180, 180, 3)), SmoothField(rng, 0.08, 1.0))
        steps.append(Paint(shape, _tumour_hu(kind, liver_hu, radius, rng), LABELS["liver_tumour"],
                           within=(LABELS["liver"], LABELS["liver_tumour"]), edge=float(rng.uniform(1.5, 4.0))))
    return steps
