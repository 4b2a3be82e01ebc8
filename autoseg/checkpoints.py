"""What inference reads from a training checkpoint, shared by the trainers and the predictor.

A checkpoint of a trainer with several networks (``networks``: name -> state) says which one inference
uses (``inference_network``); an older single-network checkpoint has only ``network_weights``.
"""
from __future__ import annotations

from typing import Any

import torch

from autoseg import AutosegError


def inference_weights(ckpt: dict[str, Any], where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The weights the checkpoint says inference uses."""
    name = ckpt.get("inference_network")
    if name is not None:
        nets = ckpt.get("networks") or {}
        if name not in nets:
            raise AutosegError(f"{where}: inference network '{name}' is not in the checkpoint ({sorted(nets)})")
        return nets[name]["weights"]
    if "network_weights" not in ckpt:
        raise AutosegError(f"{where}: not an autoseg checkpoint (needs 'network_weights' or 'networks')")
    return ckpt["network_weights"]
