"""Which torch device and precision to run on: one answer for preprocessing, training and inference."""
from __future__ import annotations

import re

import torch

from autoseg import AutosegError

# The oldest torch autoseg runs on: networks/base.py asks torch.get_autocast_dtype(device_type) and
# torch.is_autocast_enabled(device_type), both new in 2.4 (tests/test_torch_floor.py keeps this,
# setup.py and the APIs we call in step).
TORCH_MIN = (2, 4)


def check_torch_version(version: str | None = None) -> None:
    """A clear error on a torch older than ``TORCH_MIN`` instead of an AttributeError mid-prediction."""
    v = version or torch.__version__
    m = re.match(r"(\d+)\.(\d+)", v)
    if m and (int(m.group(1)), int(m.group(2))) < TORCH_MIN:
        need = ".".join(map(str, TORCH_MIN))
        raise AutosegError(f"torch {v} is too old: autoseg needs torch>={need} (device-typed autocast API); "
                           f"upgrade with: pip install 'torch>={need}'")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; an explicit ``cuda`` without one is an error.
    Every stage resolves its device first, so this is also where an old torch is refused."""
    check_torch_version()
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
