"""`autoseg export`: a trained model as one zip (CLI code: it prints)."""
from __future__ import annotations

import argparse

from autoseg.inference.cli import _parse_stage_trainers


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-t", "--task", required=True, help="dataset id or name, e.g. 501 or Dataset501_Abdomen")
    parser.add_argument("-tr", "--trainer", default="Trainer", help="trainer whose checkpoints are exported")
    parser.add_argument("--stage-trainer", action="append", default=[], metavar="STAGE=NAME",
                        help="per-stage trainer override (repeatable)")
    parser.add_argument("-f", "--folds", nargs="+", default=None, help="folds to export (default: every fold found)")
    parser.add_argument("-o", "--output", required=True, help="the bundle to write, e.g. model.zip")
    parser.add_argument("--name", default=None, help="name it installs under (default: the zip's file name)")
    parser.add_argument("--compiled", action="store_true",
                        help="also carry each stage's network as ONNX (data, sha256-listed) for the CPU engines "
                             "of run_inference --engine auto|onnxruntime|openvino (needs the onnx package), and the int8 "
                             "network `autoseg quantize` kept, if any (--engine openvino_int8)")
    parser.add_argument("--results", default=None, help="results root (default: $AUTOSEG_RESULTS)")


def run_from_args(args: argparse.Namespace) -> int:
    from autoseg.inference.bundle import export_bundle

    folds = None if args.folds is None else [int(f) if str(f).isdigit() else str(f) for f in args.folds]
    out = export_bundle(args.task, args.output, trainer=args.trainer,
                        stage_trainers=_parse_stage_trainers(args.stage_trainer), folds=folds,
                        results=args.results, name=args.name, compiled=args.compiled)
    print(f"model bundle written to {out}")
    return 0
