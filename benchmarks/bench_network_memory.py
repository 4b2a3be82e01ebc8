"""Check the planner's training-memory estimate (planners/memory.py) against reality.

GPU (CUDA available): for each config, one AMP training step (forward, deep-supervision Dice+CE loss,
backward, SGD step) of the real network from autoseg.networks; reports
``torch.cuda.max_memory_allocated`` against the analytical estimate and the fitted overhead factor
(measured / (activations x bytes x batch) after removing the parameter and optimizer bytes).

CPU (always): counts the bytes autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``,
each storage once) in a float32 forward + loss, and compares them with the analytical activation count.

Usage: ``python -m benchmarks.bench_network_memory [--cpu-only] [--json out.json]``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from autoseg.planners.memory import (BYTES_PER_PARAM, OVERHEAD_FACTOR, activation_elements, estimate_training_bytes,
                             parameter_count)
from autoseg.planners.topology import get_topology

# (name, spacing, patch, features_start, max_stages, num_classes, batch)
GPU_CONFIGS = [
    ("organ_iso_128", [1.6, 1.6, 1.6], [128, 128, 128], 32, 6, 7, 2),
    ("organ_80x160x160", [2.5, 1.6, 1.6], [80, 160, 160], 32, 6, 7, 2),
    ("organ_thick_5mm", [5.0, 0.8, 0.8], [40, 256, 256], 32, 6, 7, 2),
    ("organ_64x128x128_b4", [2.5, 1.6, 1.6], [64, 128, 128], 32, 6, 7, 4),
    ("roi_128", [4.0, 3.0, 3.0], [128, 128, 128], 16, 5, 2, 2),
    ("tumour_96x128x128", [2.5, 1.2, 1.2], [96, 128, 128], 32, 6, 2, 2),
    ("small_32x64x64", [1.0, 1.0, 1.0], [32, 64, 64], 32, 5, 3, 2),
]
CPU_CONFIGS = [
    ("cpu_small", [1.0, 1.0, 1.0], [16, 32, 32], 8, 4, 3, 2),
    ("cpu_aniso", [4.0, 1.0, 1.0], [8, 48, 48], 8, 5, 4, 1),
    ("cpu_roi", [3.0, 3.0, 3.0], [32, 32, 32], 4, 4, 2, 2),
]


def _build(spacing, patch, f0, stages, num_classes, device):
    from autoseg.losses import DeepSupervisionLoss, DiceCELoss
    from autoseg.networks import build_network

    net_cfg, patch = get_topology(spacing, patch, f0, 320, stages)
    net = build_network(net_cfg, 1, num_classes, deep_supervision=True).to(device)
    return net_cfg, patch, net, DeepSupervisionLoss(DiceCELoss())


def _batch(patch, batch, num_classes, device):
    x = torch.randn(batch, 1, *patch, device=device)
    y = torch.randint(0, num_classes, (batch, 1, *patch), device=device)
    return x, y


def measure_gpu(cfg) -> dict:
    name, spacing, patch, f0, stages, k, bs = cfg
    dev = torch.device("cuda")
    net_cfg, patch, net, loss_fn = _build(spacing, patch, f0, stages, k, dev)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    scaler = torch.amp.GradScaler("cuda")
    x, y = _batch(patch, bs, k, dev)
    times = []
    for step in range(3):  # the first step allocates optimizer state; measure the steady state
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16):
            loss = loss_fn(net(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated()
    data = x.numel() * 4 + y.numel() * 8
    act = activation_elements(net_cfg, patch, 1, k, True) * 2 * bs
    params = parameter_count(net_cfg, 1, k, True)
    real_params = sum(p.numel() for p in net.parameters())
    est = estimate_training_bytes(net_cfg, patch, bs, 1, k, True, True)
    fitted = (peak - data - BYTES_PER_PARAM * real_params) / act
    del net, opt, x, y
    torch.cuda.empty_cache()
    return {"name": name, "patch": patch, "batch": bs, "features": net_cfg["features"],
            "strides": net_cfg["strides"], "params": real_params, "params_analytical": params,
            "measured_gb": peak / 2**30, "estimate_gb": est / 2**30, "estimate_over_measured": est / peak,
            "fitted_overhead": fitted, "step_s": min(times[1:])}


def measure_cpu(cfg) -> dict:
    """Bytes autograd saves for backward vs the analytical activation count (float32, no AMP)."""
    name, spacing, patch, f0, stages, k, bs = cfg
    net_cfg, patch, net, loss_fn = _build(spacing, patch, f0, stages, k, "cpu")
    x, y = _batch(patch, bs, k, "cpu")
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        if t.numel() > 64:  # ignore scalars and per-channel statistics
            st = t.untyped_storage()
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(net(x), y)
    loss.backward()
    saved = sum(seen.values()) - x.numel() * 4  # the input batch is data, counted once below
    analytical = activation_elements(net_cfg, patch, 1, k, True) * 4 * bs - x.numel() * 4
    return {"name": name, "patch": patch, "batch": bs, "features": net_cfg["features"],
            "autograd_saved_mb": saved / 2**20, "analytical_mb": analytical / 2**20,
            "analytical_over_saved": analytical / saved}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-only", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    report: dict = {"overhead_factor_in_use": OVERHEAD_FACTOR, "cpu": [measure_cpu(c) for c in CPU_CONFIGS]}
    for r in report["cpu"]:
        print(f"CPU {r['name']:22s} saved {r['autograd_saved_mb']:8.1f} MB  analytical {r['analytical_mb']:8.1f} MB"
              f"  ratio {r['analytical_over_saved']:.3f}")
    if torch.cuda.is_available() and not args.cpu_only:
        report["device"] = torch.cuda.get_device_name()
        report["gpu"] = []
        for c in GPU_CONFIGS:
            r = measure_gpu(c)
            report["gpu"].append(r)
            print(f"GPU {r['name']:22s} measured {r['measured_gb']:6.2f} GiB  estimate {r['estimate_gb']:6.2f} GiB  "
                  f"est/meas {r['estimate_over_measured']:.2f}  fitted overhead {r['fitted_overhead']:.2f}  "
                  f"step {r['step_s'] * 1000:.0f} ms")
        report["fitted_overhead_max"] = max(r["fitted_overhead"] for r in report["gpu"])
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
