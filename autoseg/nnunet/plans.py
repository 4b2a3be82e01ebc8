"""Translate nnU-Net v2 plans (one configuration) into autoseg plans.

Two translations share the parsing here:

- ``autoseg_plans_from_nnunet``: an autoseg plans file that *trains* with nnU-Net's choices (same
  spacing, patch, batch, U-Net topology, CT normalisation) in autoseg's own U-Net; the side-by-side
  benchmark gives it to autoseg for equal work.
- ``imported_plans``: the plans of an *imported* nnU-Net model (``autoseg import_nnunet``), whose
  network is nnU-Net's exactly (``NnUNetPlainUNet`` / ``NnUNetResEncUNet``) and whose stage carries an
  ``nnunet`` block that makes the predictor preprocess and resample as nnU-Net does (see
  ``autoseg.nnunet.preprocessing``).

Keys an imported ``organ`` stage adds (kept by the plans validator as unknown keys are):
``mirror_axes`` (the checkpoint's ``inference_allowed_mirroring_axes``) and ``nnunet``:
``configuration``; ``crop`` (``"nonzero"``); ``transpose_forward`` / ``transpose_backward``;
``normalization`` (``scheme`` = nnU-Net's class name, ``use_mask``, and for CTNormalization ``mean``,
``std``, ``percentile_00_5``, ``percentile_99_5``); ``resampling_data`` and ``resampling_probabilities``
(``order``, ``order_z``, ``force_separate_z``, ``anisotropy_threshold``); ``source`` (where it came
from). The network config adds ``upsample_bias``, ``decoder_convs_per_stage`` and, for ResEnc,
``blocks_per_stage`` (``autoseg.networks.nnunet_compat``).
"""
from __future__ import annotations

from typing import Any

from autoseg import AutosegError
from autoseg.plans import SCHEMA_VERSION, validate_plans

PLAIN_UNET = "PlainConvUNet"
RESENC_UNET = "ResidualEncoderUNet"
NNUNET_KEY = "nnunet"  # the stage key holding nnU-Net's preprocessing (documented in README)
SUPPORTED_NORMALISATION = ("CTNormalization", "ZScoreNormalization", "NoNormalization", "RescaleTo01Normalization")


def resolve_configuration(nnunet_plans: dict, configuration: str) -> dict:
    """One configuration with its ``inherits_from`` chain merged (child keys win)."""
    configs = nnunet_plans.get("configurations")
    if not isinstance(configs, dict) or configuration not in configs:
        raise AutosegError(f"nnU-Net plans: configuration '{configuration}' not found "
                           f"(have {sorted(configs) if isinstance(configs, dict) else 'none'})")
    chain, name = [], configuration
    while name is not None:
        if name in (c for c, _ in chain) or name not in configs:
            raise AutosegError(f"nnU-Net plans: bad inherits_from chain at '{name}'")
        chain.append((name, configs[name]))
        name = configs[name].get("inherits_from")
    merged: dict[str, Any] = {}
    for _, cfg in reversed(chain):
        merged.update(cfg)
    return merged


def _ints(v: Any) -> list[int]:
    return [int(x) for x in v]


def _per_stage(kw: dict, key: str, n: int, default: Any) -> list[int]:
    v = kw.get(key, default)
    return [int(v)] * n if isinstance(v, int) else _ints(v)


def _arch_class(arch: dict) -> str:
    cls = str(arch.get("network_class_name", ""))
    for name in (PLAIN_UNET, RESENC_UNET):
        if cls.endswith(name):
            return name
    raise AutosegError(f"nnU-Net plans: network '{cls}' is not supported (only {PLAIN_UNET} and {RESENC_UNET})")


def network_from_arch(arch: dict) -> dict:
    """autoseg's own ``UNet`` for a PlainConvUNet description (the benchmark's equal-work training)."""
    if _arch_class(arch) != PLAIN_UNET:
        raise AutosegError(f"nnU-Net plans: only {PLAIN_UNET} translates to autoseg's UNet, "
                           f"got '{arch.get('network_class_name')}'")
    kw = arch["arch_kwargs"]
    n = int(kw["n_stages"])
    convs = _per_stage(kw, "n_conv_per_stage", n, 2)
    dec = _per_stage(kw, "n_conv_per_stage_decoder", n - 1, convs[:-1])
    if dec != convs[:-1]:
        # autoseg's decoder level i uses convs_per_stage[i]: equal only when the decoder mirrors the encoder
        raise AutosegError(f"nnU-Net plans: decoder convs {dec} differ from encoder convs {convs[:-1]}")
    return {
        "class": "UNet",
        "features": _ints(kw["features_per_stage"]),
        "kernel_sizes": [_ints(k) for k in kw["kernel_sizes"]],
        "strides": [_ints(s) for s in kw["strides"]],
        "blocks": "plain",
        "convs_per_stage": convs,
        "deep_supervision_levels": max(1, n - 1),
    }


