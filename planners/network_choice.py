"""Which network class the default planner writes for a stage, and why (``ExperimentPlanner.choose_network``).

The rules, first match wins:

1. ``roi``: the plain U-Net. A coarse one-patch localiser gains nothing from a heavier encoder.
2. ``organ`` without a ``roi`` stage and with several organ labels: the SpatialConfiguration-Net. Its
   model sees the whole body crop, where look-alike tissue far from the organs is the main error,
   and the coarse spatial-configuration branch suppresses it without a separate localisation model.
3. thick-slice data (median z spacing above ``anisotropy_threshold`` x in-plane): EfficientSegNet as
   published, whose anisotropic decoder convolutions (in-plane, then through-plane) were designed for
   such data and cost 12/27 of a 3x3x3 decoder.
4. a GPU budget of at least nnU-Net's ResEnc M target: the residual-encoder U-Net, named by the
   largest preset (M 8 GB, L 24 GB, XL 40 GB) the budget reaches; nnU-Net revisited (Isensee et al.
   2024) found these more accurate than the plain U-Net at the same budget.
5. otherwise the plain U-Net (nnU-Net's default below the ResEnc targets).

The patch and batch are then fitted to the budget with that class's own memory count
(``planners.network_memory``), so a heavier class gets a smaller patch, never an over-budget plan.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from autoseg.networks.resenc import RESENC_BLOCKS, RESENC_PRESETS

if TYPE_CHECKING:
    from autoseg.planners.experiment_planner import ExperimentPlanner


def thick_slice(planner: "ExperimentPlanner") -> bool:
    med = [float(v) for v in planner.ds["spacing_median"]]
    return med[0] > planner.anisotropy_threshold * max(med[1], med[2])


def choose_network(planner: "ExperimentPlanner", stage: str) -> tuple[dict, str]:
    """``({"class": ..., extra keys}, why)`` for ``stage`` by the rules in the module docstring."""
    if stage == "roi":
        return {"class": "UNet"}, "plain U-Net: the coarse roi pass is one patch and needs no heavier encoder"
    organs = planner.organ_labels()
    if stage == "organ" and "roi" not in planner.choose_stages()[0] and len(organs) > 1:
        return {"class": "SpatialConfigurationNet"}, (
            f"SpatialConfigurationNet: no roi stage, so the organ model sees the whole body crop with {len(organs)} "
            "organs; its coarse spatial-configuration branch (multiplied with the local-appearance U-Net) "
            "suppresses look-alike tissue away from where each organ sits relative to the others")
    if thick_slice(planner):
        med = [round(float(v), 2) for v in planner.ds["spacing_median"]]
        return {"class": "EfficientSegNetPublished"}, (
            f"EfficientSegNetPublished: thick-slice data (median spacing {med}, z > {planner.anisotropy_threshold:g}x "
            "in-plane); its anisotropic decoder convolutions (in-plane then through-plane) suit it and cost 12/27 "
            "of a 3x3x3 decoder")
    budget = planner.gpu_memory_gb
    reached = [(gb, name) for name, gb in RESENC_PRESETS.items() if budget >= gb]
    if reached and planner.resenc_presets:
        gb, name = max(reached)
        return {"class": "ResEncUNet", "preset": f"ResEnc{name}"}, (
            f"ResEncUNet, preset ResEnc{name}: --gpu-memory-gb {budget:g} reaches nnU-Net's ResEnc {name} target "
            f"({gb:g} GB); residual encoder with {'-'.join(map(str, RESENC_BLOCKS))} blocks per stage and one "
            "decoder conv per level, which nnU-Net revisited found more accurate than the plain U-Net at such "
            "budgets; patch and batch fitted with its own memory count")
    return {"class": "UNet"}, (f"plain U-Net: --gpu-memory-gb {budget:g} is below the smallest residual-encoder "
                               f"preset (ResEnc M, {RESENC_PRESETS['M']:g} GB)")
