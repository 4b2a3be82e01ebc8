"""The stage graph in plans.json: what each stage reads, and the order the stages run in.

A stage's ``input`` names its crop source (``"body"``, or another stage whose predicted ``labels``
box, grown by ``margin_mm``, is the crop) and optionally a ``saliency`` source (another stage's
probabilities for some classes as extra channels). Preprocessing and the predictor walk the stages in
``stage_order``: dependencies first, otherwise in the order the plans list them. A stage predicting
``"foreground"`` is a localiser: it yields a box, no labels.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

from autoseg.plans_schema import fail

log = logging.getLogger(__name__)

BODY = "body"
_V1_INPUTS = {"whole": BODY, "roi_crop": "roi", "organ_crop": "organ"}


@dataclass(frozen=True)
class StageInput:
    crop: str                                   # "body" or a stage name
    labels: tuple[int, ...] | None              # the source's labels whose box is the crop (None: its classes)
    margin_mm: tuple[float, float, float]
    saliency_stage: str | None
    saliency_classes: tuple[int, ...]


def stage_input(plans: dict, stage: str) -> StageInput:
    inp = plans["stages"][stage].get("input") or {}
    sal = inp.get("saliency") or {}
    labels = inp.get("labels")
    return StageInput(inp.get("crop", BODY), tuple(labels) if labels is not None else None,
                      tuple(float(m) for m in inp.get("margin_mm", [0.0, 0.0, 0.0])),
                      sal.get("stage"), tuple(sal.get("classes", ())))


def is_localiser(plans: dict, stage: str) -> bool:
    return plans["stages"][stage]["classes"] == "foreground"


def dependencies(plans: dict, stage: str) -> list[str]:
    si = stage_input(plans, stage)
    return [s for s in (si.crop if si.crop != BODY else None, si.saliency_stage) if s is not None]


def stage_order(plans: dict) -> list[str]:
    """Stages with every dependency before its dependents; ties keep the plans' order."""
    done: list[str] = []
    names = list(plans["stages"])
    while len(done) < len(names):
        ready = [s for s in names if s not in done and all(d in done for d in dependencies(plans, s))]
        if not ready:  # check_graph refuses cycles; never loop forever on unchecked plans
            raise ValueError(f"cycle among stages {[s for s in names if s not in done]}")
        done.append(ready[0])
    return done


def crop_labels(plans: dict, stage: str) -> list[int]:
    """Label values whose box (predicted at inference, ground truth in preprocessing) is ``stage``'s
    crop: ``input.labels``, else the source stage's classes (all labels for a localiser)."""
    si = stage_input(plans, stage)
    if si.crop == BODY:
        return []
    if si.labels is not None:
        return list(si.labels)
    if is_localiser(plans, si.crop):
        return sorted(v for v in plans["labels"].values() if v != 0)
    return list(plans["stages"][si.crop]["classes"])


def stage_in_channels(plans: dict, stage: str) -> int:
    """Network input channels: the image channels, plus one per saliency class."""
    return int(plans.get("num_image_channels", 1)) + len(stage_input(plans, stage).saliency_classes)


def check_graph(plans: dict, where: str) -> None:
    """Sources exist, saliency classes are the source's, no cycles: else one line naming the key."""
    stages = plans["stages"]
    values = set(plans["labels"].values()) - {0}
    for name in stages:
        si, key = stage_input(plans, name), f"stages.{name}.input"
        if si.crop != BODY and si.crop not in stages:
            fail(where, f"{key}.crop", f"names stage '{si.crop}', which is not in stages "
                 f"({', '.join(stages)}); use 'body' or one of them")
        if si.crop == name:
            fail(where, f"{key}.crop", "a stage cannot crop from its own prediction")
        bad = sorted(set(si.labels or ()) - values)
        if bad:
            fail(where, f"{key}.labels", f"names label values {bad} not in 'labels'")
        if si.saliency_stage is not None:
            src = si.saliency_stage
            if src not in stages or src == name:
                fail(where, f"{key}.saliency.stage", f"names stage '{src}', which is not another stage in "
                     f"stages ({', '.join(stages)}): a saliency stage needs its source")
            if is_localiser(plans, src):
                fail(where, f"{key}.saliency.stage", f"'{src}' is a localiser (classes 'foreground'); "
                     "saliency comes from a stage that predicts classes")
            missing = sorted(set(si.saliency_classes) - set(stages[src]["classes"]))
            if missing:
                fail(where, f"{key}.saliency.classes", f"{missing} are not classes of stage '{src}'")
    for name in stages:
        path = _cycle_from(plans, name, [])
        if path:
            fail(where, f"stages.{name}.input", f"cycle in the stage graph: {' -> '.join(path)}")


def _cycle_from(plans: dict, stage: str, trail: list[str]) -> list[str] | None:
    if stage in trail:
        return trail[trail.index(stage):] + [stage]
    for dep in dependencies(plans, stage):
        if dep in plans["stages"]:
            found = _cycle_from(plans, dep, trail + [stage])
            if found:
                return found
    return None


def migrate_v1(plans: dict, where: str) -> dict:
    """Schema 1 (fixed roi/organ/tumour, ``input`` a word, margins and host organs beside it) -> 2
    (``input`` an object naming its source stage, labels and margin). Returns a migrated copy."""
    out = copy.deepcopy(plans)
    stages = out.get("stages")
    if not isinstance(stages, dict):
        return out
    roi_margin = (stages.get("roi") or {}).get("crop_margin_mm") if isinstance(stages.get("roi"), dict) else None
    for name, st in stages.items():
        if not isinstance(st, dict) or isinstance(st.get("input"), dict):
            continue
        word = st.get("input", "roi_crop" if name == "organ" else "whole")
        if name == "tumour":  # schema 1 always cropped the tumour stage around its host organs
            word = "organ_crop"
        src = _V1_INPUTS.get(word, word)
        if src in ("roi", "organ") and src not in stages:  # schema 1 fell back to the body crop
            src = BODY
        inp: dict = {"crop": src}
        if src == "roi" and roi_margin is not None:
            inp["margin_mm"] = roi_margin
        elif src == "organ":
            if "host_organs" in st:
                inp["labels"] = st.pop("host_organs")
            if "crop_margin_mm" in st:
                inp["margin_mm"] = st.pop("crop_margin_mm")
        st["input"] = inp
    if isinstance(stages.get("roi"), dict):
        stages["roi"].pop("crop_margin_mm", None)
    out["schema_version"] = 2
    log.info("%s: plans schema_version 1 read as schema_version 2 (each stage's 'input' now names its source "
             "stage, labels and margin_mm); the file is unchanged: replan or save it to store the new form", where)
    return out