def _check_layers(kw: dict) -> None:
    """Only what NnUNet*UNet reproduces: 3-D convs, affine InstanceNorm (eps 1e-5), LeakyReLU 0.01."""
    for key, want in (("conv_op", "Conv3d"), ("norm_op", "InstanceNorm3d"), ("nonlin", "LeakyReLU")):
        got = str(kw.get(key, want))
        if not got.endswith(want):
            raise AutosegError(f"nnU-Net plans: arch_kwargs.{key} is '{got}'; only {want} is supported")
    nk = kw.get("norm_op_kwargs") or {}
    if float(nk.get("eps", 1e-5)) != 1e-5 or not nk.get("affine", True):
        raise AutosegError(f"nnU-Net plans: norm_op_kwargs {nk} differ from InstanceNorm3d(eps=1e-5, affine=True)")
    slope = (kw.get("nonlin_kwargs") or {}).get("negative_slope", 0.01)
    if float(slope) != 0.01:
        raise AutosegError(f"nnU-Net plans: LeakyReLU negative_slope {slope} is not 0.01")


def exact_network(arch: dict) -> dict:
    """The network config of an imported model: nnU-Net's network exactly, transposed-conv biases included."""
    cls = _arch_class(arch)
    kw = arch["arch_kwargs"]
    _check_layers(kw)
    n = int(kw["n_stages"])
    dec = _per_stage(kw, "n_conv_per_stage_decoder", n - 1, 2)
    net = {
        "class": "NnUNetPlainUNet" if cls == PLAIN_UNET else "NnUNetResEncUNet",
        "features": _ints(kw["features_per_stage"]),
        "kernel_sizes": [_ints(k) for k in kw["kernel_sizes"]],
        "strides": [_ints(s) for s in kw["strides"]],
        "blocks": "plain",
        "convs_per_stage": _per_stage(kw, "n_conv_per_stage", n, 2) if cls == PLAIN_UNET else [1] * n,
        "deep_supervision_levels": max(1, n - 1),
        "upsample_bias": True,
        # nnU-Net lists decoder stages deepest first; autoseg indexes them by level, full resolution first
        "decoder_convs_per_stage": dec[::-1],
    }
    if cls == RESENC_UNET:
        net["blocks_per_stage"] = _per_stage(kw, "n_blocks_per_stage", n, 1)
    if len(net["features"]) != n or len(net["kernel_sizes"]) != n or len(net["strides"]) != n:
        raise AutosegError(f"nnU-Net plans: arch_kwargs lists do not all have n_stages={n} entries")
    return net


def intensity_from_nnunet(nnunet_plans: dict, config: dict) -> dict:
    """nnU-Net's CTNormalization: clip to the foreground 0.5/99.5 percentiles, then z-score."""
    schemes = config.get("normalization_schemes", ["CTNormalization"])
    if schemes[0] != "CTNormalization":
        raise AutosegError(f"nnU-Net plans: channel 0 uses {schemes[0]}, expected CTNormalization")
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
                   f"{configuration} (translated by autoseg.nnunet.plans)",
        "labels": labels,
        "intensity": intensity_from_nnunet(nnunet_plans, cfg),
        "transpose": _ints(nnunet_plans.get("transpose_forward", [0, 1, 2])),
        "stages": {"organ": stage},
    }
    return validate_plans(plans, f"plans translated from nnU-Net {configuration}")


def _resampling(cfg: dict, key: str) -> dict:
    fn = cfg.get(f"resampling_fn_{key}", "resample_data_or_seg_to_shape")
    if fn != "resample_data_or_seg_to_shape":
        raise AutosegError(f"nnU-Net plans: resampling_fn_{key} '{fn}' is not supported "
                           "(only resample_data_or_seg_to_shape)")
    kw = dict(cfg.get(f"resampling_fn_{key}_kwargs") or {})
    out = {"order": int(kw.get("order", 3 if key == "data" else 1)), "order_z": int(kw.get("order_z", 0)),
           "force_separate_z": kw.get("force_separate_z"),
           "anisotropy_threshold": float(kw.get("separate_z_anisotropy_threshold", 3.0))}
    for k in ("order", "order_z"):
        if out[k] not in (0, 1, 3):
            raise AutosegError(f"nnU-Net plans: resampling_fn_{key}_kwargs.{k} = {out[k]} (supported: 0, 1, 3)")
    return out


