"""CPU inference benchmarks.

``memory``: peak RAM of the whole pipeline on a 512x512xN CT (issue: N=1000 within 8 GB), with the
default planner's plans and random-weight models; by default the organ model searches the whole
body (no ROI crop: the worst case) and the tumour stage runs inside the phantom's liver box.

    python benchmarks/bench_inference_cpu.py memory --plans .carry/plans_real.json --slices 1000

``precision``: seconds per forward pass of one patch on CPU, fp32 vs bf16 autocast, 1 vs 2 windows per
pass (how the CPU default was chosen).

    python benchmarks/bench_inference_cpu.py precision --plans .carry/plans_real.json

``tensors``: what a GPU's allocator would be asked for, measured on a CPU: peak bytes of live torch
tensors (profiler memory events) in one window's forward pass per stage, plain versus inference forward,
and per cascade stage in ``predict_array`` on the GPU benchmark's 512x512x200 CT (bf16 autocast as the
stand-in for CUDA's fp16; oneDNN's layout copies make the CPU figures an upper bound).

    python benchmarks/bench_inference_cpu.py tensors --plans .carry/plans_real.json

The side-by-side comparison with ``nnUNetv2_predict`` is ``python -m benchmarks.run`` (its infer stage).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def memory(args: argparse.Namespace) -> dict:
    import torch

    from benchmarks.bench_inference_gpu import _allow_missing_simpleitk, host_labels, oracle_predictor
    _allow_missing_simpleitk()
    from autoseg.synthetic import make_phantom
    from autoseg.inference.predictor import CascadePredictor
    from autoseg.inference.profiling import CaseProfile, MemorySampler, current_rss_bytes
    from autoseg.inference.random_models import write_random_checkpoints

    plans = json.loads(Path(args.plans).read_text())
    stages = [s for s in plans["stages"] if not (args.crops == "whole" and s == "roi")]
    spacing = (args.z_spacing, 0.8, 0.8)
    t = time.perf_counter()
    img, lab, _ = make_phantom(args.seed, "real", shape=(args.slices, 512, 512), spacing=spacing,
                               orientation="LPS")
    t_phantom = time.perf_counter() - t
    rss_inputs = current_rss_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = write_random_checkpoints(plans, tmp, stages=stages)
        host = host_labels(plans)
        cls = oracle_predictor(CascadePredictor, lab, host) if args.crops != "predicted" else CascadePredictor
        pred = cls(ckpts, device="cpu", step_size=args.step_size, num_threads=args.threads)
    if args.crops == "whole":  # no roi stage loaded: organ on the whole body; tumour in the liver box
        pred.use_roi = False
    del lab  # the oracle keeps its own reference
    sampler = MemorySampler(torch.device("cpu")).start()
    prof = CaseProfile(torch.device("cpu"), sampler=sampler)
    rss_before = current_rss_bytes()
    t = time.perf_counter()
    out = pred.predict_array(img, spacing, prof)
    wall = time.perf_counter() - t
    sampler.stop()
    mb = 1024 ** 2
    return {"shape": list(img.shape), "spacing": list(spacing), "crops": args.crops, "threads": torch.get_num_threads(),
            "stages": list(pred.stages), "wall_s": round(wall, 1), "profile": prof.summary(),
            "rss_inputs_mb": round(rss_inputs / mb, 1), "rss_before_predict_mb": round(rss_before / mb, 1),
            "peak_rss_mb": round(sampler.peak_rss / mb, 1), "phantom_s": round(t_phantom, 1),
            "labels_found": [int(v) for v in np.unique(out)]}


def precision(args: argparse.Namespace) -> dict:
    """Seconds per forward pass of one organ-stage patch on CPU: fp32 vs bf16 autocast, 1 vs 2 windows."""
    import torch

    from autoseg.networks import build_network
    from autoseg.plans import num_outputs
    from autoseg.inference.sliding_window import _forward

    if args.threads:
        torch.set_num_threads(args.threads)
    plans = json.loads(Path(args.plans).read_text())
    st = plans["stages"][args.stage]
    net = build_network(st["network"], 1, num_outputs(plans, args.stage)).eval()
    patch = [int(p) for p in (args.patch or st["patch_size"])]
    res: dict = {"stage": args.stage, "patch": patch, "threads": torch.get_num_threads(), "s_per_window": {}}
    with torch.inference_mode():
        for amp in (None, torch.bfloat16):
            for batch in (1, 2):
                x = torch.randn(batch, 1, *patch)
                _forward(net, x, None, amp)  # warm-up
                t = time.perf_counter()
                for _ in range(args.repeats):
                    _forward(net, x, None, amp)
                per = (time.perf_counter() - t) / args.repeats / batch
                res["s_per_window"][f"{'bf16' if amp else 'fp32'}_batch{batch}"] = round(per, 3)
    return res


def tensors(args: argparse.Namespace) -> dict:
    import torch

    from benchmarks.bench_inference_gpu import (SHAPE, SPACING, _allow_missing_simpleitk, host_labels,
                                                oracle_predictor, phantom)
    from benchmarks.tensor_memory import peak_tensor_bytes, peak_tensor_bytes_by_range
    _allow_missing_simpleitk()
    from autoseg.inference.predictor import CascadePredictor
    from autoseg.inference.profiling import CaseProfile
    from autoseg.inference.random_models import write_random_checkpoints

    if args.threads:
        torch.set_num_threads(args.threads)
    mb = 1024 ** 2
    plans = json.loads(Path(args.plans).read_text())
    img, lab = phantom(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = write_random_checkpoints(plans, tmp)
        host = host_labels(plans)
        pred = oracle_predictor(CascadePredictor, lab, host)(ckpts, device="cpu", precision="bf16")
    res: dict = {"shape": list(SHAPE), "spacing": list(SPACING), "threads": torch.get_num_threads(),
                 "precision": "bf16", "windows": {}}
    for stage, sm in pred.stages.items():
        net, x = sm.network, torch.randn(1, 1, *sm.patch_size)
        row = {"patch": sm.patch_size, "weights_mb": round(sum(p.numel() * p.element_size()
                                                               for p in net.parameters()) / mb, 1)}
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            row["forward_inference_mb"] = round(peak_tensor_bytes(lambda: net(x))[1] / mb, 1)
            for m in net.nets:
                m.deep_supervision = True  # the plain forward (EnsembleNet keeps the full-res head)
            row["forward_plain_mb"] = round(peak_tensor_bytes(lambda: net(x))[1] / mb, 1)
            for m in net.nets:
                m.deep_supervision = False
        res["windows"][stage] = row
    prof = CaseProfile(torch.device("cpu"))
    t = time.perf_counter()
    _, peaks = peak_tensor_bytes_by_range(lambda: pred.predict_array(img, SPACING, prof))
    res["predict_s"] = round(time.perf_counter() - t, 1)
    res["predict_peak_mb"] = {k: round(v / mb, 1) for k, v in peaks.items()}
    res["weights_all_stages_mb"] = round(sum(r["weights_mb"] for r in res["windows"].values()), 1)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("memory", help="peak RAM on a 512x512xN CT")
    m.add_argument("--plans", default=".carry/plans_real.json")
    m.add_argument("--slices", type=int, default=1000)
    m.add_argument("--z-spacing", type=float, default=1.0)
    m.add_argument("--crops", choices=["whole", "oracle", "predicted"], default="whole")
    m.add_argument("--step-size", type=float, default=0.5)
    m.add_argument("--threads", type=int, default=None)
    m.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("precision", help="CPU forward pass: fp32 vs bf16, 1 vs 2 windows per pass")
    c.add_argument("--plans", default=".carry/plans_real.json")
    c.add_argument("--stage", default="organ")
    c.add_argument("--patch", type=int, nargs=3, default=None)
    c.add_argument("--repeats", type=int, default=2)
    c.add_argument("--threads", type=int, default=None)
    g = sub.add_parser("tensors", help="peak live tensor bytes per window and per cascade stage (CPU)")
    g.add_argument("--plans", default=".carry/plans_real.json")
    g.add_argument("--threads", type=int, default=None)
    g.add_argument("--seed", type=int, default=0)
    for p in (m, c, g):
        p.add_argument("--out", default=None, help="write the result JSON here")
    args = ap.parse_args()
    res = {"memory": memory, "precision": precision, "tensors": tensors}[args.cmd](args)
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
