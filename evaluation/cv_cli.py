"""Command lines of ``evaluate_cv``, ``find_best_configuration`` and ``ensemble`` (CLI code: it prints).

autoseg/cli.py routes all three here; the subcommand name (the parser's last ``prog`` word, then
``args.command``) picks the options and the action.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", "-d", "--task", required=True, metavar="ID", help="dataset id or name, e.g. 501")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"], help="where the cascade predicts")
    p.add_argument("--tolerances", default="flare22", help="NSD tolerances: flare21 | flare22 | flare23 | MM")
    p.add_argument("-j", "--num-workers", type=int, default=2, help="cases scored in parallel")
    p.add_argument("--results", default=None, help="results root (default: $AUTOSEG_RESULTS)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_cli_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    command = p.prog.split()[-1]
    if command == "ensemble":
        p.add_argument("-i", "--inputs", nargs="+", required=True,
                       help="prediction folders written with --save-probabilities (CASE.nii.gz + CASE.npz)")
        p.add_argument("-o", "--output", required=True, help="output folder")
        p.add_argument("-pp", "--postprocessing", default=None, metavar="JSON",
                       help="postprocessing.json to apply (find_best_configuration prints which)")
        return p
    _common(p)
    if command == "evaluate_cv":
        p.add_argument("-tr", "--trainer", default="Trainer", help="trainer whose folds 0-4 are evaluated")
        p.add_argument("--force", action="store_true", help="redo even if the checkpoints have not changed")
    else:
        p.add_argument("-tr", "--trainers", nargs="+", default=None,
                       help="trainers to compare (default: every trainer with a folder in each stage)")
        p.add_argument("--no-ensembles", action="store_true", help="do not try ensembles of configurations")
    return p


def run_from_args(args: argparse.Namespace) -> int:
    if args.command == "ensemble":
        from autoseg.evaluation.best_config import ensemble_folders, load_rules_file

        done = ensemble_folders(args.inputs, Path(args.output), load_rules_file(args.postprocessing))
        print(f"wrote {len(done)} case(s) to {args.output}")
        return 0 if done else 1
    kwargs = dict(results=args.results, device=args.device, tolerances=args.tolerances,
                  num_workers=args.num_workers)
    if args.command == "evaluate_cv":
        from autoseg.evaluation.crossval import CrossValidation, format_cv_table

        cv = CrossValidation(args.task, args.trainer, **kwargs)
        summary = cv.run(force=args.force, progress=not args.no_progress)
        print(format_cv_table(summary))
        print(f"wrote {cv.folder / 'summary.json'} and {cv.folder / 'postprocessing.json'} "
              f"(used from now on by run_inference -tr {args.trainer}, fold 'all' and fold ensembles alike)")
        return 0
    from autoseg.evaluation.best_config import find_best_configuration, format_best

    result = find_best_configuration(args.task, args.trainers, ensembles=not args.no_ensembles,
                                     progress=not args.no_progress, **kwargs)
    print(format_best(result))
    return 0
