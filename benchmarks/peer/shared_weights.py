"""Put autoseg's trained U-Net weights into an nnU-Net checkpoint, so both predictors run one network.

Run with the peer venv's python (the script puts the repository on ``sys.path``; only
``autoseg.networks``, ``autoseg.nnunet`` and plain torch are imported from it):

    python benchmarks/peer/shared_weights.py OUR_CKPT THEIR_TEMPLATE_CKPT BENCH_PLANS_JSON OUT_CKPT
    python benchmarks/peer/shared_weights.py --reverse THEIR_CKPT OUR_TEMPLATE_CKPT BENCH_PLANS_JSON OUT_CKPT

Why: two tools trained separately differ in accuracy for reasons that have nothing to do with their
predictors (augmentation, sampling, luck). With the same weights, a DSC difference between the two
predictions is the predictors' own doing (resampling, normalisation, sliding window, precision).

The topologies are the same by construction (``benchmarks.nnunet_plans``); nnU-Net's convolutions and
transposed convolutions carry a bias that autoseg's do not: a conv bias right before instance
normalisation is removed by the normalisation, and autoseg's upsampling has none, so those biases are
set to zero and the two networks compute the same function. The script checks that: both networks
are run on one random input in fp32 and the largest logit difference is printed (and must be small).
The template is a checkpoint of the other tool for the same plans (nnU-Net's keeps its trainer name,
init arguments and mirroring axes; autoseg's its plans); only ``network_weights`` is replaced.
``--reverse`` goes from nnU-Net to autoseg, so that each tool's trained model can run in both
predictors.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from autoseg import AutosegError
from autoseg.networks import build_network
from autoseg.nnunet.checkpoint import autoseg_name, load_nnunet_checkpoint
from autoseg.nnunet.plans import network_from_arch


def our_name(their_name: str, n_stages: int) -> str | None:
    """autoseg's UNet parameter for one of nnU-Net's, or None for a bias autoseg's UNet does not have (zero).
    The names come from ``autoseg.nnunet.checkpoint`` (``import_nnunet``'s map); autoseg's plain UNet has no
    transposed-conv bias, which ``import_nnunet``'s NnUNetPlainUNet keeps."""
    try:
        name = autoseg_name(their_name, n_stages)
    except AutosegError as e:
        raise SystemExit(str(e)) from None
    return None if name is None or name.startswith("upsamplers.") and name.endswith(".bias") else name


def _networks(plans_file: str, num_classes: int):
    """(autoseg's U-Net, nnU-Net's PlainConvUNet) for the bench plans, in eval mode, without deep supervision."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans  # the peer venv only

    plans = json.loads(open(plans_file).read())
    cfg = plans["configurations"]["3d_fullres"]
    arch = cfg["architecture"]
    theirs = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                    1, num_classes, deep_supervision=False)
    ours = build_network(network_from_arch(arch), 1, num_classes, deep_supervision=False)
    return ours.eval(), theirs.eval(), int(arch["arch_kwargs"]["n_stages"]), cfg["patch_size"]


def _check_same_function(ours, theirs, patch) -> float:
    """Both networks on one random patch in fp32; exits unless the logits agree."""
    x = torch.randn(1, 1, *patch, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    diff, scale = float((a - b).abs().max()), float(a.abs().max())
    print(f"AUTOSEG_BENCH shared_weights_max_abs_diff={diff:.3e}")
    print(f"max |logit| {scale:.3e}")
    if not diff <= 1e-3 * max(1.0, scale):
        raise SystemExit(f"the converted network differs: max |logit diff| {diff:.3e} (max |logit| {scale:.3e})")
    return diff


def to_nnunet(our_ckpt: str, template: str, plans_file: str, out: str) -> None:
    """autoseg weights -> nnU-Net checkpoint (the template's trainer name, init args and mirroring kept)."""
    ckpt = load_nnunet_checkpoint(template)
    ours_sd = torch.load(our_ckpt, map_location="cpu", weights_only=True)["network_weights"]
    ours, theirs, n_stages, patch = _networks(plans_file, int(ours_sd["seg_heads.0.weight"].shape[0]))
    used = set()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            src = our_name(name, n_stages)
            if src is None:
                p.zero_()
                continue
            if src not in ours_sd or tuple(ours_sd[src].shape) != tuple(p.shape):
                raise SystemExit(f"{name}: autoseg's {src} is missing or shaped "
                                 f"{tuple(ours_sd[src].shape) if src in ours_sd else None}, expected {tuple(p.shape)}")
            p.copy_(ours_sd[src])
            used.add(src)
    unused = sorted(set(ours_sd) - used)
    if unused:
        raise SystemExit(f"autoseg tensors left over (topologies differ?): {unused[:5]}")
    ours.load_state_dict(ours_sd)
    diff = _check_same_function(ours, theirs, patch)
    ckpt["network_weights"] = theirs.state_dict()
    torch.save(ckpt, out)
    print(f"wrote {out} ({len(used)} tensors from {our_ckpt}; max |logit diff| {diff:.2e})")


def to_autoseg(their_ckpt: str, template: str, plans_file: str, out: str) -> None:
    """nnU-Net weights -> autoseg checkpoint (the template's plans kept). nnU-Net's conv biases are
    dropped (instance norm cancels them); its transposed-conv biases must be zero
    (``nnUNetTrainerAutosegBenchFast`` keeps them so), since autoseg's upsampling has none."""
    their_sd = load_nnunet_checkpoint(their_ckpt)["network_weights"]
    ckpt = torch.load(template, map_location="cpu", weights_only=True)
    num_classes = int(ckpt["network_weights"]["seg_heads.0.weight"].shape[0])
    ours, theirs, n_stages, patch = _networks(plans_file, num_classes)
    theirs.load_state_dict(their_sd)
    ours_sd = {}
    for name, p in theirs.named_parameters():
        dst = our_name(name, n_stages)
        if dst is None:
            if "transpconvs" in name and float(p.detach().abs().max()) != 0.0:
                raise SystemExit(f"{name} is not zero: autoseg's upsampling has no bias to hold it")
            continue
        ours_sd[dst] = p.detach().clone()
    ours.load_state_dict(ours_sd)  # strict: every autoseg tensor must be filled
    diff = _check_same_function(ours, theirs, patch)
    ckpt["network_weights"] = ours.state_dict()
    ckpt["trainer_name"] = f"weights from {their_ckpt}"
    for key in ("optimizer_state", "lr_scheduler_state", "grad_scaler_state"):
        ckpt[key] = None  # a prediction-only checkpoint: nothing to resume
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out)
    print(f"wrote {out} ({len(ours_sd)} tensors from {their_ckpt}; max |logit diff| {diff:.2e})")


if __name__ == "__main__":
    args = sys.argv[1:]
    reverse = "--reverse" in args
    args = [a for a in args if a != "--reverse"]
    if len(args) != 4:
        raise SystemExit(__doc__)
    (to_autoseg if reverse else to_nnunet)(*args)
