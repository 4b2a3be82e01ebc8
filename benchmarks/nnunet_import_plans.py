"""Write the nnU-Net plans that benchmarks/nnunet_import_train.sh trains: the ``--quality`` bench plans
(``nnUNetPlansBench``: patch capped to 32x64x64, features x0.5, spacing 4x2x2 mm) and a ResEnc twin
(``nnUNetPlansBenchResEnc``: the same configuration with nnU-Net's ResidualEncoderUNet, ResEnc-M blocks
per stage, one decoder conv per stage, reading the same preprocessed data).

Usage: ``python -m benchmarks.nnunet_import_plans PREPROCESSED_DATASET_DIR``
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

from benchmarks import harness

RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
RESENC_BLOCKS = [1, 3, 4, 6, 6, 6, 6, 6]


def resenc_twin(plans: dict) -> dict:
    out = copy.deepcopy(plans)
    out["plans_name"] = "nnUNetPlansBenchResEnc"
    arch = out["configurations"]["3d_fullres"]["architecture"]
    kw = arch["arch_kwargs"]
    n = int(kw["n_stages"])
    arch["network_class_name"] = RESENC
    kw.pop("n_conv_per_stage", None)
    kw["n_blocks_per_stage"] = RESENC_BLOCKS[:n]
    kw["n_conv_per_stage_decoder"] = [1] * (n - 1)
    return out


def main(pre: str) -> None:
    pre_dir = Path(pre)
    bench = harness.write_bench_plans(pre_dir, [32, 64, 64], 0.5, [4.0, 2.0, 2.0])
    (pre_dir / "nnUNetPlansBenchResEnc.json").write_text(json.dumps(resenc_twin(bench), indent=2))
    print(f"wrote {pre_dir / 'nnUNetPlansBench.json'} and {pre_dir / 'nnUNetPlansBenchResEnc.json'}")


if __name__ == "__main__":
    main(sys.argv[1])
