"""Flags of ``autoseg plan_and_preprocess`` and their mapping onto :func:`plan_and_preprocess`."""
from __future__ import annotations

import argparse

from autoseg.planners.pipeline import plan_and_preprocess


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-t", "-d", "--task", required=True, help="dataset id (501) or folder name (Dataset501_X)")
    parser.add_argument("--planner", default=None,
                        help="planner class name, searched in the planners package and --planner-path "
                             "(default ExperimentPlanner; with existing plans, one that differs needs --overwrite-plans)")
    parser.add_argument("--planner-path", action="append", default=None, metavar="DIR",
                        help="extra folder with planner classes (repeatable; also AUTOSEG_PLANNER_PATH)")
    parser.add_argument("--stages", nargs="+", default=None,
                        help="plan/preprocess only these stages, e.g. roi organ tumour (default: all the dataset needs)")
    parser.add_argument("-p", "--plans-name", default=None, dest="plans_name", metavar="NAME",
                        help="keep these plans apart as plans_NAME.json (caches in plans_NAME/; default: plans.json)")
    parser.add_argument("--target-spacing", nargs=3, type=float, default=None, metavar=("Z", "Y", "X"),
                        help="organ-stage spacing in mm, overriding the planner's choice")
    parser.add_argument("--gpu-memory-gb", type=float, default=8.0,
                        help="GPU memory budget that patch and batch sizes are fitted to (default 8)")
    parser.add_argument("-np", "--num-workers", type=int, default=2, dest="num_workers",
                        help="worker processes for checking, fingerprinting and preprocessing (default 2)")
    parser.add_argument("--no-verify", action="store_true", help="skip the dataset integrity check")
    parser.add_argument("--plans", default=None, metavar="FILE", help="use this plans file instead of planning")
    parser.add_argument("--overwrite-plans", action="store_true",
                        help="replan even if plans.json exists (it may hold hand edits)")
    parser.add_argument("--raw", default=None, help="raw datasets root (default: AUTOSEG_RAW)")
    parser.add_argument("--preprocessed", default=None, help="preprocessed root (default: AUTOSEG_PREPROCESSED)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--num-parts", type=int, default=1, help="preprocess the sorted cases in N parts ...")
    parser.add_argument("--part-id", type=int, default=0, help="... this run doing part K (0-based; SLURM arrays)")


def run_from_args(args: argparse.Namespace) -> int:
    out = plan_and_preprocess(args.task, planner=args.planner, stages=args.stages,
                              target_spacing=args.target_spacing, gpu_memory_gb=args.gpu_memory_gb,
                              num_workers=args.num_workers, raw=args.raw, preprocessed=args.preprocessed,
                              verify=not args.no_verify, plans_file=args.plans, progress=not args.no_progress,
                              overwrite_plans=args.overwrite_plans, planner_path=args.planner_path,
                              num_parts=args.num_parts, part_id=args.part_id,
                              plans_name=args.plans_name)
    print(f"preprocessed data in {out}")
    marker = out / "unlabelled" / "crop_source.json"
    if marker.is_file():
        import json

        info = json.loads(marker.read_text())
        print(f"unlabelled images: {info['num_cases']} (crops from {info['source'].split(':')[0]})")
    return 0
