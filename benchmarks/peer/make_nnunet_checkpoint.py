"""Write an untrained nnU-Net v2 model folder, built and saved by nnU-Net's own code (peer venv only).

    python benchmarks/peer/make_nnunet_checkpoint.py PREPROCESSED_DATASET_DIR PLANS_NAME RESULTS_DATASET_DIR [SEED]

The network comes from nnU-Net's ``nnUNetTrainer.build_network_architecture`` for the plans'
3d_fullres configuration (PlainConvUNet or ResidualEncoderUNet), initialised with nnU-Net's He init;
every bias (convolutions, transposed convolutions, heads) is then drawn at random so that a converter
which dropped or misplaced one would change the logits. The checkpoint dict has the keys nnU-Net's
trainer saves, and the folder (``nnUNetTrainer__PLANS__3d_fullres``) holds plans.json and dataset.json
as after training, so ``nnUNetv2_predict`` and ``autoseg import_nnunet`` both read it. Used when a
model cannot be trained in the time available (benchmarks/bench_nnunet_import.py says which it used).
"""
import json
import shutil
import sys
from pathlib import Path

import torch


def main(pre: str, plans_name: str, results_dataset: str, seed: int = 0) -> None:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pre_dir = Path(pre)
    plans = json.loads((pre_dir / f"{plans_name}.json").read_text())
    dataset = json.loads((pre_dir / "dataset.json").read_text())
    pm = PlansManager(plans)
    n_out = pm.get_label_manager(dataset).num_segmentation_heads
    torch.manual_seed(seed)
    net = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, n_out, True)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    out = Path(results_dataset) / f"nnUNetTrainer__{plans_name}__3d_fullres"
    (out / "fold_all").mkdir(parents=True, exist_ok=True)
    torch.save({"network_weights": net.state_dict(), "optimizer_state": None, "grad_scaler_state": None,
                "logging": {}, "_best_ema": None, "current_epoch": 0,
                "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": "all", "dataset_json": dataset,
                              "device": torch.device("cpu")},
                "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2)},
               out / "fold_all" / "checkpoint_final.pth")
    (out / "plans.json").write_text(json.dumps(plans, indent=2))
    shutil.copy(pre_dir / "dataset.json", out / "dataset.json")
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        raise SystemExit(__doc__)
    main(*sys.argv[1:4], *(int(a) for a in sys.argv[4:5]))
