"""nnU-Net's own intermediate results for one image, for benchmarks/bench_nnunet_import.py (peer venv only).

    python benchmarks/peer/nnunet_reference.py MODEL_FOLDER IMAGE OUT_DIR

Writes ``data.npy`` (nnU-Net's preprocessed network input), ``patch_logits.npy`` (its network on the
first patch of that input, fp32) and ``logits.npy`` (its sliding window over the whole input, TTA
off), so that each of autoseg's steps can be compared with nnU-Net's on the same numbers.
"""
import sys
from pathlib import Path

import numpy as np
import torch


def main(model: str, image: str, out: str) -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, device=torch.device("cpu"),
                        allow_tqdm=False)
    p.initialize_from_trained_model_folder(model, ("all",), "checkpoint_final.pth")
    pre = p.configuration_manager.preprocessor_class(verbose=False)
    data, _, _ = pre.run_case([image], None, p.plans_manager, p.configuration_manager, p.dataset_json)
    np.save(out_dir / "data.npy", data)
    patch = [min(a, b) for a, b in zip(p.configuration_manager.patch_size, data.shape[1:])]
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(data[:, :patch[0], :patch[1], :patch[2]]))[None].float()
        np.save(out_dir / "patch_logits.npy", p.network.eval()(x).numpy())
        np.save(out_dir / "logits.npy", p.predict_sliding_window_return_logits(torch.from_numpy(data).float()).numpy())


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
