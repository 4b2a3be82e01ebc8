"""GPU inference: a 512x512x200 abdominal CT, host array -> host label array (issue target: <= 0.5 s,
<= 2 GB peak GPU memory; FLARE21's winner: 0.46 s, 2.3 GB).

Models are random-weight checkpoints built from the default planner's plans for such data (speed and
memory do not depend on the weights). Random weights would make the ROI and host-organ boxes random,
so by default the crops are those a trained model gives: the ROI network still runs and is timed,
but the boxes come from the phantom's labels (``--crops predicted`` keeps the random boxes;
``--crops whole`` is the worst case: no ROI model, organ model on the whole body).

    python benchmarks/bench_inference_gpu.py --make-plans .carry/plans_real.json   # CPU machine
    python benchmarks/bench_inference_gpu.py --plans .carry/plans_real.json --out result.json

Times are CUDA-event medians of ``--repeats`` runs after ``--warmup`` runs; peak memory is
``torch.cuda.max_memory_allocated`` over one run, plus the device-wide usage sampled every 0.1 s.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPE = (200, 512, 512)
SPACING = (2.5, 0.8, 0.8)


def _allow_missing_simpleitk() -> None:
    """The GPU image has no SimpleITK; the array path never calls it, so a bare module object lets
    ``autoseg.io`` import (any real use would raise AttributeError)."""
    try:
        import SimpleITK  # noqa: F401
    except ImportError:
        sys.modules["SimpleITK"] = types.ModuleType("SimpleITK")


def phantom(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from autoseg.synthetic import make_phantom

    img, lab, _ = make_phantom(seed, "real", shape=SHAPE, spacing=SPACING, orientation="LPS")
    return img, lab


def make_plans(out: Path, n_cases: int = 3) -> dict:
    """Default-planner plans for a few 512x512x200 phantoms (needs SimpleITK: run on the CPU machine)."""
    from autoseg.datasets import RawDataset
    from autoseg.fingerprint import compute_fingerprint
    from autoseg.io import write_image
    from autoseg.synthetic import LABELS, make_phantom
    from autoseg.planners.experiment_planner import ExperimentPlanner

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "Dataset990_BenchReal"
        for sub in ("imagesTr", "labelsTr"):
            (root / sub).mkdir(parents=True)
        for i in range(n_cases):
            img, lab, geo = make_phantom(i, "real", shape=SHAPE, spacing=SPACING)
            write_image(img, geo, root / "imagesTr" / f"case{i:03d}_0000.nii.gz")
            write_image(lab, geo, root / "labelsTr" / f"case{i:03d}.nii.gz")
        (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": LABELS,
                                                       "numTraining": n_cases, "file_ending": ".nii.gz"}))
        fp = compute_fingerprint(RawDataset.load(root), num_workers=1, progress=False)
        plans = ExperimentPlanner(fp).plan()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(plans, indent=1))
    return plans


def host_labels(plans: dict) -> list[int] | None:
    """The labels the tumour stage is cropped around (any plans schema)."""
    from autoseg.plans import validate_plans
    from autoseg.stage_graph import crop_labels

    plans = validate_plans(plans)
    return crop_labels(plans, "tumour") if "tumour" in plans["stages"] else None


def oracle_predictor(base: type, label: np.ndarray, host: list[int] | None = None):
    """The predictor with the boxes a trained model would produce (all networks still run). The boxes
    are computed here, outside the timed calls: a real model gets them from its coarse grid for free."""
    from autoseg.preprocessing.crop import bbox_of_mask

    fg_box = bbox_of_mask(label > 0)
    host_box = bbox_of_mask(np.isin(label, host or [1]))

    class Oracle(base):
        def _localise(self, sm, vol, spacing, body):
            super()._localise(sm, vol, spacing, body)  # the ROI network's work is done and timed
            return fg_box

        def _work_region(self, box, spacing, shape):
            self.region = super()._work_region(box, spacing, shape)  # the frame _host_box answers in
            return self.region

        def _host_box(self, out, stage):
            super()._host_box(out, stage)  # the device-side host-organ box is computed and timed
            return [[lo - r[0], hi - r[0]] for (lo, hi), r in zip(host_box, self.region)]

    return Oracle


def run(args: argparse.Namespace) -> dict:
    import torch

    from autoseg.inference.predictor import CascadePredictor
    from autoseg.inference.profiling import MemorySampler
    from autoseg.inference.random_models import write_random_checkpoints

    plans = json.loads(Path(args.plans).read_text())
    stages = [s for s in plans["stages"] if not (args.crops == "whole" and s == "roi")]
    t0 = time.perf_counter()
    img, lab = phantom(args.seed)
    t_phantom = time.perf_counter() - t0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    split: dict = {}
    if device.type == "cuda":  # what the device holds before any work: the CUDA context alone
        torch.zeros(1, device=device)
        free, total = torch.cuda.mem_get_info(device)
        split["context_used_mb"] = round((total - free) / 2 ** 20, 1)
    # FLARE samples the device for the whole run: model loading and the first (autotuning) case too
    whole_run = MemorySampler(device).start()
    CascadePredictor.roi_single_pass_factor = args.roi_single_pass
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = write_random_checkpoints(plans, tmp, stages=stages)
        host = host_labels(plans)
        cls = oracle_predictor(CascadePredictor, lab, host) if args.crops == "oracle" else CascadePredictor
        pred = cls(ckpts, device=device, step_size=args.step_size, windows_per_batch=args.windows_per_batch,
                   num_threads=args.threads)
        ref = cls(ckpts, device="cpu", precision="fp32") if args.check_cpu else None
    if device.type == "cuda" and args.cudnn_benchmark is not None:
        torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    for _ in range(args.warmup):
        pred.predict_array(img, SPACING)
    times = []
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.repeats):
        sync()
        t = time.perf_counter()
        out = pred.predict_array(img, SPACING)  # ends with the host copy: synchronous
        times.append(time.perf_counter() - t)
    from autoseg.inference.profiling import CaseProfile
    prof = CaseProfile(device)
    pred.predict_array(img, SPACING, prof)  # per-stage times (synchronised at stage boundaries)
    sampler = MemorySampler(device).start()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    pred.predict_array(img, SPACING)
    sampler.stop()
    whole_run.stop()
    res = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "shape": list(SHAPE), "spacing": list(SPACING), "crops": args.crops,
        "stages": {s: {k: plans["stages"][s][k] for k in ("target_spacing", "patch_size")} |
                   {"features": plans["stages"][s]["network"]["features"]} for s in stages},
        "step_size": args.step_size, "windows_per_batch": pred.windows_per_batch,
        "times_s": [round(t, 4) for t in times], "median_s": round(float(np.median(times)), 4),
        "stage_times_s": {k: prof.summary()[k] for k in ("roi", "organ", "tumour", "postprocess")},
        "phantom_s": round(t_phantom, 2), "labels_found": int(len(np.unique(out))),
    }
    if ref is not None:  # same weights, CPU float32: how many voxels does the fp16 GPU path change?
        t = time.perf_counter()
        cpu_out = ref.predict_array(img, SPACING)
        res["cpu_fp32_s"] = round(time.perf_counter() - t, 2)
        res["agreement_with_cpu_fp32"] = float((cpu_out == out).mean())
        fg = (cpu_out > 0) | (out > 0)
        res["foreground_agreement_with_cpu_fp32"] = float((cpu_out[fg] == out[fg]).mean()) if fg.any() else 1.0
    if device.type == "cuda":
        mb = 1024 ** 2
        res.update(split)
        res["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        res["max_memory_allocated_mb"] = round(torch.cuda.max_memory_allocated() / mb, 1)
        res["max_memory_reserved_mb"] = round(torch.cuda.max_memory_reserved() / mb, 1)
        res["weights_and_context_allocated_mb"] = round(base / mb, 1)
        res["peak_device_used_mb_sampled"] = round(sampler.peak_device / mb, 1)
        res["peak_device_used_mb_sampled_whole_run"] = round(whole_run.peak_device / mb, 1)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", default=".carry/plans_real.json")
    ap.add_argument("--make-plans", metavar="PATH", help="write default plans for 512x512x200 phantoms and exit")
    ap.add_argument("--out", default=None, help="write the result JSON here")
    ap.add_argument("--crops", choices=["oracle", "predicted", "whole"], default="oracle")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--step-size", type=float, default=0.5)
    ap.add_argument("--windows-per-batch", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cudnn-benchmark", type=int, choices=[0, 1], default=None)
    ap.add_argument("--roi-single-pass", type=float, default=2.0, help="0 disables the whole-volume roi pass")
    ap.add_argument("--alloc-conf", default="expandable_segments:True", help="PYTORCH_CUDA_ALLOC_CONF ('' = default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-cpu", action="store_true", help="also predict on CPU in fp32 and report agreement")
    args = ap.parse_args()
    if args.make_plans:
        plans = make_plans(Path(args.make_plans))
        print(json.dumps({s: {k: v for k, v in st.items() if k in ("target_spacing", "patch_size", "network")}
                          for s, st in plans["stages"].items()}))
        return
    _allow_missing_simpleitk()
    if args.alloc_conf:
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = args.alloc_conf
    res = run(args)
    res["alloc_conf"] = args.alloc_conf
    res["roi_single_pass_factor"] = args.roi_single_pass
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
