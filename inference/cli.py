"""`autoseg run_inference`: flags and the entry point (this is CLI code: it prints)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from autoseg import AutosegError
from autoseg.plans import STAGES

log = logging.getLogger(__name__)


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", required=True,
                        help="folder of images (CASE_0000.nii.gz, .nrrd, .mha, DICOM series folders), "
                             "one image, or one DICOM series folder")
    parser.add_argument("-o", "--output", required=True, help="output folder (masks named CASE.nii.gz)")
    parser.add_argument("-t", "-d", "--task", default=None, help="dataset id or name, e.g. 501 or Dataset501_Abdomen")
    parser.add_argument("-m", "--model", default=None,
                        help="a model bundle (zip from 'autoseg export') or an installed bundle's name, instead of -t")
    parser.add_argument("-tr", "--trainer", default="Trainer", help="trainer whose checkpoints are used (default: Trainer)")
    parser.add_argument("--stage-trainer", action="append", default=[], metavar="STAGE=NAME",
                        help="per-stage trainer override, e.g. --stage-trainer tumour=TrainerBigPatch (repeatable)")
    parser.add_argument("-f", "--folds", nargs="+", default=None,
                        help="folds to ensemble (default: every fold found); e.g. -f 0 1 2 or -f all")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"], help="default: cuda if available")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                        help="network arithmetic: auto = fp16 on CUDA, bf16 on CPUs with native bf16 "
                             "(AVX512-BF16/AMX), else fp32")
    parser.add_argument("--engine", default=None, metavar="auto|eager|NAME[,NAME]",
                        help="CPU network engine: auto = the fastest installed one that agrees with eager "
                             "(onnxruntime, openvino, channels_last; openvino_bf16 under bf16), measured once "
                             "per model and cached; eager = PyTorch; compile and openvino_int8 (after "
                             "autoseg quantize) only by name "
                             "(default: $AUTOSEG_ENGINE or auto)")
    parser.add_argument("--step-size", type=float, default=None,
                        help="sliding-window step as a fraction of the patch (default: each stage's plans' "
                             "step_size, 0.5 where they have none; larger is faster)")
    parser.add_argument("--windows-per-batch", type=int, default=1, metavar="N",
                        help="sliding windows per forward pass (default 1: least device memory; more can be "
                             "faster on a large GPU)")
    parser.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (8x slower, off by default)")
    parser.add_argument("--no-cascade", action="store_true",
                        help="skip the ROI pass: the organ model searches the whole body-cropped volume")
    parser.add_argument("--no-postprocessing", action="store_true", help="skip the learned connected-component clean-up")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write CASE.npz: each stage's softmax inside its crop (float16), bbox and label ids")
    parser.add_argument("--continue", dest="continue_prediction", action="store_true",
                        help="skip cases whose output already exists")
    parser.add_argument("--profile", action="store_true",
                        help="print per-case stage times and peak memory; write profile.json in the output folder")
    parser.add_argument("--results", default=None, help="results root (default: $AUTOSEG_RESULTS)")
    parser.add_argument("-p", "--plans-name", default=None, dest="plans_name", metavar="NAME",
                        help="use the models trained on plans_NAME.json (default: plans.json)")
    parser.add_argument("--trainer-path", default=None, dest="trainer_path", metavar="DIR",
                        help="folder(s) with user trainer/network files (also AUTOSEG_TRAINER_PATH): networks "
                             "defined there are built as at training")
    parser.add_argument("--num-threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--output-format", default="nifti", choices=["nifti", "dicom-seg", "both"],
                        help="for DICOM series inputs: CASE.nii.gz, CASE.seg.dcm (DICOM SEG), or both")
    parser.add_argument("--num-parts", type=int, default=1, help="split the sorted cases into N parts ...")
    parser.add_argument("--part-id", type=int, default=0, help="... and predict part K (0-based; SLURM arrays)")


def _parse_stage_trainers(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        stage, sep, name = item.partition("=")
        if not sep or not stage or not name:
            raise AutosegError(f"--stage-trainer {item!r}: expected STAGE=NAME, e.g. {STAGES[-1]}=TrainerBigPatch")
        out[stage] = name
    return out


def run_inference(input_path: str, output_dir: str, task: str | int | None, trainer: str = "Trainer",
                  stage_trainers: dict | None = None, folds: Sequence[int | str] | None = None,
                  device: str = "auto", step_size: float | None = None, tta: bool = False, cascade: bool = True,
                  save_probabilities: bool = False, continue_prediction: bool = False, profile: bool = False,
                  results: str | None = None, num_threads: int | None = None, postprocess: bool = True,
                  precision: str = "auto", windows_per_batch: int = 1, model: str | None = None,
                  output_format: str = "nifti", num_parts: int = 1, part_id: int = 0,
                  plans_name: str | None = None, trainer_path: str | None = None, engine: str | None = None) -> int:
    """Segment every case of ``input_path`` (or part ``part_id`` of ``num_parts``; under torchrun each
    rank a share of it) into ``output_dir`` with the models of ``task`` or of the bundle ``model``.
    Returns 0, or 1 if any case failed (named with their reason on stderr; the others are written)."""
    # Before CUDA starts: growable segments keep the allocator's reserve near what is really in use
    # (the peak GPU memory FLARE measures), at no cost in speed.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    from autoseg.inference.cohort import cohort_part, report
    from autoseg.inference.predictor import CascadePredictor
    from autoseg.inference.profiling import format_profile
    from autoseg.inference.compiled import describe, parse_engine_choice
    if (task is None) == (model is None):
        raise AutosegError("give exactly one of -t TASK and -m MODEL")
    engine = engine or os.environ.get("AUTOSEG_ENGINE") or "auto"  # tests set eager (tests/conftest.py)
    parse_engine_choice(engine)  # a bad --engine fails before any model loads
    if model is not None and (folds or stage_trainers):
        raise AutosegError("-f and --stage-trainer choose among trained folders (-t); a bundle (-m) predicts with "
                           "what it holds: export another bundle instead")
    if trainer_path or os.environ.get("AUTOSEG_TRAINER_PATH"):
        # user networks extend the registry the checkpoints' plans name classes from; a bundle's
        # deployment (no training code installed) needs none
        from autoseg.trainers.registry import load_user_modules

        load_user_modules(trainer_path)
    if folds is not None:
        folds = [int(f) if str(f).isdigit() else str(f) for f in folds]
    with cohort_part(num_parts, part_id) as part:
        t0 = time.perf_counter()
        kwargs = dict(device=part.device(device), step_size=step_size, tta=tta, cascade=cascade,
                      save_probabilities=save_probabilities, num_threads=num_threads, postprocess=postprocess,
                      precision=precision, windows_per_batch=windows_per_batch, engine=engine)
        if model is not None:
            from autoseg.inference.bundle import open_model

            with open_model(model, results) as ckpts:
                predictor = CascadePredictor(ckpts, **kwargs)
        else:
            predictor = CascadePredictor.from_results(task, trainer=trainer, stage_trainers=stage_trainers,
                                                      folds=folds, results=results, plans_name=plans_name,
                                                      **kwargs)
        log.info("models loaded on %s in %.1f s (stages: %s)", predictor.device, time.perf_counter() - t0,
                 ", ".join(predictor.stages))

        if profile:
            print(describe(predictor.engines), flush=True)

        def show(name: str, summary: dict) -> None:
            summary["engines"] = {s: r["engine"] for s, r in predictor.engines.items()}  # into profile.json
            print(format_profile(name, summary), flush=True)

        failures = predictor.predict_folder(input_path, output_dir, continue_prediction=continue_prediction,
                                            profile=profile, on_profile=show if profile else None,
                                            num_parts=part.num_parts, part_id=part.part_id,
                                            output_format=output_format)
        summary = report(part, predictor, failures, Path(output_dir), profile)
    if summary is None:  # a torchrun rank other than 0: rank 0 reports for all
        return 1 if failures else 0
    for name, reason in summary["failed"]:
        print(f"FAILED {name}: {reason}", file=sys.stderr)
    if summary["world_size"] > 1:
        print(f"{summary['written']} case(s) written by {summary['world_size']} ranks ("
              + ", ".join(f"rank {r['rank']}: {len(r['written'])}" for r in summary["ranks"]) + ")", flush=True)
    if summary["failed"]:
        print(f"{len(summary['failed'])} case(s) failed; the others were written to {output_dir}", file=sys.stderr)
    return 1 if summary["failed"] else 0


def run_from_args(args: argparse.Namespace) -> int:
    return run_inference(args.input, args.output, args.task, trainer=args.trainer,
                         stage_trainers=_parse_stage_trainers(args.stage_trainer), folds=args.folds,
                         device=args.device, step_size=args.step_size, tta=args.tta, cascade=not args.no_cascade,
                         save_probabilities=args.save_probabilities, continue_prediction=args.continue_prediction,
                         profile=args.profile, results=args.results, num_threads=args.num_threads,
                         postprocess=not args.no_postprocessing, precision=args.precision,
                         windows_per_batch=args.windows_per_batch, model=args.model,
                         output_format=args.output_format, num_parts=args.num_parts, part_id=args.part_id,
                         plans_name=args.plans_name, trainer_path=args.trainer_path, engine=args.engine)
