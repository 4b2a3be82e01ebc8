"""Side-by-side benchmark of autoseg ("ours") against nnU-Net v2.8.1 ("theirs"); writes RESULTS.md.

    python -m benchmarks.run [--quick | --quality] [--stages preprocess,train,infer] [--work DIR] [--device cpu|cuda]

One seeded phantom dataset in nnU-Net v2 raw format is given to both tools. Each stage runs the two
tools alternately (ours, theirs, ours, theirs ...) so that slow drifts of a shared machine hit both;
every run is a separate process tree whose wall time and peak memory are sampled (benchmarks.measure).
Both tools get nnU-Net's 3d_fullres choices (spacing, patch, batch, U-Net topology), translated into an
autoseg plans file, so the work is equal. ``--quick`` (< 15 min on 2 quiet cores) uses few small cases,
a capped patch and one cropped inference case. ``--quality`` compares the predictors on accuracy as
well as speed: each tool trains one model (coarser spacing, half width, to fit a CPU), and each model
runs through both predictors (``benchmarks.quality``); the report is ``RESULTS_trained.md``.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import harness, peer_env
from benchmarks.report import from_json, render, to_json
from benchmarks.quality import QualityBench
from benchmarks.stages import STAGES, Bench

log = logging.getLogger("benchmarks")
DEFAULT_RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


@dataclass
class Settings:
    quick: bool = False
    quality: bool = False
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    work: Path = harness.REPO / "bench_work" / "side_by_side"
    device: str = "cpu"
    venv: Path = field(default_factory=peer_env.default_venv)
    output: Path = DEFAULT_RESULTS
    task: int = 501
    seed: int = 2024
    size: str = "medium"
    n_train: int = 8
    n_test: int = 2
    num_workers: int = 2
    repeats_preprocess: int = 2
    repeats_train: int = 2
    repeats_infer: int = 2
    warmup_iters: int = 1
    measured_iters: int = 5
    quality_epochs: int = 0             # --quality: epochs x iterations of the model both predictors use
    quality_iters: int = 50
    patch_cap: list[int] | None = None
    features_scale: float | None = None
    spacing: list[float] | None = None
    infer_cases: int = 2
    infer_max_shape: list[int] | None = None
    their_default_tta: bool = True
    timeout_s: float | None = None
    render_only: bool = False

    @classmethod
    def quick_preset(cls) -> "Settings":
        return cls(quick=True, size="small", n_train=4, n_test=1, repeats_preprocess=2, repeats_train=2,
                   repeats_infer=2, warmup_iters=1, measured_iters=4, patch_cap=[32, 96, 96], infer_cases=1,
                   infer_max_shape=[48, 128, 128], their_default_tta=True, timeout_s=900)

    @classmethod
    def quality_preset(cls) -> "Settings":
        """The quick timing runs at 4 x 2 x 2 mm with a half-width network, plus one model per tool trained
        600 iterations with the same recipe, each run through both predictors (benchmarks.quality)."""
        return cls(quality=True, stages=["train", "infer"], work=harness.REPO / "bench_work" / "quality",
                   output=DEFAULT_RESULTS.with_name("RESULTS_trained.md"), size="small", n_train=12, n_test=3,
                   repeats_train=2, repeats_infer=2, warmup_iters=1, measured_iters=6, quality_epochs=12,
                   quality_iters=50, patch_cap=[32, 64, 64], features_scale=0.5, spacing=[4.0, 2.0, 2.0],
                   infer_cases=3, infer_max_shape=None, their_default_tta=True, timeout_s=2400)

    @property
    def mode(self) -> str:
        return "--quick" if self.quick else ("--quality" if self.quality else "full")

    def describe(self) -> str:
        extra = ""
        if self.quality:
            extra = (f"; spacing {self.spacing} mm, features x{self.features_scale}, patch capped to "
                     f"{self.patch_cap}; one model per tool trained {self.quality_epochs} x {self.quality_iters} "
                     f"iterations, each run through both predictors")
        return (f"{self.mode}: {self.n_train} training + {self.n_test} test phantoms "
                f"(size '{self.size}', seed {self.seed}), repeats preprocess/train/infer = "
                f"{self.repeats_preprocess}/{self.repeats_train}/{self.repeats_infer}, {self.warmup_iters} warm-up + "
                f"{self.measured_iters} timed iterations, "
                f"{self.num_workers} worker processes, device {self.device}"
                f"{extra}")


def parse_args(argv: list[str] | None) -> Settings:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small run: < 15 min on 2 CPU cores")
    mode.add_argument("--quality", action="store_true",
                      help="each tool's trained model through both predictors: speed and DSC (~35 min, 2 cores)")
    ap.add_argument("--stages", default=None, help=f"comma list of {', '.join(STAGES)} (default all; "
                                                   f"--quality: train,infer)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default bench_work/side_by_side)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--venv", type=Path, default=None, help="nnU-Net peer venv (default %s)" % peer_env.default_venv())
    ap.add_argument("--output", type=Path, default=None, help="markdown report (default benchmarks/RESULTS.md)")
    ap.add_argument("--size", choices=("small", "medium", "real"), default=None, help="phantom size preset")
    ap.add_argument("--num-train", type=int, default=None)
    ap.add_argument("--num-test", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None, help="repeats of every stage (overrides the preset)")
    ap.add_argument("--iters", type=int, default=None, help="timed training iterations (after the warm-up)")
    ap.add_argument("--patch-cap", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                    help="cap nnU-Net's 3d_fullres patch for both tools (quick default 32 96 96)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds before one command is killed")
    ap.add_argument("--model-schedule", type=int, nargs=2, default=None, metavar=("EPOCHS", "ITERS"),
                    help="--quality: epochs x iterations per epoch of the model each tool trains (default 12 50)")
    ap.add_argument("--render-only", action="store_true",
                    help="measure nothing: write the report again from the work folder's results.json")
    args = ap.parse_args(argv)
    s = Settings.quick_preset() if args.quick else Settings.quality_preset() if args.quality else Settings()
    if args.stages is not None:
        s.stages = [x.strip() for x in args.stages.split(",") if x.strip()]
    bad = [x for x in s.stages if x not in STAGES]
    if bad:
        ap.error(f"unknown stage(s) {bad}; choose from {', '.join(STAGES)}")
    if s.spacing and "preprocess" in s.stages:
        ap.error("--quality changes the spacing of the shared plans after nnU-Net's own planning, so preprocessing "
                 "times would compare different spacings: leave 'preprocess' out of --stages")
    s.device = args.device
    for name, value in (("work", args.work), ("venv", args.venv), ("output", args.output), ("size", args.size),
                        ("n_train", args.num_train), ("n_test", args.num_test), ("seed", args.seed),
                        ("measured_iters", args.iters), ("patch_cap", args.patch_cap), ("timeout_s", args.timeout)):
        if value is not None:
            setattr(s, name, value)
    if args.model_schedule is not None:
        s.quality_epochs, s.quality_iters = (max(1, v) for v in args.model_schedule)
    if args.repeats is not None:
        s.repeats_preprocess = s.repeats_train = s.repeats_infer = max(1, args.repeats)
    s.infer_cases = min(s.infer_cases, s.n_test)
    s.render_only = args.render_only
    return s


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    s = parse_args(argv)
    results = s.work / "results.json"
    if s.render_only:
        if not results.is_file():
            raise SystemExit(f"{results}: no results to render (run the benchmark first)")
        _write(render(from_json(json.loads(results.read_text()))), s.output)
        return 0
    t0 = time.perf_counter()
    s.work.mkdir(parents=True, exist_ok=True)
    peer_env.create(s.venv)
    bench = QualityBench(s) if s.quality else Bench(s)
    report = bench.run()
    report.meta["total wall time"] = f"{time.perf_counter() - t0:.0f} s for the whole harness run"
    results.write_text(json.dumps(to_json(report), indent=1))
    _write(render(report), s.output)
    log.info("raw samples and the report's content: %s; logs: %s", results, s.work / "logs")
    return 1 if bench.failures else 0


def _write(text: str, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(text)
    log.info("wrote %s", output)


if __name__ == "__main__":
    raise SystemExit(main())
