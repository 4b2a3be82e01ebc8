"""Translate nnU-Net v2's ``nnUNetPlans.json`` (one configuration) into an autoseg plans dict.

For an equal-work comparison autoseg must train and predict with nnU-Net's choices: the same target
spacing, patch size, batch size, U-Net topology (features, kernels, strides, convs per stage, deep
supervision on every decoder level but the lowest) and CT intensity normalisation. The result is one
``organ`` stage that predicts every label at once, as nnU-Net's 3d_fullres network does, and no
``roi``/``tumour`` stages, so autoseg runs a single model just like the peer.
"""
from __future__ import annotations

# The translation itself is part of the product (``autoseg import_nnunet`` reads nnU-Net plans too).
from autoseg.nnunet.plans import (PLAIN_UNET, autoseg_plans_from_nnunet, intensity_from_nnunet,  # noqa: F401
                                  label_values, network_from_arch, resolve_configuration)


def describe(plans: dict, stage: str = "organ") -> str:
    """One line naming what both tools were given: spacing, patch, batch, topology."""
    st = plans["stages"][stage]
    net = st["network"]
    spacing = [round(float(x), 3) for x in st["target_spacing"]]
    return (f"spacing {spacing} mm (z, y, x), patch {st['patch_size']}, batch {st['batch_size']}, "
            f"{net['class']} {len(net['features'])} stages {net['features'][0]}-{net['features'][-1]} features")
