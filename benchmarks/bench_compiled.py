"""Is a compiled network (TorchScript trace + freeze) faster than eager PyTorch for bundle inference?

Times one sliding-window-sized forward pass (batch 1, fp32, CPU, inference mode, weights random: speed
does not depend on them) for a plain U-Net in two sizes, eager vs ``torch.jit.trace`` +
``torch.jit.freeze`` + ``optimize_for_inference``. Start-up (tracing, freezing) is reported apart.

    flock /tmp/autoseg-cpu.lock .venv/bin/python -m benchmarks.bench_compiled --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from autoseg.networks import build_network

CONFIGS = {
    # the tests' tiny 2-level net and a 5-level organ-stage net as the CPU planner sizes them
    "tiny 2-level, patch 16x32x32": ([4, 8], [16, 32, 32]),
    "5-level 16..256, patch 48x96x96": ([16, 32, 64, 128, 256], [48, 96, 96]),
}


def net_cfg(features: list[int]) -> dict:
    return {"class": "UNet", "features": features, "kernel_sizes": [[3, 3, 3]] * len(features),
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * (len(features) - 1), "blocks": "plain"}


def timed(fn, x: torch.Tensor, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, batch 1, median of {args.repeats} after 2 warm-ups")
    print("| network | eager s | TorchScript s | ratio | trace+freeze s | max abs diff |")
    print("|---|---|---|---|---|---|")
    for name, (features, patch) in CONFIGS.items():
        torch.manual_seed(0)
        net = build_network(net_cfg(features), 1, 4).eval()
        x = torch.randn(1, 1, *patch)
        with torch.inference_mode():
            t = time.perf_counter()
            with torch.no_grad():
                scripted = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(net, x)))
            startup = time.perf_counter() - t
            for fn in (net, scripted):
                timed(fn, x, 2)
            eager = statistics.median(timed(net, x, args.repeats))
            ts = statistics.median(timed(scripted, x, args.repeats))
            diff = float((net(x) - scripted(x)).abs().max())
        print(f"| {name} | {eager:.3f} | {ts:.3f} | {ts / eager:.2f} | {startup:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
