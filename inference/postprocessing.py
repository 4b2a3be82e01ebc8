"""Connected-component clean-up learned from validation predictions.

Per label we try "keep only the largest component" and "drop components below N voxels" and keep a
rule only when it raised the mean DSC over the validation cases: a rule that helps one organ (a liver
with stray islands) can hurt another (two kidneys are two components). Rules are plain JSON.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any, Sequence

import cc3d
import numpy as np
import torch
from scipy import ndimage

log = logging.getLogger(__name__)
CONNECTIVITY = 26
MIN_GAIN = 1e-4  # a rule must beat doing nothing by more than noise
SIZE_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5)  # candidate thresholds, relative to the median GT volume


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Component ids and voxel counts (index 0 = background) of a binary mask."""
    comp, n = cc3d.connected_components(mask.astype(np.uint8, copy=False), connectivity=CONNECTIVITY,
                                        return_N=True)
    counts = np.bincount(comp.ravel(), minlength=n + 1)
    return comp, counts


def rule_min_voxels(rule: dict, spacing: Sequence[float] | None = None) -> int:
    """A rule's size threshold in voxels of a grid with ``spacing`` (mm³ rules convert, voxel rules don't)."""
    if rule.get("min_volume_mm3") and spacing is not None:
        return int(math.ceil(float(rule["min_volume_mm3"]) / float(np.prod(spacing)) - 1e-9))
    return int(rule.get("min_size", 0) or 0)


def _keep_ids(counts: np.ndarray, rule: dict, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Boolean per component id (0 excluded) of what a rule keeps."""
    keep = np.zeros(len(counts), dtype=bool)
    if len(counts) <= 1:
        return keep
    keep[1:] = True
    if rule.get("keep_largest"):
        keep[1:] = False
        keep[1 + int(np.argmax(counts[1:]))] = True
    n = rule_min_voxels(rule, spacing)
    if n > 1:
        keep &= counts >= n
    keep[0] = False
    return keep


def _apply_numpy(seg: np.ndarray, rules: dict[str, dict], spacing: Sequence[float] | None) -> np.ndarray:
    wanted = {int(k): r for k, r in rules.items()
              if r.get("keep_largest") or r.get("min_size") or r.get("min_volume_mm3")}
    if not wanted:
        return seg
    seg = seg.copy()
    # One pass finds every label's bounding box; each label is then cleaned inside its own box only.
    max_label = int(max(wanted))
    src = seg if seg.dtype.kind in "iu" and seg.dtype.itemsize <= 4 else seg.astype(np.int32)
    boxes = ndimage.find_objects(np.where(src > max_label, 0, src), max_label=max_label)
    for label, rule in wanted.items():
        box = boxes[label - 1] if label - 1 < len(boxes) else None
        if box is None:
            continue
        region = seg[box]
        mask = region == label
        comp, counts = _components(mask)
        drop = mask & ~_keep_ids(counts, rule, spacing)[comp]
        region[drop] = 0
    return seg


def apply_postprocessing(seg: np.ndarray | torch.Tensor, rules: dict,
                         spacing: Sequence[float] | None = None) -> np.ndarray | torch.Tensor:
    """Apply learned rules (``{"rules": {label: rule}}`` or the bare label map) to a label volume.

    Removed voxels become background. With ``spacing`` a rule's ``min_volume_mm3`` sets the size
    threshold (rules learned on a coarser grid stay right at full resolution); else ``min_size``
    voxels. Returns the same type (and device) as given.
    """
    rules = rules.get("rules", rules) if isinstance(rules, dict) else {}
    if isinstance(seg, torch.Tensor):
        out = _apply_numpy(seg.detach().cpu().numpy(), rules, spacing)
        return torch.as_tensor(out).to(seg.device)
    return _apply_numpy(np.asarray(seg), rules, spacing)


def _candidate_rules(gt_volumes: list[int]) -> list[dict]:
    rules: list[dict] = [{"keep_largest": True}]
    median = float(np.median(gt_volumes)) if gt_volumes else 0.0
    for n in sorted({int(f * median) for f in SIZE_FRACTIONS}):
        if n >= 2:
            rules.append({"min_size": n})
    return rules


def learn_postprocessing(cases: Sequence[tuple[Any, Any]], labels: Sequence[int],
                         spacing: Sequence[float] | None = None) -> dict:
    """Learn per-label rules from ``(prediction, ground truth)`` label volumes (original label values).

    Returns ``{"rules": {str(label): rule}, "dsc_before": {...}, "dsc_after": {...}, "num_cases": n}``,
    where a rule is ``{"keep_largest": true}`` or ``{"min_size": N}`` (plus ``min_volume_mm3`` when the
    cases' ``spacing`` is given) and appears only if it improved that label's mean DSC on these cases.
    """
    from autoseg.evaluation.metrics import dice

    arrays = [(np.asarray(p.cpu() if isinstance(p, torch.Tensor) else p),
               np.asarray(g.cpu() if isinstance(g, torch.Tensor) else g)) for p, g in cases]
    result: dict[str, Any] = {"rules": {}, "dsc_before": {}, "dsc_after": {}, "num_cases": len(arrays)}
    for label in labels:
        label = int(label)
        per_case = []  # (gt mask, pred mask, comp ids, counts) — components computed once per case
        for pred, gt in arrays:
            pm, gm = pred == label, gt == label
            comp, counts = _components(pm)
            per_case.append((gm, pm, comp, counts))
        base = float(np.mean([dice(gm, pm) for gm, pm, _, _ in per_case])) if per_case else 1.0
        best, best_dsc = None, base
        for rule in _candidate_rules([int(gm.sum()) for gm, _, _, _ in per_case if gm.any()]):
            scores = []
            for gm, pm, comp, counts in per_case:
                keep = _keep_ids(counts, rule)
                scores.append(dice(gm, keep[comp]) if not keep[1:].all() else dice(gm, pm))
            score = float(np.mean(scores))
            if score > best_dsc + MIN_GAIN:
                best, best_dsc = rule, score
        result["dsc_before"][str(label)] = base
        result["dsc_after"][str(label)] = best_dsc
        if best is not None:
            if "min_size" in best and spacing is not None:
                best = {**best, "min_volume_mm3": round(best["min_size"] * float(np.prod(spacing)), 3)}
            result["rules"][str(label)] = best
            log.info("postprocessing label %d: %s raises mean DSC %.4f -> %.4f", label, best, base, best_dsc)
    return result


def merge_fold_rules(fold_rules: Sequence[dict]) -> dict:
    """One rule set for an ensemble: a label's rule applies when a majority of folds chose the same rule."""
    if not fold_rules:
        return {"rules": {}}
    votes: dict[str, Counter] = {}
    for fr in fold_rules:
        for label, rule in fr.get("rules", {}).items():
            votes.setdefault(label, Counter())[tuple(sorted(rule.items()))] += 1
    merged = {}
    for label, counter in votes.items():
        rule, n = counter.most_common(1)[0]
        if n * 2 > len(fold_rules):
            merged[label] = dict(rule)
    return {"rules": merged}
