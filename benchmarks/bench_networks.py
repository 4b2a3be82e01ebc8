"""The network classes side by side on CT phantoms: size, FLOPs, CPU speed, memory estimate, DSC.

One organ stage planned by the CPUPlanner on the whole body crop (``--stages organ``, so every
network, SCN included, sees the same input); each network gets that plans' topology, patch and batch
with only ``network.class`` swapped, the same training recipe (TrainerFast, same seed, same
iterations) and the same test phantoms.

    python -m benchmarks.bench_networks prepare  --work W          # phantoms + preprocessing
    nice -n 19 python -m benchmarks.bench_networks train --work W  # background, no lock needed
    flock /tmp/autoseg-cpu.lock python -m benchmarks.bench_networks speed --work W
    flock /tmp/autoseg-cpu.lock python -m benchmarks.bench_networks evaluate --work W
    python -m benchmarks.bench_networks report --work W --out benchmarks/RESULTS_networks.md
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.measure import median_seconds

NETWORKS = ["UNet", "ResEncUNet", "EfficientSegNet", "EfficientSegNetPublished", "SpatialConfigurationNet"]
DATASET_ID = 512
NAME = "Dataset512_NetBench"


def _plans(work: Path) -> dict:
    from autoseg.plans import load_plans

    return load_plans(work / "preprocessed" / NAME / "plans.json")


def _net_plans(plans: dict, cls: str) -> dict:
    p = copy.deepcopy(plans)
    p["stages"]["organ"]["network"]["class"] = cls
    return p


def prepare(work: Path, num_train: int, num_test: int, patch: list[int] | None) -> None:
    """Phantoms, CPUPlanner plans (organ stage only) and the cache; ``patch`` caps the planned patch
    (the topology is kept: still divisible by its total stride) so five networks train in minutes."""
    from autoseg.planners import plan_and_preprocess
    from autoseg.plans import save_plans
    from autoseg.synthetic import make_phantom_dataset

    make_phantom_dataset(work / "raw", DATASET_ID, name="NetBench", num_train=num_train, num_test=num_test,
                         seed=0, size="small", num_workers=1, progress=False)
    plan_and_preprocess(DATASET_ID, planner="CPUPlanner", stages=["organ"], num_workers=1, raw=work / "raw",
                        preprocessed=work / "preprocessed", progress=False)
    if patch:
        plans = _plans(work)
        plans["stages"]["organ"]["patch_size"] = [min(a, b) for a, b in zip(plans["stages"]["organ"]["patch_size"], patch)]
        save_plans(plans, work / "preprocessed" / NAME / "plans.json")


def train(work: Path, epochs: int, iters: int, networks: list[str]) -> None:
    from autoseg.trainers.fast import TrainerFast

    plans = _plans(work)
    for cls in networks:
        out = work / "results" / cls
        if (out / "checkpoint_final.pt").is_file():
            continue

        class Bench(TrainerFast):
            def final_validation(self) -> None:  # the test phantoms are the evaluation
                pass

        t0 = time.perf_counter()
        tr = Bench(_net_plans(plans, cls), "organ", "all", work / "preprocessed" / NAME, "cpu", out,
                   num_epochs=epochs, iters_per_epoch=iters, num_workers=1, seed=0)
        tr.fit()
        (out / "bench_train.json").write_text(json.dumps({"wall_s": time.perf_counter() - t0,
                                                          "iterations": epochs * iters}))



def speed(work: Path, repeats: int, networks: list[str], timing: bool = True) -> dict:
    """Per network: parameters, forward FLOPs per patch, inference s/patch (bf16 and fp32, no grad,
    the predictor's path), training step s (bf16 autocast, AdamW, deep supervision), memory."""
    from torch.utils.flop_counter import FlopCounterMode

    from autoseg.losses import DeepSupervisionLoss, DiceCELoss
    from autoseg.networks import build_network, count_parameters
    from autoseg.planners.memory import GIB, OVERHEAD_FACTOR, estimate_training_bytes
    from autoseg.planners.network_memory import network_activation_elements
    from autoseg.plans import num_outputs
    from benchmarks.tensor_memory import peak_tensor_bytes

    torch.set_num_threads(2)
    plans = _plans(work)
    st = plans["stages"]["organ"]
    patch, bs, k = st["patch_size"], st["batch_size"], num_outputs(plans, "organ")
    rows = {}
    for cls in networks:
        net_cfg = dict(st["network"], **{"class": cls})
        torch.manual_seed(0)
        net = build_network(net_cfg, 1, k, deep_supervision=True)
        x1 = torch.randn(1, 1, *patch)
        net.eval()
        net.deep_supervision = False
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            net(x1)
        with torch.no_grad():
            inf32 = median_seconds(lambda: net(x1), repeats) if timing else None
            with torch.autocast("cpu", dtype=torch.bfloat16):
                inf16 = median_seconds(lambda: net(x1), repeats) if timing else None
            _, inf_peak = peak_tensor_bytes(lambda: net(x1))
        net.train()
        net.deep_supervision = True
        loss_fn = DeepSupervisionLoss(DiceCELoss())
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        x, y = torch.randn(bs, 1, *patch), torch.randint(0, k, (bs, 1, *patch))

        def step(amp: bool) -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()

        step_bf16 = median_seconds(lambda: step(True), max(1, repeats // 2)) if timing else None
        if not timing:
            step(False)  # creates AdamW's state, as the timed steps do
        opt.zero_grad(set_to_none=True)
        params = {p.untyped_storage().data_ptr() for p in net.parameters()}
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            s = t.untyped_storage()
            if t.numel() > 64 and s.data_ptr() not in params:
                seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss_fn(net(x), y).backward()
        opt.zero_grad(set_to_none=True)
        _, step_peak = peak_tensor_bytes(lambda: step(False))  # fp32 step; AdamW state exists already
        weights = sum(p.numel() * 4 for p in net.parameters()) * 3  # weights + AdamW's two moments
        rows[cls] = {
            "params": count_parameters(net), "gflops_per_patch": fc.get_total_flops() / 1e9,
            "infer_patch_s_fp32": inf32, "infer_patch_s_bf16": inf16, "infer_patch_peak_mb_fp32": inf_peak / 2**20,
            "train_step_s_bf16": step_bf16,
            "activations_counted_mb_fp32": network_activation_elements(net_cfg, patch, 1, k, True) * 4 * bs / 2**20,
            "autograd_saved_mb_fp32": sum(seen.values()) / 2**20,
            "estimate_gb_fp32": estimate_training_bytes(net_cfg, patch, bs, 1, k, True, False) / GIB,
            "measured_step_peak_gb_fp32": (step_peak + weights) / GIB,
            "estimate_gb_amp_planner": estimate_training_bytes(net_cfg, patch, bs, 1, k, True, True) / GIB,
            "overhead_factor": OVERHEAD_FACTOR,
        }
        print(cls, json.dumps(rows[cls]))
    return {"patch": patch, "batch": bs, "num_classes": k, "topology": st["network"], "rows": rows}


def evaluate(work: Path, networks: list[str]) -> dict:
    """Predict the test phantoms with each trained model (bf16 where the CPU has it, the predictor's
    default), time each case, score organ DSC."""
    from autoseg.evaluation.metrics import dice
    from autoseg.inference import CascadePredictor
    from autoseg.io import read_image

    torch.set_num_threads(2)
    raw = work / "raw" / NAME
    cases = sorted(raw.glob("imagesTs/*_0000.nii.gz"))
    plans = _plans(work)
    organs = plans["stages"]["organ"]["classes"]
    rows = {}
    for cls in networks:
        ckpt = work / "results" / cls / "checkpoint_final.pt"
        if not ckpt.is_file():
            continue
        pred = CascadePredictor({"organ": [ckpt]}, device="cpu")
        times, dscs = [], []
        for img_path in cases:
            img, geo = read_image(img_path)
            gt, _ = read_image(raw / "labelsTs" / img_path.name.replace("_0000", ""))
            t0 = time.perf_counter()
            seg = pred.predict_array(img, geo.spacing)
            times.append(time.perf_counter() - t0)
            dscs.append([dice(gt == c, seg == c) for c in organs])
        train_info = json.loads((work / "results" / cls / "bench_train.json").read_text())
        rows[cls] = {"infer_case_s": statistics.median(times), "cases": len(cases),
                     "dsc_mean": float(np.mean(dscs)), "dsc_per_class": np.mean(dscs, axis=0).round(4).tolist(),
                     "train_wall_s": train_info["wall_s"], "iterations": train_info["iterations"]}
        print(cls, json.dumps(rows[cls]))
    return {"classes": organs, "labels": plans["labels"], "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["prepare", "train", "speed", "evaluate", "report"])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--networks", default=",".join(NETWORKS))
    ap.add_argument("--num-train", type=int, default=8)
    ap.add_argument("--num-test", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-timing", action="store_true", help="speed: sizes, FLOPs and memory only")
    ap.add_argument("--patch", default="32,64,64", help="prepare: cap of the planned patch (z,y,x); '' keeps it")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/RESULTS_networks.md"))
    a = ap.parse_args(argv)
    nets = a.networks.split(",")
    if a.command == "prepare":
        prepare(a.work, a.num_train, a.num_test, [int(v) for v in a.patch.split(",")] if a.patch else None)
    elif a.command == "train":
        train(a.work, a.epochs, a.iters, nets)
    elif a.command == "speed":
        (a.work / "speed.json").write_text(json.dumps(speed(a.work, a.repeats, nets, not a.no_timing), indent=1))
    elif a.command == "evaluate":
        (a.work / "evaluate.json").write_text(json.dumps(evaluate(a.work, nets), indent=1))
    else:
        from benchmarks.networks_report import write_report

        write_report(a.work, a.out, platform.processor() or platform.machine())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
