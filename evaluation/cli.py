"""``autoseg evaluate`` arguments and entry point; autoseg/cli.py wires them into its subcommands."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from autoseg.evaluation.folder import default_out_dir, evaluate_folder, labels_from_dataset_json
from autoseg.evaluation.partial import labelled_classes_from_json
from autoseg.evaluation.summary import format_summary_table


def add_cli_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the evaluate subcommand's options to ``parser``."""
    parser.add_argument("-g", "--gt", required=True, help="folder of ground-truth label maps (CASE.nii.gz, ...)")
    parser.add_argument("-p", "--pred", required=True, help="folder of predicted label maps, same case names")
    parser.add_argument("-o", "--out", default=None,
                        help="where metrics.csv and summary.json go (default: a folder PRED_evaluation beside --pred)")
    parser.add_argument("--tolerances", default="flare22",
                        help="NSD tolerances: flare21 | flare22 | flare23 | a number of mm for every class")
    parser.add_argument("--labels", "--dataset-json", dest="labels", default=None, metavar="DATASET_JSON",
                        help="dataset.json naming the labels and any per-case labelled_classes "
                             "(default: -t's, else the one beside the GT folder)")
    parser.add_argument("-t", "-d", "--task", default=None, metavar="ID",
                        help="raw dataset id or name whose dataset.json names the labels ($AUTOSEG_RAW)")
    parser.add_argument("--align", action="store_true",
                        help="resample predictions not on the GT grid onto it (nearest neighbour) instead of refusing")
    parser.add_argument("-j", "--num-workers", type=int, default=2, help="cases scored in parallel")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run folder evaluation from parsed arguments, print the table; AutosegError propagates to the caller."""
    labels = labelled = None
    dataset_json = args.labels
    if dataset_json is None and getattr(args, "task", None):
        from autoseg.paths import find_dataset_folder, raw_root

        dataset_json = find_dataset_folder(args.task, raw_root()) / "dataset.json"
    if dataset_json:
        labels = {name: value for value, name in labels_from_dataset_json(Path(dataset_json)).items()}
        labelled = labelled_classes_from_json(dataset_json)
    out = Path(args.out) if args.out else default_out_dir(Path(args.pred))
    summary = evaluate_folder(args.gt, args.pred, out, labels=labels, tolerances=args.tolerances,
                              align=args.align, num_workers=args.num_workers, progress=not args.no_progress,
                              labelled_classes=labelled)
    print(format_summary_table(summary))
    print(f"wrote {out / 'metrics.csv'} and {out / 'summary.json'}")
    for cid, reason in summary["failed"].items():
        print(f"NOT SCORED {cid}: {reason}", file=sys.stderr)
    if summary["scored_as_empty"]:
        print(f"{len(summary['scored_as_empty'])} case(s) had no usable prediction (counted as 0 above)",
              file=sys.stderr)
    return 1 if summary["failed"] or summary["scored_as_empty"] else 0
