"""Per-case acquisition and appearance parameters: size preset, spacing, field of view, orientation,
contrast phase, noise. Everything the scanner decides; the anatomy itself lives in anatomy.py.

Parameters are drawn in a fixed order from their own seeded stream, then user overrides replace
individual fields, then dependent fields (grid shape, spacing clamps) are derived. Overriding one
field therefore never changes the others, and never changes the anatomy.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from autoseg import AutosegError
from autoseg.io import Geometry
from autoseg.synthetic.shapes import rotation

# Adult anatomy (scale 1) spans roughly this anatomy-frame z range: kidney lower poles .. diaphragm apex.
ORGAN_SPAN_MM = (-85.0, 135.0)
LEAN_HALF_WIDTH_MM = 140.0


@dataclass(frozen=True)
class SizePreset:
    scale: float                        # anatomy scale (paediatric 'small' keeps real mm but a smaller body)
    xy_spacing: tuple[float, float]
    n_xy: tuple[int, int]
    z_spacing: tuple[float, float]
    n_z: tuple[int, int]
    tumour_diameter: tuple[float, float]


SIZES: dict[str, SizePreset] = {
    "small": SizePreset(0.65, (0.8, 1.0), (224, 256), (2.5, 5.0), (32, 80), (12.0, 35.0)),
    "medium": SizePreset(1.0, (0.7, 0.95), (384, 384), (2.0, 5.0), (48, 140), (8.0, 40.0)),
    "real": SizePreset(1.0, (0.6, 0.98), (512, 512), (1.0, 5.0), (48, 200), (8.0, 40.0)),
}

ORIENTATIONS = ("LPS", "RAS", "LPI", "oblique")
_ORIENTATION_P = (0.4, 0.3, 0.15, 0.15)


@dataclass
class CaseParams:
    size: str
    scale: float
    fat_mm: float
    spacing: tuple[float, float, float]      # (z, y, x) mm
    shape: tuple[int, int, int]              # (z, y, x)
    orientation: str
    oblique_deg: tuple[float, float]         # gantry tilt about x, rotation about z (oblique only)
    rotation_deg: float                      # patient rotation on the table, about z
    shift_mm: tuple[float, float]            # FOV centre relative to the body axis (x, y)
    z_range: tuple[float, float]             # anatomy-frame z covered by the scan
    table_origin: tuple[float, float, float]  # physical (ITK x, y, z) position of the FOV centre
    noise_sd: float
    blur_sigma: tuple[float, float, float]   # voxels (z, y, x)
    num_tumours: int
    tumour_diameter_mm: tuple[float, float]
    oral_contrast: bool
    gallbladder: bool
    table: bool
    hu: dict[str, float] = field(default_factory=dict)

    def direction(self) -> np.ndarray:
        if self.orientation == "LPS":
            return np.eye(3)
        if self.orientation == "RAS":
            return np.diag([-1.0, -1.0, 1.0])
        if self.orientation == "LPI":
            return np.diag([1.0, 1.0, -1.0])
        tilt, spin = self.oblique_deg
        return rotation(rx_deg=tilt, rz_deg=spin)

    def anatomy_rotation(self) -> np.ndarray:
        return rotation(rz_deg=self.rotation_deg)

    def geometry(self) -> tuple[Geometry, np.ndarray]:
        """The image geometry and the physical position of the anatomy-frame origin."""
        d = self.direction()
        sz, sy, sx = self.spacing
        nz, ny, nx = self.shape
        centre = np.asarray(self.table_origin, float)
        half = np.array([(nx - 1) * sx, (ny - 1) * sy, (nz - 1) * sz]) / 2
        origin = centre - d @ half
        fov_in_anatomy = np.array([self.shift_mm[0], self.shift_mm[1], sum(self.z_range) / 2])
        anatomy_origin = centre - self.anatomy_rotation() @ fov_in_anatomy
        geo = Geometry((float(sz), float(sy), float(sx)), tuple(float(v) for v in origin),
                       tuple(float(v) for v in d.ravel()), (int(nz), int(ny), int(nx)))
        return geo, anatomy_origin


def body_half_width(scale: float, fat_mm: float) -> float:
    return LEAN_HALF_WIDTH_MM * scale + fat_mm


def sample_hu(rng: np.random.Generator) -> dict[str, float]:
    """Tissue HU for a portal-venous-phase abdomen, varied per case (scanner, contrast timing, patient)."""
    u = rng.uniform
    fat = u(-115, -85)
    liver = u(95, 130)
    aorta = u(170, 260)
    return {
        "air": -1000.0, "table": u(-250, 50), "fat": fat, "visceral_fat": fat + u(-5, 12),
        "muscle": u(40, 62), "rib": u(250, 480), "lung": u(-880, -820),
        "bone_cortex": u(600, 900), "bone_marrow": u(180, 300), "disc": u(70, 100), "csf": u(5, 25),
        "liver": liver, "spleen": u(105, 130), "kidney_cortex": u(150, 190), "kidney_medulla_drop": u(10, 70),
        "urine": u(0, 20), "pancreas": u(85, 105), "aorta": aorta, "ivc": u(110, 160),
        "portal": u(140, 185), "hepatic_vein": u(120, 170), "heart_blood": aorta * u(0.75, 0.95),
        "myocardium": u(95, 125), "bowel_wall": u(85, 115), "bowel_fluid": u(5, 35),
        "oral": u(180, 320), "stool": u(-150, 40), "gallbladder": u(0, 20), "gas": u(-1000, -900),
    }


def _sample_primary(rng: np.random.Generator, size: str) -> dict:
    preset = SIZES[size]
    u = rng.uniform
    scale = preset.scale * u(0.85, 1.15)
    orientation = ORIENTATIONS[int(rng.choice(len(ORIENTATIONS), p=_ORIENTATION_P))]
    tilt = float(rng.choice([-1, 1]) * u(4, 12))
    values = dict(
        size=size, scale=scale, fat_mm=u(6, 32) * scale, orientation=orientation,
        oblique_deg=(tilt, u(-6, 6)), rotation_deg=u(-6, 6),
        shift_mm=(u(-15, 15) * scale, u(-20, 10) * scale),
        table_origin=(u(-20, 20), u(-60, 60), u(-900, -100)),
        noise_sd=u(10, 25), blur_sigma=(0.425, u(0.4, 0.65), 0.0),
        num_tumours=int(rng.choice(4, p=[0.2, 0.35, 0.25, 0.2])),
        tumour_diameter_mm=preset.tumour_diameter,
        oral_contrast=bool(u() < 0.3), gallbladder=bool(u() < 0.8), table=bool(u() < 0.7),
        hu=sample_hu(rng),
    )
    values["blur_sigma"] = (0.425, values["blur_sigma"][1], values["blur_sigma"][1])
    # Draws the derived fields need, taken now so overrides cannot shift the stream.
    values["_xy_spacing"] = u(*preset.xy_spacing)
    values["_fov_margin"] = u(1.04, 1.3)
    values["_z_spacing"] = u(*preset.z_spacing)
    values["_z_margins"] = (u(12, 45), u(10, 50))
    return values


def _derive_grid(v: dict, preset: SizePreset, overrides: dict) -> None:
    """Field of view and grid size from the body size, following how a scanner operator frames it."""
    s = v["scale"]
    half = body_half_width(s, v["fat_mm"]) * 1.03
    fov = 2 * (half + abs(v["shift_mm"][0])) * v["_fov_margin"]
    lo_xy, hi_xy = preset.xy_spacing
    n_lo, n_hi = preset.n_xy
    if "spacing" in overrides:
        sz, sxy = float(v["spacing"][0]), float(v["spacing"][2])
    else:
        sxy = min(max(v["_xy_spacing"], fov / n_hi), hi_xy)
        sz = v["_z_spacing"]
    top_m, bot_m = v["_z_margins"]
    z_lo = ORGAN_SPAN_MM[0] * s - bot_m * s
    z_hi = ORGAN_SPAN_MM[1] * s + top_m * s
    if v["orientation"] == "oblique":  # a tilted slab needs more slices to cover the same organs
        extra = math.tan(math.radians(abs(v["oblique_deg"][0]))) * 110 * s
        z_lo, z_hi = z_lo - extra, z_hi + extra
    if "z_range" in overrides:
        z_lo, z_hi = (float(t) for t in v["z_range"])
    if "shape" in overrides:
        nz, ny, nx = (int(t) for t in v["shape"])
    else:
        nxy = int(min(max(math.ceil(fov / sxy / 16) * 16, n_lo), n_hi))
        nz_lo, nz_hi = preset.n_z
        nz = math.ceil((z_hi - z_lo) / sz) + 1
        if nz > nz_hi and "spacing" not in overrides:
            sz, nz = (z_hi - z_lo) / (nz_hi - 1), nz_hi
        if nz < nz_lo:
            pad = (nz_lo * sz - (z_hi - z_lo)) / 2
            z_lo, z_hi, nz = z_lo - pad, z_hi + pad, nz_lo
        ny = nx = nxy
    v["spacing"] = (float(sz), float(sxy), float(sxy)) if "spacing" not in overrides else tuple(
        float(t) for t in v["spacing"])
    v["shape"] = (int(nz), int(ny), int(nx))
    v["z_range"] = (float(z_lo), float(z_lo + (nz - 1) * v["spacing"][0])) if "z_range" not in overrides \
        else (float(z_lo), float(z_hi))


def sample_params(seed: int, size: str = "small", **overrides) -> CaseParams:
    """Draw a case's acquisition parameters; ``overrides`` replace any CaseParams field."""
    if size not in SIZES:
        raise AutosegError(f"unknown phantom size '{size}' (choose from {', '.join(SIZES)})")
    names = {f.name for f in dataclasses.fields(CaseParams)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise AutosegError(f"unknown phantom override(s) {unknown}; known: {', '.join(sorted(names))}")
    if "orientation" in overrides and overrides["orientation"] not in ORIENTATIONS:
        raise AutosegError(f"unknown orientation '{overrides['orientation']}' (choose from {ORIENTATIONS})")
    rng = np.random.default_rng([int(seed), 0])
    v = _sample_primary(rng, size)
    for k, val in overrides.items():
        if k == "hu":
            v["hu"] = {**v["hu"], **val}
        else:
            v[k] = val
    _derive_grid(v, SIZES[size], overrides)
    return CaseParams(**{k: val for k, val in v.items() if not k.startswith("_")})
