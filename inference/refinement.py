"""Iterative saliency refinement (after RSTN): a stage whose input holds, besides the CT crop, the
previous prediction of some organs as saliency channels, run again on its own output until two rounds
agree (DSC >= ``refine.stop_dsc``, default 0.99) or ``refine.max_rounds`` is reached.

The saliency is the previous prediction's mask of each saliency class (1 inside, 0 outside), resampled
to the stage's grid like the CT (so trilinearly soft at the edges): the fused predictor keeps labels,
not probabilities, on the device. Training feeds ground-truth masks perturbed the way a coarse model
errs (``autoseg.trainers.saliency``), then the source stage's own predictions on the training cases,
made the same way as here (``autoseg.preprocessing.coarse_saliency``; schedule:
``autoseg.trainers.saliency_schedule``).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from autoseg.stage_graph import stage_input

if TYPE_CHECKING:
    from autoseg.inference.models import StageModel
    from autoseg.inference.predictor import CascadePredictor
    from autoseg.inference.profiling import CaseProfile

log = logging.getLogger(__name__)


def saliency_masks(labels: torch.Tensor, classes: tuple[int, ...]) -> torch.Tensor:
    """(C, *labels.shape) float masks, one per saliency class."""
    return torch.stack([labels == c for c in classes]).to(torch.float32)


def mask_dice(a: torch.Tensor, b: torch.Tensor) -> float:
    """DSC of two mask stacks; two empty masks agree (1.0)."""
    inter = float((a * b).sum())
    total = float(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * inter / total


def refine_stage(pred: "CascadePredictor", sm: "StageModel", vol: torch.Tensor, box: list, spacing: list[float],
                 out: torch.Tensor, probs: dict, prof: "CaseProfile") -> torch.Tensor:
    """Labels of a saliency stage inside ``box`` (``out``'s frame), iterated as its plans' ``refine``
    block says (one round without it); rounds and seconds per round go to the case profile."""
    classes = stage_input(sm.plans, sm.stage).saliency_classes
    refine = sm.config.get("refine") or {}
    max_rounds = int(refine.get("max_rounds", 1)) if refine else 1
    stop = float(refine.get("stop_dsc", 0.99))
    region = out[tuple(slice(lo, hi) for lo, hi in box)]
    prev = saliency_masks(region, classes)
    seconds, agreement, labels = [], [], None
    for _ in range(max_rounds):
        prof._sync()
        t0 = time.perf_counter()
        labels = pred._stage_safe(sm, vol, box, spacing, probs, prof, saliency=prev)
        # a saliency class the stage does not predict keeps its source's mask in later rounds
        cur = torch.stack([(labels == c) if c in sm.classes else (region == c).to(labels.device)
                           for c in classes]).to(torch.float32).to(prev.device)
        prof._sync()
        seconds.append(round(time.perf_counter() - t0, 4))
        agreement.append(round(mask_dice(prev, cur), 4))
        prev = cur
        if agreement[-1] >= stop:
            break
    prof.info[sm.stage] = {"rounds": len(seconds), "seconds_per_round": seconds, "dsc_to_previous": agreement}
    log.debug("stage %s: %d round(s), DSC to previous %s", sm.stage, len(seconds), agreement)
    return labels
