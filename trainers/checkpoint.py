"""Checkpoints of tensors and plain data only, written atomically, read with ``weights_only=True``.

RNG states are stored as lists and tensors (never numpy objects or pickled classes) so a checkpoint
from an untrusted source cannot execute code when loaded, and resuming restores every generator the
training and data path draw from.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoseg import AutosegError
from autoseg.utils import atomic_path

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) generator states as plain data and tensors."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    with atomic_path(path, ".pt") as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise AutosegError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or unsafe files
        raise AutosegError(f"{path}: cannot load checkpoint with weights_only=True ({str(e).splitlines()[0]})") from None
    if not isinstance(ckpt, dict):
        raise AutosegError(f"{path}: checkpoint is not a dict")
    return ckpt


def network_weights(ckpt_or_state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state_dict inside an autoseg checkpoint, or the dict itself if it is already one."""
    if "network_weights" in ckpt_or_state:
        return ckpt_or_state["network_weights"]
    if "state_dict" in ckpt_or_state and isinstance(ckpt_or_state["state_dict"], dict):
        return ckpt_or_state["state_dict"]
    return ckpt_or_state


def load_matching_weights(network: nn.Module, weights: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Copy every tensor whose name and shape match; return (loaded, skipped) names.

    Skipped names include the network's tensors the checkpoint lacks or has with another shape (a
    segmentation head for a different class count is the usual case when fine-tuning).
    """
    own = network.state_dict()
    loaded, skipped = [], []
    for name, tensor in own.items():
        src = weights.get(name)
        if src is None and name.startswith("module."):
            src = weights.get(name[len("module."):])
        if src is not None and tuple(src.shape) == tuple(tensor.shape):
            own[name] = src.to(tensor.dtype)
            loaded.append(name)
        else:
            skipped.append(name)
    network.load_state_dict(own)
    return loaded, skipped


def load_pretrained(network: nn.Module, path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Initialise ``network`` from a checkpoint, logging which tensors did not fit."""
    weights = network_weights(load_checkpoint(path))
    loaded, skipped = load_matching_weights(network, weights)
    if not loaded:
        raise AutosegError(f"{path}: no tensor of the checkpoint matches this network (wrong architecture?)")
    log.info("pretrained %s: loaded %d tensors, skipped %d%s", path, len(loaded), len(skipped),
             f": {', '.join(skipped)}" if skipped else "")
    return loaded, skipped


def most_advanced_checkpoint(folder: Path) -> Path | None:
    """The one of ``checkpoint_final.pt``/``checkpoint_latest.pt`` in ``folder`` with the higher epoch."""
    best: tuple[int, Path] | None = None
    for name in ("checkpoint_final.pt", "checkpoint_latest.pt"):
        p = Path(folder) / name
        if p.is_file():
            epoch = int(load_checkpoint(p).get("epoch", 0))
            if best is None or epoch > best[0]:
                best = (epoch, p)
    return best[1] if best else None
