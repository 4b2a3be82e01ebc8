"""The model-independent part of a case's preprocessing, done where the case is read.

Before any network runs, a CT needs its upload dtype (int16 when lossless: half the bytes to copy),
its body box and its body mask (which windows to skip). None of that depends on a model, so the
reader thread does it for the next case while the current one computes (``predict_folder``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autoseg.inference.window_mask import WindowScope
from autoseg.preprocessing.crop import BBox


@dataclass
class PreparedCase:
    host: np.ndarray  # the image in the dtype it is uploaded in (C-contiguous)
    body: BBox
    scope: WindowScope


def host_array(image: np.ndarray, intensity: dict) -> np.ndarray:
    """The smallest dtype that keeps what normalisation can see (int16 inside an int16 CT clip window)."""
    if image.dtype in (np.int16, np.uint8, np.int8):
        arr = image
    elif image.dtype.kind in "iu" and intensity.get("scheme") == "ct" and -32768 <= min(intensity["clip"]) \
            and max(intensity["clip"]) <= 32767:
        arr = np.clip(image, -32768, 32767).astype(np.int16)  # lossless inside the clip window
    else:
        arr = image.astype(np.float32, copy=False)
    return np.ascontiguousarray(arr)


def prepare_case(image: np.ndarray, intensity: dict, skip_windows: bool) -> PreparedCase:
    body, scope = WindowScope.for_case(image, skip_windows)
    return PreparedCase(host_array(image, intensity), body, scope)
