"""Translate nnU-Net v2's ``nnUNetPlans.json`` (one configuration) into an autoseg plans dict.

For an equal-work comparison autoseg must train and predict with nnU-Net's choices: the same target
spacing, patch size, batch size, U-Net topology (features, kernels, strides, convs per stage, deep
supervision on every decoder level but the lowest) and CT intensity normalisation. The result is one
``organ`` stage that predicts every label at once, as nnU-Net's 3d_fullres network does, and no
``roi``/``tumour`` stages, so autoseg runs a single model just like the peer.
"""
from __future__ import annotations

from typing import Any

from autoseg import AutosegError
from autoseg.plans import SCHEMA_VERSION, validate_plans

PLAIN_UNET = "PlainConvUNet"


def resolve_configuration(nnunet_plans: dict, configuration: str) -> dict:
    """One configuration with its ``inherits_from`` chain merged (child keys win)."""
    configs = nnunet_plans.get("configurations")
    if not isinstance(configs, dict) or configuration not in configs:
        raise AutosegError(f"nnUNetPlans.json: configuration '{configuration}' not found "
                           f"(have {sorted(configs) if isinstance(configs, dict) else 'none'})")
    chain, name = [], configuration
    while name is not None:
        if name in (c for c, _ in chain) or name not in configs:
            raise AutosegError(f"nnUNetPlans.json: bad inherits_from chain at '{name}'")
        chain.append((name, configs[name]))
        name = configs[name].get("inherits_from")
    merged: dict[str, Any] = {}
    for _, cfg in reversed(chain):
        merged.update(cfg)
    return merged


def _ints(v: Any) -> list[int]:
    return [int(x) for x in v]


def network_from_arch(arch: dict) -> dict:
    """autoseg network config for a dynamic_network_architectures PlainConvUNet description."""
    cls = str(arch.get("network_class_name", ""))
    if not cls.endswith(PLAIN_UNET):
        raise AutosegError(f"nnUNetPlans.json: only {PLAIN_UNET} translates to autoseg's UNet, got '{cls}'")
    kw = arch["arch_kwargs"]
    n = int(kw["n_stages"])
    convs = kw.get("n_conv_per_stage", 2)
    convs = [int(convs)] * n if isinstance(convs, int) else _ints(convs)
    dec = kw.get("n_conv_per_stage_decoder", convs[:-1])
    dec = [int(dec)] * (n - 1) if isinstance(dec, int) else _ints(dec)
    if dec != convs[:-1]:
        # autoseg's decoder level i uses convs_per_stage[i]: equal only when the decoder mirrors the encoder
        raise AutosegError(f"nnUNetPlans.json: decoder convs {dec} differ from encoder convs {convs[:-1]}")
    return {
        "class": "UNet",
        "features": _ints(kw["features_per_stage"]),
        "kernel_sizes": [_ints(k) for k in kw["kernel_sizes"]],
        "strides": [_ints(s) for s in kw["strides"]],
        "blocks": "plain",
        "convs_per_stage": convs,
        "deep_supervision_levels": max(1, n - 1),
    }


def intensity_from_nnunet(nnunet_plans: dict, config: dict) -> dict:
    """nnU-Net's CTNormalization: clip to the foreground 0.5/99.5 percentiles, then z-score."""
    schemes = config.get("normalization_schemes", ["CTNormalization"])
    if schemes[0] != "CTNormalization":
        raise AutosegError(f"nnUNetPlans.json: channel 0 uses {schemes[0]}, expected CTNormalization")
    props = nnunet_plans["foreground_intensity_properties_per_channel"]["0"]
    lo, hi = float(props["percentile_00_5"]), float(props["percentile_99_5"])
    if not lo < hi:
        hi = lo + 1.0
    return {"scheme": "ct", "clip": [lo, hi], "mean": float(props["mean"]), "std": max(float(props["std"]), 1e-8)}


def label_values(dataset_json: dict) -> dict[str, int]:
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict) or not all(isinstance(v, int) for v in labels.values()):
        raise AutosegError("dataset.json: 'labels' must map names to integers (region labels do not translate)")
    return {str(k): int(v) for k, v in labels.items()}


def autoseg_plans_from_nnunet(nnunet_plans: dict, dataset_json: dict, configuration: str = "3d_fullres",
                              dataset_name: str | None = None) -> dict:
    """A complete, validated autoseg plans dict equivalent in work to one nnU-Net configuration."""
    cfg = resolve_configuration(nnunet_plans, configuration)
    labels = label_values(dataset_json)
    stage = {
        "target_spacing": [float(s) for s in cfg["spacing"]],
        "patch_size": _ints(cfg["patch_size"]),
        "batch_size": int(cfg["batch_size"]),
        "classes": sorted(v for v in labels.values() if v != 0),
        "network": network_from_arch(cfg["architecture"]),
        "input": {"crop": "body"},
    }
    plans = {
        "schema_version": SCHEMA_VERSION,
        "dataset_name": dataset_name or nnunet_plans.get("dataset_name", "Dataset"),
        "planner": f"nnU-Net {nnunet_plans.get('experiment_planner_used', 'ExperimentPlanner')} "
                   f"{configuration} (translated by benchmarks.nnunet_plans)",
        "labels": labels,
        "intensity": intensity_from_nnunet(nnunet_plans, cfg),
        "transpose": _ints(nnunet_plans.get("transpose_forward", [0, 1, 2])),
        "stages": {"organ": stage},
    }
    return validate_plans(plans, f"plans translated from nnU-Net {configuration}")


def describe(plans: dict, stage: str = "organ") -> str:
    """One line naming what both tools were given: spacing, patch, batch, topology."""
    st = plans["stages"][stage]
    net = st["network"]
    spacing = [round(float(x), 3) for x in st["target_spacing"]]
    return (f"spacing {spacing} mm (z, y, x), patch {st['patch_size']}, batch {st['batch_size']}, "
            f"{net['class']} {len(net['features'])} stages {net['features'][0]}-{net['features'][-1]} features")
