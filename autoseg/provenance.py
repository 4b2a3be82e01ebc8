"""Where a checkpoint or a cached case came from, checked before it is used.

A model is only meaningful with the labels it was trained on: a tumour model from another dataset
writes its lesion value into whatever organ carries that value here. Checkpoints therefore carry a
``provenance`` record (dataset, labels, stage classes, plans digest, cache hash) beside their plans,
and every stage and fold of one prediction must agree on dataset and labels. Checkpoints written
before the record existed still carry their full plans (the loader has always required them), so
they are checked the same way from the plans; they are accepted, not refused.

Cached cases record the hash of the plans entries that shaped their arrays (``stage_hash``); the
trainer refuses a cache made for other plans instead of training on it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from autoseg import AutosegError
from autoseg.paths import preprocessed_root
from autoseg.plans import stage_classes
from autoseg.preprocessing.cache import stage_hash
from autoseg.utils import load_json

PROVENANCE_KEY = "provenance"


def plans_digest(plans: dict) -> str:
    """Short sha256 of the plans as canonical JSON: which plans file a model was trained from."""
    return hashlib.sha256(json.dumps(plans, sort_keys=True).encode()).hexdigest()[:16]


def _labels(plans: dict) -> dict[str, int]:
    return {str(k): int(v) for k, v in plans["labels"].items()}


def checkpoint_provenance(plans: dict, stage: str) -> dict[str, Any]:
    """The record a trainer stores in each checkpoint under ``provenance``."""
    return {"dataset_name": plans["dataset_name"], "labels": _labels(plans), "stage": stage,
            "classes": stage_classes(plans, stage), "plans_sha256": plans_digest(plans),
            "stage_hash": stage_hash(plans, stage)}


def check_checkpoint_record(path: str | os.PathLike, ckpt: Mapping[str, Any], plans: dict, stage: str) -> None:
    """A checkpoint's provenance record must describe the plans it carries (a mismatch means the
    file was assembled from parts); checkpoints without a record are checked from their plans alone."""
    rec = ckpt.get(PROVENANCE_KEY)
    if rec is None:
        return
    if not isinstance(rec, Mapping):
        raise AutosegError(f"{path}: checkpoint key '{PROVENANCE_KEY}' must be a dict, got {type(rec).__name__}")
    expected = {"dataset_name": plans["dataset_name"], "labels": _labels(plans), "stage": stage,
                "classes": stage_classes(plans, stage)}
    for key, want in expected.items():
        got = rec.get(key)
        if key == "labels" and isinstance(got, Mapping):
            got = {str(k): int(v) for k, v in got.items()}
        if got != want:
            raise AutosegError(f"{path}: checkpoint provenance '{key}' is {got!r} but its plans say {want!r}; "
                               "the checkpoint was not written by one training run")


def check_same_origin(path: str | os.PathLike, plans: dict, ref_path: str | os.PathLike, ref_plans: dict,
                      what: str = "stages and folds of one prediction") -> None:
    """``path`` must come from the dataset and labels of ``ref_path`` (names the offending file)."""
    if plans["dataset_name"] != ref_plans["dataset_name"]:
        raise AutosegError(f"{path}: trained for dataset {plans['dataset_name']!r}, but {ref_path} for "
                           f"{ref_plans['dataset_name']!r}; {what} must come from one dataset")
    if _labels(plans) != _labels(ref_plans):
        raise AutosegError(f"{path}: trained with labels {_labels(plans)}, but {ref_path} with "
                           f"{_labels(ref_plans)}; {what} must share the labels")


def check_stage_origins(stages: Mapping[str, tuple[dict, str | os.PathLike]], dataset: str | None = None) -> None:
    """``stages``: ``{stage: (plans, checkpoint)}``. Every stage must be from ``dataset`` (the one asked
    for with ``-t``) when given, and all from the same dataset with the same labels."""
    if dataset is not None:
        for stage, (plans, path) in stages.items():
            if plans["dataset_name"] != dataset:
                raise AutosegError(f"{path}: {stage} checkpoint was trained for dataset "
                                   f"{plans['dataset_name']!r}, not {dataset!r} (-t); it does not belong here")
    # The organ model is the one every prediction needs: judge the others against it.
    order = sorted(stages, key=lambda s: s != "organ")
    if not order:
        return
    ref_plans, ref_path = stages[order[0]]
    for stage in order[1:]:
        plans, path = stages[stage]
        check_same_origin(path, plans, ref_path, ref_plans)


def fix_command(dataset_folder: Path, stage: str) -> str:
    cmd = f"autoseg plan_and_preprocess -t {dataset_folder.name} --stages {stage}"
    if dataset_folder.parent.resolve() != preprocessed_root().resolve():
        cmd += f" --preprocessed {dataset_folder.parent}"
    return cmd


def check_cache_plans(dataset_folder: str | os.PathLike, stage: str, case_ids: list[str], plans: dict) -> None:
    """Refuse cached cases of ``stage`` that were not made with these plans (hand-edited since, or
    made by an older autoseg), naming the command that remakes them."""
    folder = Path(dataset_folder)
    expected = stage_hash(plans, stage)
    stale = []
    for cid in case_ids:
        try:
            got = load_json(folder / stage / f"{cid}.json").get("stage_hash")
        except (AutosegError, OSError, ValueError, AttributeError):
            got = None
        if got != expected:
            stale.append(cid)
    if stale:
        more = f" and {len(stale) - 3} more" if len(stale) > 3 else ""
        raise AutosegError(f"{folder / stage}: cached case(s) {', '.join(stale[:3])}{more} were preprocessed "
                           f"for other plans than {folder / 'plans.json'} (edited since?); remake them with: "
                           f"{fix_command(folder, stage)}")