def _normalisation(nnunet_plans: dict, cfg: dict) -> dict:
    schemes = cfg.get("normalization_schemes") or ["CTNormalization"]
    if len(schemes) != 1:
        raise AutosegError(f"nnU-Net plans: {len(schemes)} input channels; only single-channel models import")
    scheme = schemes[0]
    if scheme not in SUPPORTED_NORMALISATION:
        raise AutosegError(f"nnU-Net plans: normalization '{scheme}' is not supported "
                           f"({', '.join(SUPPORTED_NORMALISATION)})")
    out = {"scheme": scheme, "use_mask": bool((cfg.get("use_mask_for_norm") or [False])[0])}
    if scheme == "CTNormalization":
        props = (nnunet_plans.get("foreground_intensity_properties_per_channel") or {}).get("0")
        if not isinstance(props, dict):
            raise AutosegError("nnU-Net plans: CTNormalization needs foreground_intensity_properties_per_channel['0']")
        out.update({k: float(props[k]) for k in ("mean", "std", "percentile_00_5", "percentile_99_5")})
    return out


def _our_intensity(norm: dict) -> dict:
    """The plans' ``intensity`` entry closest to nnU-Net's (the predictor uses the ``nnunet`` block)."""
    if norm["scheme"] == "CTNormalization":
        lo, hi = norm["percentile_00_5"], norm["percentile_99_5"]
        return {"scheme": "ct", "clip": [lo, hi if hi > lo else lo + 1.0], "mean": norm["mean"],
                "std": max(norm["std"], 1e-8)}
    return {"scheme": "zscore", "mean": 0.0, "std": 1.0}


def imported_plans(nnunet_plans: dict, dataset_json: dict, configuration: str, mirror_axes: list[int],
                   source: dict) -> dict:
    """Validated autoseg plans for an imported nnU-Net model: one whole-volume ``organ`` stage with
    nnU-Net's network and an ``nnunet`` block (crop, normalisation, resampling, transpose)."""
    cfg = resolve_configuration(nnunet_plans, configuration)
    if cfg.get("previous_stage"):
        raise AutosegError(f"nnU-Net plans: '{configuration}' is a cascade stage (needs "
                           f"'{cfg['previous_stage']}' predictions); import a single-stage configuration")
    if len(cfg.get("spacing", [])) != 3 or len(cfg.get("patch_size", [])) != 3:
        raise AutosegError(f"nnU-Net plans: '{configuration}' is not a 3-D configuration")
    labels = label_values(dataset_json)
    classes = sorted(v for k, v in labels.items() if v != 0 and k != "ignore")
    if classes != list(range(1, len(classes) + 1)):
        raise AutosegError(f"dataset.json: label values {classes} are not consecutive from 1")
    norm = _normalisation(nnunet_plans, cfg)
    tf = _ints(nnunet_plans.get("transpose_forward", [0, 1, 2]))
    tb = _ints(nnunet_plans.get("transpose_backward", [tf.index(i) for i in range(3)]))
    stage = {
        "target_spacing": [float(s) for s in cfg["spacing"]],
        "patch_size": _ints(cfg["patch_size"]),
        "batch_size": int(cfg.get("batch_size", 2)),
        "classes": classes,
        "network": exact_network(cfg["architecture"]),
        "input": {"crop": "body"},
        "mirror_axes": [int(a) for a in mirror_axes],
        NNUNET_KEY: {
            "configuration": configuration,
            "crop": "nonzero",
            "transpose_forward": tf,
            "transpose_backward": tb,
            "normalization": norm,
            "resampling_data": _resampling(cfg, "data"),
            "resampling_probabilities": _resampling(cfg, "probabilities"),
            "source": source,
        },
    }
    plans = {
        "schema_version": SCHEMA_VERSION,
        "dataset_name": str(nnunet_plans.get("dataset_name") or dataset_json.get("name") or "Dataset"),
        "planner": f"nnU-Net {nnunet_plans.get('plans_name', 'plans')} {configuration} (autoseg import_nnunet)",
        "labels": {k: v for k, v in labels.items() if k != "ignore"},
        "intensity": _our_intensity(norm),
        "transpose": tf,
        "stages": {"organ": stage},
    }
    return validate_plans(plans, f"plans imported from nnU-Net {configuration}")
