"""``nnUNetv2_predict`` with its network under CPU bf16 autocast (peer venv only; benchmark shim).

nnU-Net enables autocast on CUDA only. For a bf16-vs-bf16 row this wraps the one method that runs the
network (``_internal_maybe_mirror_and_predict``) in ``torch.autocast("cpu", dtype=torch.bfloat16)`` and
returns float32 logits, as its CUDA path does with fp16; everything else is nnU-Net's unchanged code.

    python benchmarks/peer/predict_bf16.py <nnUNetv2_predict arguments>
"""
import sys

import torch
from nnunetv2.inference import predict_from_raw_data as p

_original = p.nnUNetPredictor._internal_maybe_mirror_and_predict


def _bf16(self, x):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return _original(self, x).float()


p.nnUNetPredictor._internal_maybe_mirror_and_predict = _bf16

if __name__ == "__main__":
    sys.argv[0] = "nnUNetv2_predict"
    p.predict_entry_point()
