"""`autoseg quantize`: int8 networks for the CPU, kept only if held-out DSC holds (CLI code: it prints)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from autoseg import AutosegError
from autoseg.inference.quantize import MAX_DSC_DROP


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-t", "--task", required=True, help="dataset id or name, e.g. 501 or Dataset501_Abdomen")
    parser.add_argument("-tr", "--trainer", default="Trainer", help="trainer whose checkpoints are quantised")
    parser.add_argument("-f", "--folds", nargs="+", default=None, help="folds (default: every fold found)")
    parser.add_argument("-p", "--plans-name", default=None, dest="plans_name", metavar="NAME",
                        help="plans variant the model was trained with")
    parser.add_argument("--stages", nargs="+", default=None, help="stages to quantise (default: all)")
    parser.add_argument("--images", default=None,
                        help="calibration images (default: the raw dataset's imagesTr: training cases)")
    parser.add_argument("--cases", type=int, default=8, help="calibration cases, the first N (default 8)")
    parser.add_argument("--windows", type=int, default=32, help="calibration windows sampled per stage (default 32)")
    parser.add_argument("--val-images", default=None,
                        help="held-out images that decide (default: the raw dataset's imagesTs)")
    parser.add_argument("--val-labels", default=None, help="their labels (default: the raw dataset's labelsTs)")
    parser.add_argument("--max-drop", type=float, default=MAX_DSC_DROP,
                        help=f"largest mean DSC loss accepted (default {MAX_DSC_DROP})")
    parser.add_argument("--results", default=None, help="results root (default: $AUTOSEG_RESULTS)")
    parser.add_argument("--raw", default=None, help="raw root (default: $AUTOSEG_RAW or $nnUNet_raw)")


def _folders(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    from autoseg.paths import find_dataset_folder, raw_root

    raw = None
    if not (args.images and args.val_images and args.val_labels):
        raw = find_dataset_folder(args.task, raw_root(args.raw))
    images = Path(args.images) if args.images else raw / "imagesTr"
    val_images = Path(args.val_images) if args.val_images else raw / "imagesTs"
    val_labels = Path(args.val_labels) if args.val_labels else raw / "labelsTs"
    if not (val_images.is_dir() and val_labels.is_dir()):
        raise AutosegError(f"{val_images} / {val_labels}: no held-out labelled cases; give --val-images and "
                           "--val-labels (cases the model was not trained on decide whether int8 is kept)")
    return images, val_images, val_labels


def run_from_args(args: argparse.Namespace) -> int:
    from autoseg.inference.predictor import CascadePredictor
    from autoseg.inference.quantize import image_cases, quantize_model

    images, val_images, val_labels = _folders(args)
    folds = None if args.folds is None else [int(f) if str(f).isdigit() else str(f) for f in args.folds]
    predictor = CascadePredictor.from_results(args.task, trainer=args.trainer, folds=folds, results=args.results,
                                              plans_name=args.plans_name, device="cpu", precision="fp32",
                                              engine="eager")
    record = quantize_model(predictor, image_cases(images, args.cases), image_cases(val_images), val_labels,
                            args.stages, args.windows, args.max_drop)
    for stage, info in record["stages"].items():
        print(f"stage {stage}: {info['calibration_windows']} calibration windows; one window "
              f"{info['window_s_fp32'] * 1e3:.0f} ms float32 eager, {info['window_s_int8'] * 1e3:.0f} ms int8")
    print(f"held-out DSC ({len(record['validation_cases'])} cases): float32 {record['dsc_fp32']:.4f}, int8 "
          f"{record['dsc_int8']:.4f}, drop {record['drop']:+.4f} (allowed {record['max_drop']})")
    print("per label: " + json.dumps(record["per_label"]))
    if not record["accepted"]:
        print("int8 rejected: DSC dropped more than allowed; nothing kept (the record says why)")
        return 1
    print("int8 kept: run_inference --engine openvino_int8 uses it")
    return 0
