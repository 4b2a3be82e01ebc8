"""The plans JSON: the contract between planning, preprocessing, training and inference.

Plans are plain dicts so users can edit them by hand; ``validate_plans`` checks every key a later
stage relies on (``autoseg.plans_schema``, pydantic) and the stage graph (``autoseg.stage_graph``), and
fails with the key's dotted name. Unknown keys are kept untouched.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from autoseg import AutosegError
from autoseg.paths import check_dataset_name
from autoseg.plans_schema import NetworkModel, PlansModel, check, fail
from autoseg.stage_graph import check_graph, migrate_v1, stage_in_channels, stage_order
from autoseg.utils import load_json, save_json

SCHEMA_VERSION = 2
STAGES = ("roi", "organ", "tumour")  # the default planner's stage names; plans may name any others
NETWORK_CLASSES = ("UNet", "EfficientSegNet")
PLANS_NAME = "plans"


def validate_network(net: Any, where: str, key: str = "network") -> dict:
    """Check a network config with its class's own ``config_model`` (pydantic; default: the U-shaped
    networks' ``NetworkModel``); the class must be registered (user files on the trainer path count)."""
    from autoseg.networks.registry import network_class

    if not isinstance(net, dict):
        fail(where, key, f"must be an object, got {type(net).__name__}")
    try:
        cls = network_class(net.get("class"), f"{key}.class")
    except AutosegError as e:
        raise AutosegError(f"{where}: {e}") from None
    check(getattr(cls, "config_model", NetworkModel), net, where, key)
    return net


def _check_stage(plans: dict, name: str, where: str) -> None:
    st, key = plans["stages"][name], f"stages.{name}"
    values = set(plans["labels"].values()) - {0}
    if st["classes"] != "foreground":
        unknown = sorted(set(st["classes"]) - values)
        if unknown:
            fail(where, f"{key}.classes", f"names label values {unknown} not in 'labels'")
    net = validate_network(st["network"], where, f"{key}.network")
    if "strides" in net:
        stride = [1, 1, 1]
        for s in net["strides"]:
            stride = [a * b for a, b in zip(stride, s)]
        if any(p % s for p, s in zip(st["patch_size"], stride)):
            fail(where, f"{key}.patch_size", f"{st['patch_size']} is not divisible by the network's total stride {stride}")


def validate_plans(plans: Any, where: str = "plans") -> dict:
    """Check a plans dict; raise AutosegError naming the first bad key. Schema 1 plans are migrated
    (logged). Returns the (possibly migrated) plans: callers use the return value."""
    if not isinstance(plans, dict):
        raise AutosegError(f"{where}: plans must be a JSON object")
    if plans.get("schema_version") == 1:
        plans = migrate_v1(plans, where)
    check(PlansModel, plans, where)
    for name in plans["stages"]:
        _check_stage(plans, name, where)
    check_graph(plans, where)
    return plans


def plans_file_name(name: str | None = None) -> str:
    """``plans.json`` for the default plans name, ``plans_NAME.json`` for another (as nnU-Net's -p)."""
    name = name or PLANS_NAME
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise AutosegError(f"plans name {name!r}: use letters, digits, '-' and '_'")
    return "plans.json" if name == PLANS_NAME else f"plans_{name}.json"


def plans_subdir(name: str | None = None) -> str:
    """Folder (under the dataset's preprocessed and results folders) that keeps a named plans' caches
    and models apart; '' for the default plans (the layout before plans names existed)."""
    name = name or PLANS_NAME
    plans_file_name(name)
    return "" if name == PLANS_NAME else f"plans_{name}"


def load_plans(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise AutosegError(f"{path}: plans not found (run 'autoseg plan_and_preprocess' first)")
    plans = validate_plans(load_json(path), str(path))
    check_dataset_name(plans["dataset_name"], str(path), path.resolve().parent)
    return plans


def save_plans(plans: dict, path: str | os.PathLike) -> None:
    save_json(validate_plans(plans, str(path)), path)


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


__all__ = ["SCHEMA_VERSION", "STAGES", "PLANS_NAME", "validate_plans", "validate_network", "load_plans", "save_plans",
           "stage_classes", "num_outputs", "stage_in_channels", "stage_order", "plans_file_name", "plans_subdir",
           "tumour_label_values", "organ_label_values"]
