"""`autoseg import_nnunet`: a trained nnU-Net v2 model folder -> an autoseg model under AUTOSEG_RESULTS.

Input: nnU-Net's results folder for one trainer/plans/configuration
(``nnUNet_results/DatasetNNN_Name/<Trainer>__<Plans>__<configuration>/``) with ``plans.json``,
``dataset.json`` and ``fold_*/checkpoint_final.pth``. Output: ``AUTOSEG_RESULTS/DatasetNNN_Name/organ/
<name>/fold_*/checkpoint_final.pt`` (default name ``Trainer``, which ``run_inference -t NNN`` loads),
each a weights-only autoseg checkpoint holding plans whose ``organ`` stage is the nnU-Net network and
its ``nnunet`` preprocessing block, plus ``import.json`` (where it came from, sha256 of each source).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

import torch

from autoseg import AutosegError
from autoseg.paths import results_root
from autoseg.plans import STAGES, num_outputs
from autoseg.utils import atomic_path, file_sha256, load_json, save_json
from autoseg.nnunet.checkpoint import convert_state_dict, load_nnunet_checkpoint
from autoseg.nnunet.plans import imported_plans

log = logging.getLogger(__name__)
IMPORT_RECORD = "import.json"


def _fold_checkpoints(folder: Path, folds: Sequence[str] | None, name: str) -> dict[str, Path]:
    dirs = sorted(p for p in folder.glob("fold_*") if p.is_dir()) if folds is None else \
        [folder / f"fold_{f}" for f in folds]
    found = {}
    for d in dirs:
        ck = d / name
        if ck.is_file():
            found[d.name] = ck
        elif folds is not None:
            raise AutosegError(f"{ck}: not found")
        else:
            log.warning("%s: no %s, fold skipped", d, name)
    if not found:
        raise AutosegError(f"{folder}: no fold_*/{name} (is this an nnU-Net v2 model folder?)")
    return found


def _configuration(folder: Path, ckpt: dict) -> str:
    parts = folder.name.split("__")
    if len(parts) == 3:
        return parts[2]
    cfg = (ckpt.get("init_args") or {}).get("configuration")
    if not isinstance(cfg, str):
        raise AutosegError(f"{folder}: cannot tell the configuration (folder not named "
                           "Trainer__Plans__configuration and the checkpoint does not say)")
    return cfg


def _mirror_axes(ckpt: dict) -> list[int]:
    axes = ckpt.get("inference_allowed_mirroring_axes")
    return [int(a) for a in axes] if axes is not None else []


def convert_fold(ckpt: dict, plans: dict, path: Path) -> dict[str, torch.Tensor]:
    """The fold's weights in autoseg's network, checked to fill it exactly."""
    from autoseg.networks import build_network

    net_cfg = plans["stages"]["organ"]["network"]
    weights = convert_state_dict(ckpt["network_weights"], len(net_cfg["features"]))
    net = build_network(net_cfg, 1, num_outputs(plans, "organ"), deep_supervision=False)
    try:
        net.load_state_dict(weights)
    except RuntimeError as e:
        lines = " ".join(str(e).split())[:300]
        raise AutosegError(f"{path}: weights do not fit the network in plans.json ({lines})") from None
    return net.state_dict()


def _check_destination(dest: Path, force: bool) -> None:
    """Refuse to mix with or overwrite an autoseg-trained model of that trainer name (any stage: the
    predictor would load its roi/tumour models beside the imported organ model)."""
    if force:
        return
    for stage_dir in (dest.parent.parent / s / dest.name for s in STAGES):
        if stage_dir.is_dir() and any(stage_dir.iterdir()) and not (stage_dir / IMPORT_RECORD).is_file():
            raise AutosegError(f"{stage_dir}: holds an autoseg-trained model; choose another name with -tr "
                               "(then run_inference -tr NAME) or pass --force to replace it")


def import_nnunet(model_folder: str | os.PathLike, results: str | os.PathLike | None = None,
                  trainer_name: str = "Trainer", folds: Sequence[str] | None = None,
                  checkpoint_name: str = "checkpoint_final.pth", force: bool = False) -> Path:
    """Convert every fold of an nnU-Net v2 model folder; return the autoseg trainer folder written."""
    folder = Path(model_folder)
    for need in ("plans.json", "dataset.json"):
        if not (folder / need).is_file():
            raise AutosegError(f"{folder}: no {need} (expected an nnU-Net v2 results folder "
                               "Trainer__Plans__configuration)")
    nn_plans, dataset_json = load_json(folder / "plans.json"), load_json(folder / "dataset.json")
    ckpts = _fold_checkpoints(folder, folds, checkpoint_name)
    loaded = {fold: load_nnunet_checkpoint(p) for fold, p in ckpts.items()}
    first = next(iter(loaded.values()))
    configuration = _configuration(folder, first)
    source = {"model_folder": str(folder.resolve()), "configuration": configuration,
              "trainer": str(first.get("trainer_name", folder.name.split("__")[0]))}
    plans = imported_plans(nn_plans, dataset_json, configuration, _mirror_axes(first), source)
    dest = results_root(results) / plans["dataset_name"] / "organ" / trainer_name
    _check_destination(dest, force)
    converted = {fold: convert_fold(ck, plans, ckpts[fold]) for fold, ck in loaded.items()}
    if dest.is_dir():
        shutil.rmtree(dest)
    for fold, weights in converted.items():
        out = dest / fold / "checkpoint_final.pt"
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out, ".pt") as tmp:
            torch.save({"network_weights": weights, "plans": plans, "stage": "organ",
                        "trainer_name": f"nnU-Net {source['trainer']} (imported)"}, tmp)
    save_json({**source, "checkpoints": {f: {"path": str(p), "sha256": file_sha256(p)} for f, p in ckpts.items()}},
              dest / IMPORT_RECORD)
    log.info("imported %d fold(s) of %s into %s", len(converted), folder, dest)
    return dest


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_folder", help="nnU-Net v2 results folder Trainer__Plans__configuration "
                                             "(plans.json, dataset.json, fold_*/checkpoint_final.pth)")
    parser.add_argument("-tr", "--trainer-name", default="Trainer",
                        help="autoseg trainer folder to write (default: Trainer, what run_inference loads)")
    parser.add_argument("-f", "--folds", nargs="+", default=None, help="folds to import (default: every fold)")
    parser.add_argument("--checkpoint-name", default="checkpoint_final.pth",
                        help="checkpoint file in each fold (default: checkpoint_final.pth)")
    parser.add_argument("--results", default=None, help="results root (default: $AUTOSEG_RESULTS)")
    parser.add_argument("--force", action="store_true", help="replace an autoseg-trained model of that name")


def run_from_args(args: argparse.Namespace) -> int:
    dest = import_nnunet(args.model_folder, args.results, args.trainer_name, args.folds, args.checkpoint_name,
                         args.force)
    folds = sorted(p.name for p in dest.glob("fold_*"))
    ds = dest.parent.parent.name
    tr = "" if args.trainer_name == "Trainer" else f" -tr {args.trainer_name}"
    res = f" --results {args.results}" if args.results else ""
    print(f"imported {len(folds)} fold(s) ({', '.join(folds)}) into {dest}")
    print(f"predict with: autoseg run_inference -i IMAGES -o OUTPUT -t {ds}{tr}{res}")
    return 0
