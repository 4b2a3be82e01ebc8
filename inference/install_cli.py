"""`autoseg install`: unpack a model bundle into the results folder (CLI code: it prints)."""
from __future__ import annotations

import argparse


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="a zip written by 'autoseg export'")
    parser.add_argument("--results", default=None, help="results root (default: $AUTOSEG_RESULTS)")
    parser.add_argument("--overwrite", action="store_true", help="replace folds already installed")


def run_from_args(args: argparse.Namespace) -> int:
    from autoseg.inference.bundle import install_bundle

    meta = install_bundle(args.bundle, results=args.results, overwrite=args.overwrite)
    print(f"installed '{meta.name}' into {meta.parent.parent}; predict with: autoseg run_inference -m {meta.name} ...")
    return 0
