"""``make_phantom``: one seeded abdominal CT volume with its label map and geometry.

Four independent random streams per seed (acquisition, anatomy, tumours, noise) keep overrides
local: asking for ``num_tumours=0`` or another orientation leaves the rest of the case unchanged,
and the same seed in two orientations is the same body in physical space.
"""
from __future__ import annotations

import logging
import time

import numpy as np
from scipy import ndimage

from autoseg.io import Geometry
from autoseg.synthetic import anatomy as A
from autoseg.synthetic import viscera as V
from autoseg.synthetic.body import paint_body
from autoseg.synthetic.grid import Canvas, Grid, Paint
from autoseg.synthetic.params import CaseParams, sample_params
from autoseg.synthetic.shapes import Offset, SmoothField
from autoseg.synthetic.tumours import tumour_steps

log = logging.getLogger(__name__)


def build_scene(p: CaseParams, seed: int) -> A.Scene:
    """The ordered paint steps of a case (anatomy stream), without tumours."""
    rng = np.random.default_rng([int(seed), 1])
    hu = p.hu
    body = A.make_body(p, rng)
    m = A.make_landmarks(p, body, rng)
    m.kidney = {"kidney_right": A.kidney(m, -1, rng), "kidney_left": A.kidney(m, 1, rng)}
    liver = A.liver(m, body, rng)
    spleen = A.spleen(m, body, rng)
    pancreas = A.pancreas(m, rng)
    s = m.s
    chest, muscles = A.chest_and_muscles(m, body, hu, rng)
    steps: list[Paint] = chest + V.bowel(m, body, hu, p.oral_contrast, rng) + muscles
    steps.append(Paint(liver, A.hu_field(hu["liver"], SmoothField(rng, 6.0, 35 * s)), A.LABELS["liver"]))
    gb = V.gallbladder(m, rng)
    avoid = V.capsule_avoid(m) + list(m.kidney.values())
    if p.gallbladder:
        steps.append(Paint(gb, hu["gallbladder"]))
        avoid.append(gb)
    steps += V.liver_vessels(m, liver, hu, rng)
    steps.append(Paint(spleen, A.hu_field(hu["spleen"], SmoothField(rng, 4.0, 30 * s)), A.LABELS["spleen"]))
    steps += A.kidney_steps(m, hu, rng)
    fat_capsule = float(rng.uniform(0.0, 3.0)) * s
    if fat_capsule > 0.5:
        steps.append(Paint(Offset(pancreas, fat_capsule), hu["visceral_fat"]))
    steps.append(Paint(pancreas, A.pancreas_hu(hu["pancreas"], rng, s), A.LABELS["pancreas"]))
    steps += V.vessels(m, hu, rng)
    steps += A.spine(m, hu, rng)
    return A.Scene(body, m, steps, liver, avoid)


def render(p: CaseParams, scene: A.Scene, tumours: list[Paint], seed: int) -> tuple[np.ndarray, np.ndarray]:
    geo, anatomy_origin = p.geometry()
    grid = Grid(geo.shape, geo.spacing, np.asarray(geo.direction).reshape(3, 3), geo.origin, anatomy_origin,
                p.anatomy_rotation())
    canvas = Canvas(grid, edge_mm=min(p.spacing[1:]), background=p.hu["air"])
    paint_body(canvas, scene.body, p.hu)
    for step in scene.steps + tumours:
        canvas.paint(step)
    grid.fields.clear()  # cached full-volume fields are not needed any more: free them before the blur
    sigma = np.asarray(p.blur_sigma, float)
    if np.any(sigma > 0):  # partial volume / scanner PSF; sigma <= 0.75 voxel needs only 3 taps
        canvas.hu = ndimage.gaussian_filter(canvas.hu, sigma, truncate=2.0, output=np.float32)
    return _add_noise(canvas.hu, p.noise_sd, np.random.default_rng([int(seed), 3])), canvas.label


def _add_noise(img: np.ndarray, sd: float, rng: np.random.Generator, slab_voxels: int = 1 << 20) -> np.ndarray:
    """Add CT-like noise and quantise to int16, slab by slab so no full-size float temporaries exist.

    Each noise sample is the sum of a 2x2 in-plane neighbourhood of white noise: a correlated grain
    like reconstructed CT noise, at the cost of two additions.
    """
    out = np.empty(img.shape, np.int16)
    nz, ny, nx = img.shape
    step = max(1, slab_voxels // (ny * nx))
    for k0 in range(0, nz, step):
        sl = slice(k0, min(nz, k0 + step))
        noise = rng.standard_normal((sl.stop - sl.start, ny + 1, nx + 1), dtype=np.float32)
        noise[:, 1:, :] += noise[:, :-1, :]
        noise[:, :, 1:] += noise[:, :, :-1]
        slab = img[sl] + noise[:, 1:, 1:] * np.float32(sd / 2.0)
        np.clip(slab, -1024, 3071, out=slab)
        out[sl] = np.rint(slab)
    return out


def make_phantom(seed: int, size: str = "small", **overrides) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """A seeded CT phantom: (image int16 HU (z, y, x), label uint8 (z, y, x), Geometry).

    ``size`` is "small" (paediatric-sized body for CPU demos and tests), "medium" or "real"
    (adult, 512x512). ``overrides`` replace any field of :class:`CaseParams`, e.g.
    ``num_tumours=0``, ``orientation="RAS"``, ``spacing=(3.0, 0.8, 0.8)``, ``noise_sd=0``.
    """
    t0 = time.perf_counter()
    p = sample_params(seed, size, **overrides)
    scene = build_scene(p, seed)
    tum = tumour_steps(p.num_tumours, p.tumour_diameter_mm, scene.liver, scene.avoid, p.hu["liver"],
                       np.random.default_rng([int(seed), 2]))
    image, label = render(p, scene, tum, seed)
    geo, _ = p.geometry()
    log.debug("phantom seed %d (%s, %s, %s): %.2f s", seed, size, p.orientation, geo.shape, time.perf_counter() - t0)
    return image, label, geo
