"""Training throughput of the default Trainer, data loading included, and of the loader alone.

For each configuration a synthetic cache (``autoseg.trainers.synthetic_cache``) with the configuration's patch
and topology is written once; then

* loader: patches per second of the training loader (sampling + batchgeneratorsv2 augmentation) with
  0..N worker processes, nothing else running;
* trainer: seconds per training iteration measured like the side-by-side harness does (start of one
  ``train_step`` to the start of the next, so waiting for data counts), after warm-up iterations,
  for each worker count and precision (``amp``: bf16 autocast on CPU / fp16 on CUDA, or fp32).

The side-by-side comparison with nnU-Net v2.8.1 lives in ``benchmarks.run``; this script answers
"how fast is our training loop and is it data-bound" on any machine.

    python -m benchmarks.bench_training [--configs medium] [--iters 5] [--warmup 2] [--workers 0,1]
                                        [--precision amp,fp32] [--device cpu] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from autoseg.plans import load_plans
from autoseg.trainers.synthetic_cache import synthetic_plans, write_synthetic_cache
from autoseg.trainers.trainer import Trainer

# name -> (patch, batch, network config, cached volume shape, spacing)
CONFIGS: dict[str, tuple] = {
    "small": ([32, 64, 64], 2, {"class": "UNet", "features": [16, 32, 64, 128],
                                "kernel_sizes": [[3, 3, 3]] * 4, "strides": [[1, 1, 1]] + [[2, 2, 2]] * 3,
                                "blocks": "plain"}, (48, 96, 96), (1.5, 1.5, 1.5)),
    # the side-by-side harness's --quick setting: nnU-Net's 3d_fullres topology with the patch capped
    "quick": ([32, 96, 96], 2, {"class": "UNet", "features": [32, 64, 128, 256, 320, 320],
                                "kernel_sizes": [[1, 3, 3]] + [[3, 3, 3]] * 5,
                                "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
                                "blocks": "plain"}, (40, 140, 140), (3.8, 1.0, 1.0)),
    "medium": ([64, 128, 128], 2, {"class": "UNet", "features": [16, 32, 64, 128, 256],
                                   "kernel_sizes": [[3, 3, 3]] * 5, "strides": [[1, 1, 1]] + [[2, 2, 2]] * 4,
                                   "blocks": "plain"}, (90, 170, 170), (1.6, 1.6, 1.6)),
    # nnU-Net's 3d_fullres plan for the abdominal phantoms (benchmarks' PEER.md): 6 stages, 32-320, 31 M params
    "fullres": ([80, 160, 160], 2, {"class": "UNet", "features": [32, 64, 128, 256, 320, 320],
                                    "kernel_sizes": [[1, 3, 3]] + [[3, 3, 3]] * 5,
                                    "strides": [[1, 1, 1], [1, 2, 2]] + [[2, 2, 2]] * 4, "blocks": "plain"},
                (100, 220, 220), (2.0, 0.8, 0.8)),
}


class TimedTrainer(Trainer):
    """Records iteration intervals; no per-epoch validation beyond one batch, no final validation."""

    val_iters_per_epoch = 1

    def train_step(self, batch):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if getattr(self, "_last", None) is not None:
            self.intervals.append(now - self._last)
        self._last = now
        return super().train_step(batch)

    def on_epoch_end(self, *args, **kwargs):
        self._last = None
        super().on_epoch_end(*args, **kwargs)

    def final_validation(self):
        pass


def make_cache(root: Path, name: str) -> Path:
    patch, batch, net, shape, spacing = CONFIGS[name]
    folder = root / f"Dataset990_Bench{name.capitalize()}"
    if not (folder / "plans.json").is_file():
        plans = synthetic_plans(folder.name, patch_size=patch, batch_size=batch, spacing=spacing, network=net)
        write_synthetic_cache(folder, plans, num_cases=4, shape=shape)
    return folder


def bench_loader(folder: Path, workers: int, batches: int, device: str) -> dict:
    t = Trainer(load_plans(folder / "plans.json"), "organ", "all", folder, device, folder / "unused",
                num_workers=workers)
    t.setup_cases()
    loader, val_loader = t.get_dataloaders()
    val_loader.close()
    with loader:
        next(loader)  # start-up (fork, first reads) is not throughput
        t0 = time.perf_counter()
        for _ in range(batches):
            next(loader)
        dt = time.perf_counter() - t0
    return {"workers": workers, "batches": batches, "patches_per_s": batches * t.batch_size / dt}


def bench_trainer(folder: Path, workers: int, amp: bool, warmup: int, iters: int, device: str, out: Path,
                  channels_last: bool | None = None) -> dict:
    TimedTrainer.channels_last = channels_last
    t = TimedTrainer(load_plans(folder / "plans.json"), "organ", "all", folder, device, out, num_epochs=1,
                     iters_per_epoch=warmup + iters + 1, num_workers=workers, amp=amp)
    t.intervals = []
    t0 = time.perf_counter()
    t.fit()
    timed = t.intervals[warmup:]
    med = statistics.median(timed)
    return {"workers": workers, "precision": str(t.amp_dtype).replace("torch.", "") if t.amp_dtype else "fp32",
            "channels_last": t.memory_format == torch.channels_last_3d,
            "iter_s_median": med, "iters_per_s": 1.0 / med, "iter_s_all": timed,
            "patches_per_s": t.batch_size / med, "wall_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_training", description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="medium", help=f"comma list of {', '.join(CONFIGS)}")
    ap.add_argument("--iters", type=int, default=5, help="timed iterations per run (0: loader only)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--workers", default="0,1", help="comma list of worker counts")
    ap.add_argument("--precision", default="amp,fp32", help="comma list of amp, fp32")
    ap.add_argument("--layout", default="auto", help="comma list of auto, cl (channels-last), ncdhw")
    ap.add_argument("--loader-batches", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", type=Path, default=None, help="cache folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    work = a.work or Path(tempfile.mkdtemp(prefix="bench_training_"))
    workers = [int(w) for w in a.workers.split(",")]
    results: dict = {"device": a.device, "torch_threads": torch.get_num_threads(), "configs": {}}
    for name in a.configs.split(","):
        folder = make_cache(work, name)
        patch, batch, net, shape, _ = CONFIGS[name]
        entry = {"patch": patch, "batch": batch, "features": net["features"], "loader": [], "trainer": []}
        for w in workers:
            entry["loader"].append(bench_loader(folder, w, a.loader_batches, a.device))
            print(f"{name}: loader, {w} workers: {entry['loader'][-1]['patches_per_s']:.2f} patches/s", flush=True)
        layouts = {"auto": None, "cl": True, "ncdhw": False}
        for prec in a.precision.split(",") if a.iters > 0 else []:
            for lay in a.layout.split(","):
                for w in workers:
                    r = bench_trainer(folder, w, prec == "amp", a.warmup, a.iters, a.device,
                                      work / "results" / name, layouts[lay])
                    entry["trainer"].append(r)
                    print(f"{name}: trainer, {r['precision']}, {'channels-last' if r['channels_last'] else 'NCDHW'}, "
                          f"{w} workers: {r['iter_s_median']:.3f} s/iter "
                          f"({r['iters_per_s']:.3f} it/s, {r['patches_per_s']:.2f} patches/s)", flush=True)
        results["configs"][name] = entry
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
