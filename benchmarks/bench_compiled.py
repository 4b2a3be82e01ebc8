"""Same work, faster: one sliding-window forward pass of autoseg's networks, eager PyTorch against the
compiled CPU engines that ``run_inference --engine`` can choose (``autoseg.inference.compiled``).

Per network (built through ``autoseg.networks`` from real plans, random weights: speed does not depend
on them; batch 1, the stage's patch, ``torch.inference_mode``) and variant: the median forward time
after warm-up, its speed against eager fp32, the build time (export, compile) and, against eager fp32's
logits on the same normal-noise window, the largest |logit difference| and the share of argmax voxels
that agree. Variants: eager fp32, eager bf16 autocast (conv weights stored bf16 as the predictor does),
eager channels-last, ``torch.compile`` (inductor, frozen weights), ONNX Runtime (CPU EP), OpenVINO
(fp32 hint, and bf16 where the CPU has native bf16), and int8 static quantisation run by ONNX Runtime
and OpenVINO (speed only: the weights are random). Plans come from ``--plans FILE`` (every stage, or
``FILE:stage,stage``); ``nnunet-fullres`` is nnU-Net's full-width 3d_fullres U-Net (32..320, patch
80x160x160, as in bench_training). Make plans for a phantom dataset with::

    autoseg make_phantoms --size medium --num-train 3 --num-test 0
    autoseg plan_and_preprocess -t 501 --planner CPUPlanner     # plans.json: the CPU plans
    autoseg plan_and_preprocess -t 501 -p default                # plans_default.json: the default planner

and time (one network per locked run keeps each under 15 minutes on 2 cores)::

    flock /tmp/autoseg-cpu.lock .venv/bin/python -m benchmarks.bench_compiled --threads 2 \\
        --plans $AUTOSEG_PREPROCESSED/Dataset501_Phantom/plans.json --json out.json
    flock /tmp/autoseg-cpu.lock .venv/bin/python -m benchmarks.bench_compiled --threads 2 --network nnunet-fullres
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from autoseg.devices import cpu_bf16_supported
from autoseg.networks import build_network
from autoseg.plans import num_outputs, stage_in_channels
from autoseg.inference import compiled as C

FULLRES = ({"class": "UNet", "features": [32, 64, 128, 256, 320, 320], "kernel_sizes": [[1, 3, 3]] + [[3, 3, 3]] * 5,
            "strides": [[1, 1, 1], [1, 2, 2]] + [[2, 2, 2]] * 4, "blocks": "plain"}, [80, 160, 160], 1, 8)


def networks_from(args: argparse.Namespace) -> dict[str, tuple[dict, list[int], int, int]]:
    """``{label: (network config, patch, in channels, outputs)}`` from the plans files and built-ins."""
    out = {}
    for spec in args.plans:
        path, _, only = spec.partition(":")
        plans = json.loads(Path(path).read_text())
        for stage, cfg in plans["stages"].items():
            if only and stage not in only.split(","):
                continue
            label = f"{plans.get('planner', 'plans')} {stage} ({cfg['network']['class']} " \
                    f"{cfg['network']['features'][0]}..{max(cfg['network']['features'])})"
            out[label] = (cfg["network"], list(cfg["patch_size"]), stage_in_channels(plans, stage),
                          num_outputs(plans, stage))
    if "nnunet-fullres" in args.network:
        out["nnU-Net 3d_fullres UNet (32..320)"] = FULLRES
    return out


def _eager_bf16(net: torch.nn.Module, x: torch.Tensor):
    return C.eager_bf16(net)  # what the predictor runs under CPU bf16 autocast without an engine


def _int8(engine: C.Engine, onnx_dir: Path):
    """ONNX Runtime static quantisation (QDQ, per-channel int8 weights, uint8 activations) calibrated on
    four noise windows: a speed probe only (random weights: the agreement column says little)."""
    def build(net, x):
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        fp32 = C.export_onnx(net, x, onnx_dir / C.onnx_name(C.network_digest(net), x.shape))
        pre, q = onnx_dir / "pre.onnx", onnx_dir / f"int8-{fp32.name}"
        quant_pre_process(str(fp32), str(pre))
        windows = iter([{"x": torch.randn(x.shape).numpy()} for _ in range(4)])

        class Reader(CalibrationDataReader):
            def get_next(self):
                return next(windows, None)
        logging.getLogger().setLevel(logging.ERROR)  # one "axis out of range" note per 1-D norm weight
        quantize_static(str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return engine.build(net, x, q)
    return build


def variants(onnx_dir: Path) -> dict:
    """``{name: (why not available or None, build(net, x) -> runner)}``."""
    def engine(e: C.Engine):
        def build(net, x):
            onnx = C.export_onnx(net, x, onnx_dir / C.onnx_name(C.network_digest(net), x.shape)) if e.persistent else None
            return e.build(net, x, onnx)
        return build

    bf16 = None if cpu_bf16_supported() else "CPU lacks native bf16 (AVX512-BF16/AMX): emulated"
    return {
        "eager bf16 autocast": (None, _eager_bf16),
        "eager channels-last": (None, engine(C.ChannelsLastEngine())),
        "torch.compile (inductor)": (C.CompileEngine().missing(), engine(C.CompileEngine())),
        "ONNX Runtime (CPU EP)": (C.OnnxRuntimeEngine().missing(), engine(C.OnnxRuntimeEngine())),
        "OpenVINO fp32": (C.OpenVinoEngine().missing(), engine(C.OpenVinoEngine())),
        "OpenVINO bf16 hint": (C.OpenVinoBf16Engine().missing(), engine(C.OpenVinoBf16Engine())),
        "ONNX Runtime int8 (static QDQ)": (C.OnnxRuntimeEngine().missing(), _int8(C.OnnxRuntimeEngine(), onnx_dir)),
        "OpenVINO int8 (static QDQ)": (C.OpenVinoEngine().missing() or C.OnnxRuntimeEngine().missing(),
                                       _int8(C.OpenVinoEngine(), onnx_dir)),
        "_bf16_note": (bf16, None),
    }


def timed(fn, x: torch.Tensor, warmups: int, repeats: int) -> float:
    for _ in range(warmups):
        fn(x)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def bench_network(label: str, spec: tuple, args: argparse.Namespace, onnx_dir: Path) -> list[dict]:
    cfg, patch, cin, cout = spec
    torch.manual_seed(0)
    net = build_network(cfg, cin, cout, deep_supervision=False).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    x = C.probe_input([1, cin, *patch])
    rows = []
    with torch.inference_mode():
        ref = net(x).float()
        eager = timed(net, x, 1, args.repeats)
        rows.append({"network": label, "patch": patch, "variant": "eager fp32", "seconds": eager, "build_s": 0.0,
                     "max_abs_diff": 0.0, "agreement": 1.0})
        emit(rows[-1], eager)
        vs = variants(onnx_dir)
        note = vs.pop("_bf16_note")[0]
        for name, (missing, build) in vs.items():
            if args.variants and not any(v.lower() in name.lower() for v in args.variants):
                continue
            row = {"network": label, "patch": patch, "variant": name}
            if missing:
                row["skipped"] = missing
            else:
                try:
                    t = time.perf_counter()
                    fn = build(net, x)
                    out = fn(x)  # first call: compiles lazily built variants
                    row["build_s"] = time.perf_counter() - t
                    row["agreement"], row["max_abs_diff"] = C.agreement(ref, out)
                    row["seconds"] = timed(fn, x, 1, args.repeats)
                    if "bf16" in name and note:
                        row["note"] = note
                    if "int8" in name:
                        row["note"] = "speed probe: random weights, noise calibration"
                except Exception as e:
                    row["skipped"] = f"failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:160]}"
                del fn
            rows.append(row)
            emit(row, eager)
    return rows


def emit(row: dict, eager: float) -> None:
    if "skipped" in row:
        print(f"| {row['network']} | {row['variant']} | – | – | – | – | – | {row['skipped']} |", flush=True)
        return
    print(f"| {row['network']} | {row['variant']} | {row['seconds']:.3f} | {eager / row['seconds']:.2f}x | "
          f"{row['build_s']:.1f} | {row['max_abs_diff']:.1e} | {row['agreement']:.4%} | {row.get('note', '')} |",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--plans", action="append", default=[], metavar="FILE[:STAGES]",
                    help="plans.json whose stages' networks are timed (repeatable; ':organ,roi' picks stages)")
    ap.add_argument("--network", action="append", default=[], choices=["nnunet-fullres"], help="built-in network")
    ap.add_argument("--variants", nargs="*", default=None, help="only variants whose name contains one of these")
    ap.add_argument("--json", default=None, help="append the rows to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch 1, median of {args.repeats} after a warm-up; "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("| network | variant | forward s | speed vs eager fp32 | build s | max abs logit diff | argmax agreement | note |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-compiled-") as tmp:
        for label, spec in networks_from(args).items():
            rows += bench_network(label, spec, args, Path(tmp))
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.json:
        path = Path(args.json)
        old = json.loads(path.read_text()) if path.is_file() else []
        path.write_text(json.dumps(old + [dict(r, threads=args.threads, torch=torch.__version__,
                                                   load=os.getloadavg()) for r in rows], indent=1))


if __name__ == "__main__":
    main()
