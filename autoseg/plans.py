"""The plans JSON: the contract between planning, preprocessing, training and inference.

Plans are plain dicts so users can edit them by hand; ``validate_plans`` checks every key a later
stage relies on and fails with the key's dotted name. Unknown keys are kept untouched.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from autoseg import AutosegError
from autoseg.paths import check_dataset_name
from autoseg.utils import load_json, save_json

SCHEMA_VERSION = 1
STAGES = ("roi", "organ", "tumour")
STAGE_INPUTS = ("whole", "roi_crop", "organ_crop")
NETWORK_CLASSES = ("UNet", "EfficientSegNet")


def _fail(where: str, key: str, what: str) -> None:
    raise AutosegError(f"{where}: plans key '{key}' {what}")


def _check_vec(where: str, key: str, v: Any, kind: type, n: int = 3) -> None:
    ok = isinstance(v, list) and len(v) == n and all(isinstance(x, (int, float) if kind is float else int)
                                                     and not isinstance(x, bool) and x > 0 for x in v)
    if not ok:
        _fail(where, key, f"must be a list of {n} positive {'numbers' if kind is float else 'integers'}, got {v!r}")


def _validate_network(where: str, key: str, net: Any) -> None:
    if not isinstance(net, dict):
        _fail(where, key, "must be an object")
    # Any registered class name is allowed (users register their own); build_network names unknown ones.
    if not (isinstance(net.get("class"), str) and net["class"]):
        _fail(where, f"{key}.class", f"must be a network class name such as {NETWORK_CLASSES}, got {net.get('class')!r}")
    feats = net.get("features")
    if not (isinstance(feats, list) and feats and all(isinstance(f, int) and f > 0 for f in feats)):
        _fail(where, f"{key}.features", f"must be a non-empty list of positive integers, got {feats!r}")
    for k in ("kernel_sizes", "strides"):
        v = net.get(k)
        if not (isinstance(v, list) and len(v) == len(feats)):
            _fail(where, f"{key}.{k}", f"must be a list with one entry per stage ({len(feats)}), got {v!r}")
        for i, e in enumerate(v):
            _check_vec(where, f"{key}.{k}[{i}]", e, int)
    if net.get("blocks", "plain") not in ("plain", "residual"):
        _fail(where, f"{key}.blocks", f"must be 'plain' or 'residual', got {net.get('blocks')!r}")


def validate_stage(where: str, name: str, st: Any, labels: dict[str, int]) -> None:
    key = f"stages.{name}"
    if not isinstance(st, dict):
        _fail(where, key, "must be an object")
    _check_vec(where, f"{key}.target_spacing", st.get("target_spacing"), float)
    _check_vec(where, f"{key}.patch_size", st.get("patch_size"), int)
    bs = st.get("batch_size")
    if not (isinstance(bs, int) and bs > 0):
        _fail(where, f"{key}.batch_size", f"must be a positive integer, got {bs!r}")
    classes = st.get("classes")
    label_values = set(labels.values()) - {0}
    if classes != "foreground":
        if not (isinstance(classes, list) and classes and all(isinstance(c, int) for c in classes)):
            _fail(where, f"{key}.classes", f"must be 'foreground' or a non-empty list of label values, got {classes!r}")
        unknown = sorted(set(classes) - label_values)
        if unknown:
            _fail(where, f"{key}.classes", f"names label values {unknown} not in 'labels'")
    if st.get("input", "whole") not in STAGE_INPUTS:
        _fail(where, f"{key}.input", f"must be one of {STAGE_INPUTS}, got {st.get('input')!r}")
    if "crop_margin_mm" in st:
        _check_vec(where, f"{key}.crop_margin_mm", [m + 1e-9 for m in st["crop_margin_mm"]]
                   if isinstance(st["crop_margin_mm"], list) else st["crop_margin_mm"], float)
    if "host_organs" in st and not (isinstance(st["host_organs"], list)
                                    and all(isinstance(c, int) for c in st["host_organs"])):
        _fail(where, f"{key}.host_organs", f"must be a list of label values, got {st['host_organs']!r}")
    _validate_network(where, f"{key}.network", st.get("network"))
    net = st["network"]
    stride = [1, 1, 1]
    for s in net["strides"]:
        stride = [a * b for a, b in zip(stride, s)]
    if any(p % s for p, s in zip(st["patch_size"], stride)):
        _fail(where, f"{key}.patch_size", f"{st['patch_size']} is not divisible by the network's total stride {stride}")


def validate_plans(plans: Any, where: str = "plans") -> dict:
    """Check a plans dict; raise AutosegError naming the first bad key. Returns the plans."""
    if not isinstance(plans, dict):
        raise AutosegError(f"{where}: plans must be a JSON object")
    if plans.get("schema_version") != SCHEMA_VERSION:
        _fail(where, "schema_version", f"must be {SCHEMA_VERSION}, got {plans.get('schema_version')!r}")
    for key, typ in (("dataset_name", str), ("labels", dict), ("intensity", dict), ("stages", dict)):
        if not isinstance(plans.get(key), typ):
            _fail(where, key, f"is missing or not a {typ.__name__}")
    labels = plans["labels"]
    if not all(isinstance(v, int) for v in labels.values()):
        _fail(where, "labels", "must map names to integer values")
    inten = plans["intensity"]
    if inten.get("scheme") not in ("ct", "zscore"):
        _fail(where, "intensity.scheme", f"must be 'ct' or 'zscore', got {inten.get('scheme')!r}")
    if inten["scheme"] == "ct":
        clip = inten.get("clip")
        if not (isinstance(clip, list) and len(clip) == 2 and clip[0] < clip[1]):
            _fail(where, "intensity.clip", f"must be [low, high] with low < high, got {clip!r}")
    for k in ("mean", "std"):
        if not isinstance(inten.get(k), (int, float)):
            _fail(where, f"intensity.{k}", "is missing or not a number")
    if inten["std"] <= 0:
        _fail(where, "intensity.std", "must be positive")
    if not plans["stages"]:
        _fail(where, "stages", "must hold at least one stage")
    for name, st in plans["stages"].items():
        if name not in STAGES:
            _fail(where, f"stages.{name}", f"is not a known stage ({', '.join(STAGES)})")
        validate_stage(where, name, st, labels)
    tr = plans.get("transpose", [0, 1, 2])
    if sorted(tr) != [0, 1, 2]:
        _fail(where, "transpose", f"must be a permutation of [0, 1, 2], got {tr!r}")
    return plans


def load_plans(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise AutosegError(f"{path}: plans not found (run 'autoseg plan_and_preprocess' first)")
    plans = validate_plans(load_json(path), str(path))
    check_dataset_name(plans["dataset_name"], str(path), path.resolve().parent)
    return plans


def save_plans(plans: dict, path: str | os.PathLike) -> None:
    validate_plans(plans, str(path))
    save_json(plans, path)


def stage_classes(plans: dict, stage: str) -> list[int]:
    """Original label values predicted by a stage; network channel i+1 is ``stage_classes[i]``."""
    classes = plans["stages"][stage]["classes"]
    if classes == "foreground":
        return [1]
    return list(classes)


def num_outputs(plans: dict, stage: str) -> int:
    return 1 + len(stage_classes(plans, stage))


def tumour_label_values(plans: dict) -> list[int]:
    if "tumour" in plans["stages"]:
        return stage_classes(plans, "tumour")
    return list(plans.get("tumour_labels", []))


def organ_label_values(plans: dict) -> list[int]:
    tum = set(tumour_label_values(plans))
    return sorted(v for v in plans["labels"].values() if v != 0 and v not in tum)
