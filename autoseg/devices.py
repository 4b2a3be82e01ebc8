"""Which torch device and precision to run on: one answer for preprocessing, training and inference."""
from __future__ import annotations

import torch

from autoseg import AutosegError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; an explicit ``cuda`` without one is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AutosegError("--device cuda requested but torch sees no CUDA device (use --device cpu)")
    return dev


def cpu_bf16_supported() -> bool:
    """Native bf16 units (AVX512-BF16/AMX) make CPU autocast 1.5-4x faster for 3D convolutions."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
