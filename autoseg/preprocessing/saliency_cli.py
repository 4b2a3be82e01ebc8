"""``autoseg refine_saliency STAGE ID FOLD``: cache a refinement stage's coarse saliency (routed here by
autoseg.cli). The source stage's trained checkpoint predicts every cached case once; the refinement
stage's trainer then reads the result (``autoseg.preprocessing.coarse_saliency``)."""
from __future__ import annotations

import argparse

from autoseg.paths import find_dataset_folder, preprocessed_root, results_root
from autoseg.plans import load_plans, plans_file_name, plans_subdir
from autoseg.preprocessing.coarse_saliency import coarse_folder, find_source_checkpoint, predict_coarse_saliency
from autoseg.trainers.splits import parse_fold


def add_cli_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("stage", metavar="STAGE", help="the refinement stage, as named in the plans (e.g. refine_pancreas)")
    parser.add_argument("task", metavar="ID", help="dataset id (501) or name (Dataset501_Name)")
    parser.add_argument("fold", metavar="FOLD", help="fold of the source stage's model: 0-4 (that fold's "
                        "refinement training reads it) or 'all' (every fold falls back to it)")
    parser.add_argument("-tr", "--trainer", default="Trainer", help="trainer the source stage was trained with")
    parser.add_argument("--checkpoint", metavar="CKPT", default=None,
                        help="the source stage's checkpoint (default: its results folder for --trainer and FOLD)")
    parser.add_argument("-p", "--plans-name", default=None, dest="plans_name", metavar="NAME",
                        help="use plans_NAME.json and its caches and results")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--force", action="store_true", help="redo cases already predicted by this checkpoint")
    parser.add_argument("--trainer-path", metavar="DIR", default=None, dest="trainer_path",
                        help="folder(s) with user trainer/network files (also AUTOSEG_TRAINER_PATH)")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    if getattr(args, "trainer_path", None):  # a network defined beside the user's trainer builds here too
        from autoseg.trainers.registry import load_user_modules

        load_user_modules(args.trainer_path)
    dataset_folder = find_dataset_folder(args.task, preprocessed_root(getattr(args, "preprocessed", None)))
    plans = load_plans(dataset_folder / plans_file_name(args.plans_name))
    sub = plans_subdir(args.plans_name)
    fold = parse_fold(args.fold)
    ckpt = args.checkpoint or find_source_checkpoint(
        results_root(getattr(args, "results", None)) / plans["dataset_name"] / sub, plans, args.stage,
        args.trainer, fold)
    done = predict_coarse_saliency(plans, args.stage, dataset_folder / sub, ckpt, fold, args.device,
                                   force=args.force, progress=True)
    print(f"coarse saliency: {len(done)} case(s) predicted with {ckpt} -> "
          f"{coarse_folder(dataset_folder / sub, args.stage, fold)}")
    return 0
