"""Is a compiled network (TorchScript trace + freeze) faster than eager PyTorch for bundle inference?

Times one sliding-window-sized forward pass (batch 1, fp32, CPU, no_grad, weights random: speed does
not depend on them) for a plain U-Net in two sizes: eager, ``torch.jit.trace`` + ``freeze``, and the
same + ``optimize_for_inference``, each with its largest difference to eager's logits (a compiled form
that changes the logits is not a candidate). Build time (trace, freeze) is reported apart.

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
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, batch 1, median of {args.repeats} after 2 warm-ups")
    print("| network | variant | forward s | vs eager | build s | max abs diff to eager |")
    print("|---|---|---|---|---|---|")
    for name, (features, patch) in CONFIGS.items():
        torch.manual_seed(0)
        net = build_network(net_cfg(features), 1, 4).eval()
        x = torch.randn(1, 1, *patch)
        with torch.no_grad():
            ref = net(x)
            timed(net, x, 1)
            eager = statistics.median(timed(net, x, args.repeats))
            print(f"| {name} | eager | {eager:.3f} | 1.00 | 0 | 0 |", flush=True)
            for variant, build in VARIANTS.items():
                t = time.perf_counter()
                fn = build(net, x)
                startup = time.perf_counter() - t
                timed(fn, x, 2)
                sec = statistics.median(timed(fn, x, args.repeats))
                diff = float((fn(x) - ref).abs().max())
                print(f"| {name} | {variant} | {sec:.3f} | {sec / eager:.2f} | {startup:.2f} | {diff:.1e} |", flush=True)


VARIANTS = {
    "TorchScript trace+freeze": lambda net, x: torch.jit.freeze(torch.jit.trace(net, x)),
    # optimize_for_inference rewrites convolutions for MKLDNN and folds norms: check its output
    "TorchScript trace+freeze+optimize_for_inference":
        lambda net, x: torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(net, x))),
}


if __name__ == "__main__":
    main()
