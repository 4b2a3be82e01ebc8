"""Command-line arguments of ``autoseg run_training STAGE TRAINER ID FOLD`` (routed here by autoseg.cli)."""
from __future__ import annotations

import argparse

from autoseg.trainers.run import run_training


def add_cli_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("stage", metavar="STAGE", help="stage to train, as named in the plans (default planner: roi, organ, tumour)")
    parser.add_argument("trainer", metavar="TRAINER", help="trainer class name, e.g. Trainer, TrainerShort")
    parser.add_argument("task", metavar="ID", help="dataset id (501) or name (Dataset501_Name)")
    parser.add_argument("fold", metavar="FOLD", help="cross-validation fold 0-4, or 'all'")
    parser.add_argument("--epochs", type=int, default=None, help="override the trainer's number of epochs")
    parser.add_argument("--iters-per-epoch", type=int, default=None, dest="iters_per_epoch",
                        help="override the trainer's training iterations per epoch")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--continue", action="store_true", dest="continue_training",
                        help="resume from the fold's latest checkpoint (exactly: optimiser, schedule, RNGs)")
    parser.add_argument("--pretrained", metavar="CKPT", default=None,
                        help="initialise from a checkpoint's matching tensors (skipped ones are reported)")
    parser.add_argument("--trainer-path", metavar="DIR", default=None, dest="trainer_path",
                        help="folder(s) with user trainer files (also AUTOSEG_TRAINER_PATH)")
    parser.add_argument("-p", "--plans-name", default=None, dest="plans_name", metavar="NAME",
                        help="train on plans_NAME.json (default: plans.json); results go to <dataset>/plans_NAME/")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (opt-in)")
    parser.add_argument("-nw", "--num-workers", type=int, default=None, dest="num_workers",
                        help="data augmentation worker processes per GPU/process (0: in-process)")
    parser.add_argument("--seed", type=int, default=None, help="override the trainer's random seed")
    parser.add_argument("--no-amp", action="store_false", dest="amp", default=None,
                        help="train in float32 (default: fp16 autocast on CUDA, bf16 on CPUs with bf16 units)")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``run_training`` with the namespace ``add_cli_arguments`` defines (plus optional
    ``preprocessed``/``results`` attributes the CLI may add); prints the results folder."""
    folder = run_training(args.stage, args.trainer, args.task, args.fold, epochs=args.epochs,
                          iters_per_epoch=args.iters_per_epoch, device=args.device,
                          continue_training=args.continue_training, pretrained=args.pretrained,
                          trainer_path=args.trainer_path, num_workers=args.num_workers, compile=args.compile,
                          preprocessed=getattr(args, "preprocessed", None),
                          results=getattr(args, "results", None), amp=args.amp, plans_name=args.plans_name,
                          seed=getattr(args, "seed", None))
    print(f"results: {folder}")
    return 0
