"""The `autoseg` command line. Each subcommand's flags are defined by the module that owns the work;
this file only routes, so `autoseg --help` stays fast (nothing heavy is imported until needed)."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Callable

from autoseg import AutosegError, __version__

# name -> (module defining add_cli_arguments/run_from_args, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "plan_and_preprocess": ("autoseg.planners.cli", "fingerprint a raw dataset, write plans.json, build the .npz caches"),
    "refine_saliency": ("autoseg.preprocessing.saliency_cli", "cache a refinement stage's training saliency: its source stage's predictions"),
    "run_training": ("autoseg.trainers.cli", "train one stage (roi|organ|tumour) with a Trainer class found by name"),
    "run_inference": ("autoseg.inference.cli", "segment CT images with the fused ROI -> organ -> tumour cascade"),
    "export": ("autoseg.inference.export_cli", "write a trained model (weights, plans, rules) as one checked zip"),
    "install": ("autoseg.inference.install_cli", "install a model zip from 'autoseg export' under AUTOSEG_RESULTS"),
    "quantize": ("autoseg.inference.quantize_cli", "int8 networks for the CPU (--engine openvino_int8), kept only if held-out DSC holds"),
    "import_nnunet": ("autoseg.nnunet.importer", "convert a trained nnU-Net v2 model folder into an autoseg model"),
    "select_unlabelled": ("autoseg.trainers.select", "score unlabelled images by model uncertainty, keep the most certain"),
    "evaluate": ("autoseg.evaluation.cli", "DSC / NSD / HD95 of a prediction folder against ground truth"),
    "evaluate_cv": ("autoseg.evaluation.cv_cli", "end-to-end cross-validation of a trainer's folds: metrics and postprocessing"),
    "find_best_configuration": ("autoseg.evaluation.cv_cli", "compare cross-validated trainers and ensembles, print the inference command"),
    "ensemble": ("autoseg.evaluation.cv_cli", "average the probabilities of several prediction folders"),
    "make_phantoms": ("autoseg.synthetic", "write a seeded abdominal CT phantom dataset (nnU-Net v2 raw format)"),
    "demo": ("autoseg.demo", "the whole pipeline on CT phantoms, on this machine, in minutes"),
}


def build_parser(selected: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoseg", description="Self-configuring ROI -> organ -> tumour cascade for abdominal CT.",
        epilog="Run 'autoseg COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"autoseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            importlib.import_module(module).add_cli_arguments(p)
    return parser


def _runner(command: str) -> Callable[[argparse.Namespace], int | None]:
    return importlib.import_module(COMMANDS[command][0]).run_from_args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    from autoseg.habits import nnunet_hint
    hint = nnunet_hint(argv[argv.index(selected):] if selected in COMMANDS else [])
    if hint:
        print(f"autoseg {selected}: {hint}", file=sys.stderr)
        return 2
    args = build_parser(selected if selected in COMMANDS else None).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.command:
        build_parser(None).print_help()
        return 2
    try:
        rc = _runner(args.command)(args)
    except AutosegError as e:
        print(f"autoseg {args.command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a file-system problem the command did not anticipate: still one line
        from autoseg.utils import os_error_message

        print(f"autoseg {args.command}: error: {os_error_message(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"autoseg {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    raise SystemExit(main())
