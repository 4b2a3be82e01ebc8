"""NSD tolerance presets of the FLARE challenges, matched to label names whatever their spelling.

FLARE21 scored four organs at 1 mm. FLARE22 and FLARE23 give each organ its own tolerance (larger for
organs whose boundary annotators disagree on more) and score the aorta, inferior vena cava and
esophagus only on the axial slices the ground truth covers, because those tubes are cut at arbitrary
heights by the annotators. Datasets spell organs differently ("kidney_left", "Left Kidney", "LK",
"liver_tumour", "lesion"), so names are reduced to a canonical organ before the lookup.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Mapping

from autoseg import AutosegError

log = logging.getLogger(__name__)

# Canonical organ -> patterns searched in the normalised name (lower case, words separated by one
# space, camelCase split). Checked in this order: a tumour of the liver is a tumour, the "splenic
# vein" or a "hepatic vessel" is a vessel (no preset tolerance), an adrenal ("suprarenal") gland is
# not a kidney.
_ORGAN_PATTERNS: tuple[tuple[str, str], ...] = (
    ("tumour", r"tumou?r|lesion|cancer|carcinoma|neoplasm|metasta|\bhcc\b"),
    ("vessel", r"\bveins?\b|vessel|portal|arter"),
    ("adrenal", r"adrenal|suprarenal|\b[lr]ag\b"),
    ("kidney", r"kidney|renal|\b[lr]k\b"),
    ("liver", r"liver|hepat"),
    ("spleen", r"spleen|splenic|\blien\b"),
    ("pancreas", r"pancrea"),
    ("aorta", r"aort"),
    ("ivc", r"\bivc\b|vena cava|\bcava\b|postcava"),
    ("gallbladder", r"gall ?bladder|\bgb\b|\bgall\b"),
    ("esophagus", r"o?esophag|\beso\b"),
    ("stomach", r"stomach|gastric|\bsto\b"),
    ("duodenum", r"duoden"),
)

_FLARE22 = {"liver": 5.0, "kidney": 3.0, "spleen": 3.0, "pancreas": 5.0, "aorta": 2.0, "ivc": 2.0,
            "adrenal": 2.0, "gallbladder": 2.0, "esophagus": 3.0, "stomach": 5.0, "duodenum": 7.0,
            "tumour": 2.0}
_GT_SLICES_ONLY = frozenset({"aorta", "ivc", "esophagus"})


@dataclass(frozen=True)
class TolerancePreset:
    """Tolerance (mm) per canonical organ, the fallback for other names, and the FLARE slice rule."""

    name: str
    per_organ: Mapping[str, float] = field(default_factory=dict)
    default_mm: float = 2.0
    gt_slices_only: frozenset[str] = frozenset()

    def tolerance_for(self, label_name: str | None) -> float:
        organ = canonical_organ(label_name) if label_name else None
        return float(self.per_organ.get(organ, self.default_mm)) if organ else float(self.default_mm)

    def restrict_to_gt_slices(self, label_name: str | None) -> bool:
        return bool(label_name) and canonical_organ(label_name) in self.gt_slices_only


PRESETS: dict[str, TolerancePreset] = {
    "flare21": TolerancePreset("flare21", {}, 1.0),
    "flare22": TolerancePreset("flare22", _FLARE22, 2.0, _GT_SLICES_ONLY),
    "flare23": TolerancePreset("flare23", _FLARE22, 2.0, _GT_SLICES_ONLY),
}


def _normalise(name: str) -> str:
    name = re.sub(r"([a-z])([A-Z])", r"\1 \2", str(name))
    return " ".join(re.split(r"[^a-z0-9]+", name.lower())).strip()


def canonical_organ(name: str) -> str | None:
    """The canonical organ a label name refers to ("Kidney_L" -> "kidney"), or None if unknown."""
    norm = _normalise(name)
    for organ, pattern in _ORGAN_PATTERNS:
        if re.search(pattern, norm):
            return organ
    return None


def get_preset(spec: "str | float | int | TolerancePreset") -> TolerancePreset:
    """A preset from a name (flare21/22/23), a number of mm for every class, or a preset itself."""
    if isinstance(spec, TolerancePreset):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        value = float(spec)
    else:
        key = str(spec).strip().lower()
        if key in PRESETS:
            return PRESETS[key]
        try:
            value = float(key.removesuffix("mm"))
        except ValueError:
            raise AutosegError(f"tolerances: unknown preset {spec!r} (use {', '.join(PRESETS)} "
                               "or a number of mm)") from None
    if not value > 0 or value == float("inf"):
        raise AutosegError(f"tolerances: {spec!r} is not a positive finite number of mm")
    return TolerancePreset(f"{value:g}mm", {}, value)


_warned: set[tuple[str, tuple[str, ...]]] = set()


def resolve_tolerances(labels: Mapping[int, str | None], spec: "str | float | TolerancePreset | Mapping[int, float]"
                       ) -> tuple[dict[int, float], set[int]]:
    """Per label value: NSD tolerance in mm, and the set of labels scored on GT slices only.

    ``spec`` may also map label values to mm directly. Names a preset does not know fall back to its
    default, with one warning naming them, so an unusual dataset still gets scored.
    """
    if isinstance(spec, Mapping):
        missing = [v for v in labels if v not in spec]
        if missing:
            raise AutosegError(f"tolerances: no tolerance given for labels {missing}")
        return {v: float(spec[v]) for v in labels}, set()
    preset = get_preset(spec)
    tol = {v: preset.tolerance_for(n) for v, n in labels.items()}
    if preset.per_organ:
        unknown = tuple(n or f"label_{v}" for v, n in labels.items()
                        if not n or canonical_organ(n) not in preset.per_organ)
        if unknown and (preset.name, unknown) not in _warned:  # once per process, not once per case
            _warned.add((preset.name, unknown))
            log.warning("tolerances %s: no organ matched for %s; using %g mm", preset.name,
                        ", ".join(unknown), preset.default_mm)
    slices = {v for v, n in labels.items() if preset.restrict_to_gt_slices(n)}
    return tol, slices
