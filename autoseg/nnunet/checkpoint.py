"""Read nnU-Net v2 checkpoints without executing code, and rename their tensors to autoseg's.

nnU-Net saves ``checkpoint_final.pth`` with ``torch.save`` of a dict: ``network_weights`` (its
network's state_dict), optimiser state, ``init_args`` (plans, dataset.json, configuration, fold,
device) and a training log holding numpy scalars. ``torch.load(weights_only=True)`` reads it once the
numpy scalar and dtype classes are allowed; every other global (a class, a function) is refused, so
a crafted pickle cannot run code here.

Tensor names: dynamic_network_architectures registers each conv block twice (``.conv``/``.norm`` and
``.all_modules.N``) and the decoder keeps a reference to the encoder (``decoder.encoder.*``); those
aliases are skipped. Conv biases that feed an instance normalisation are dropped: the normalisation
subtracts the per-channel mean, so they cannot change the output.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from autoseg import AutosegError

_CONV_NORM = r"\.(conv|norm)\.(weight|bias)$"
_PLAIN_ENC = re.compile(r"^encoder\.stages\.(\d+)\.0\.convs\.(\d+)" + _CONV_NORM)
_STEM = re.compile(r"^encoder\.stem\.convs\.0" + _CONV_NORM)
_RES = re.compile(r"^encoder\.stages\.(\d+)\.blocks\.(\d+)\.(conv1|conv2|skip\.\d+)" + _CONV_NORM)
_DEC = re.compile(r"^decoder\.stages\.(\d+)\.convs\.(\d+)" + _CONV_NORM)
_UP = re.compile(r"^decoder\.transpconvs\.(\d+)\.(weight|bias)$")
_SEG = re.compile(r"^decoder\.seg_layers\.(\d+)\.(weight|bias)$")


def _safe_globals() -> list:
    core = getattr(np, "_core", None) or np.core
    dtypes = {type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"}
    return [core.multiarray.scalar, np.dtype, *dtypes]


def load_nnunet_checkpoint(path: str | os.PathLike) -> dict:
    """nnU-Net's checkpoint dict, read with ``weights_only=True`` (numpy scalars allowed, nothing else)."""
    path = Path(path)
    if not path.is_file():
        raise AutosegError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for disallowed globals, RuntimeError/EOFError for broken files
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        if "weights only" in str(e).lower() or "weights_only" in str(e).lower():
            raise AutosegError(f"{path}: refused: loading it would execute code that a weights-only "
                               f"nnU-Net checkpoint never needs ({msg})") from None
        raise AutosegError(f"{path}: unreadable checkpoint ({msg})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("network_weights"), dict):
        raise AutosegError(f"{path}: not an nnU-Net checkpoint (no 'network_weights' dict)")
    return ckpt


def _conv_norm(prefix: str, op: str, kind: str) -> str | None:
    """Our Sequential(conv, norm[, act]) tensor for nnU-Net's ``.conv``/``.norm``; None: a dropped conv bias."""
    if op == "conv":
        return None if kind == "bias" else f"{prefix}.0.weight"
    return f"{prefix}.1.{kind}"


def autoseg_name(name: str, n_stages: int) -> str | None:
    """autoseg's tensor for one of nnU-Net's (PlainConvUNet or ResidualEncoderUNet), or None for a conv
    bias the following instance norm cancels. Raises AutosegError for a name with no counterpart."""
    m = _PLAIN_ENC.match(name)
    if m:
        return _conv_norm(f"encoder.{m[1]}.{m[2]}", m[3], m[4])
    m = _STEM.match(name)
    if m:
        return _conv_norm("encoder.0.stem", m[1], m[2])
    m = _RES.match(name)
    if m:
        return _conv_norm(f"encoder.{m[1]}.blocks.{m[2]}.{m[3]}", m[4], m[5])
    m = _DEC.match(name)
    if m:
        return _conv_norm(f"decoder.{m[1]}.{m[2]}", m[3], m[4])
    m = _UP.match(name)
    if m:
        return f"upsamplers.{m[1]}.{m[2]}"
    m = _SEG.match(name)
    if m:  # nnU-Net's decoder stage j works at level n-2-j, where autoseg keeps its head
        return f"seg_heads.{n_stages - 2 - int(m[1])}.{m[2]}"
    raise AutosegError(f"nnU-Net tensor '{name}' has no autoseg counterpart (unsupported network variant)")


def is_alias(name: str) -> bool:
    """A second name for a tensor that is also stored under its main name."""
    return ".all_modules." in name or name.startswith("decoder.encoder.")


def convert_state_dict(state: dict, n_stages: int) -> dict[str, torch.Tensor]:
    """nnU-Net ``network_weights`` -> autoseg state_dict (``NnUNetPlainUNet`` / ``NnUNetResEncUNet``)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if is_alias(name):
            continue
        if not isinstance(t, torch.Tensor):
            raise AutosegError(f"nnU-Net tensor '{name}' is a {type(t).__name__}, not a tensor")
        ours = autoseg_name(name, n_stages)
        if ours is not None:
            out[ours] = t.detach().to(torch.float32).clone()
    return out
