"""Finding and loading the trained stage models (checkpoints hold their plans: no raw or preprocessed
folder is needed at inference time)."""
from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from autoseg import AutosegError
from autoseg.paths import dataset_name, find_dataset_folder, results_root
from autoseg.plans import num_outputs, plans_subdir, stage_classes, stage_in_channels, validate_plans
from autoseg.provenance import check_checkpoint_record, check_same_origin
from autoseg.checkpoints import inference_weights
from autoseg.utils import load_json
from autoseg.inference.postprocessing import merge_fold_rules

log = logging.getLogger(__name__)
CHECKPOINT_NAMES = ("checkpoint_final.pt", "checkpoint_best.pt", "checkpoint_latest.pt")
_FOLD_RE = re.compile(r"^fold_(\w+)$")


class EnsembleNet(torch.nn.Module):
    """Mean of the folds' logits (as nnU-Net v2 ensembles), so one window is cut out once for all folds."""

    def __init__(self, nets: Sequence[torch.nn.Module]):
        super().__init__()
        self.nets = torch.nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for net in self.nets:
            y = net(x)
            if isinstance(y, (list, tuple)):
                y = y[0]
            out = y.float() if out is None else out + y.float()
        return out / len(self.nets) if len(self.nets) > 1 else out


@dataclass
class StageModel:
    """One cascade stage: its ensembled network, its plans entry and its postprocessing rules."""

    stage: str
    plans: dict
    network: torch.nn.Module
    checkpoints: list[Path]
    rules: dict = field(default_factory=dict)

    @property
    def config(self) -> dict:
        return self.plans["stages"][self.stage]

    @property
    def classes(self) -> list[int]:
        """Original label value of network channel i+1."""
        return stage_classes(self.plans, self.stage)

    @property
    def num_classes(self) -> int:
        return num_outputs(self.plans, self.stage)

    @property
    def patch_size(self) -> list[int]:
        return [int(p) for p in self.config["patch_size"]]

    @property
    def spacing(self) -> list[float]:
        return [float(s) for s in self.config["target_spacing"]]


def cast_conv_weights(network: torch.nn.Module, dtype: torch.dtype) -> None:
    """Store convolution weights in the autocast dtype: autocast would cast them before every call anyway,
    so the logits are bit-identical, the weights take half the device memory and no cast kernels run.
    Norm parameters stay float32 (normalisation runs in float)."""
    for m in network.modules():
        if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
            for prm in (m.weight, m.bias):
                if prm is not None:
                    prm.data = prm.data.to(dtype)


def resolve_dataset_dir(task: str | int, results: str | os.PathLike | None = None,
                        plans_name: str | None = None) -> Path:
    """The dataset's results folder (of the named plans): by name via the raw/preprocessed roots, else by
    scanning results."""
    root = results_root(results)
    try:
        name = dataset_name(task)
        if (root / name).is_dir():
            return root / name / plans_subdir(plans_name)
    except AutosegError:
        pass
    return find_dataset_folder(task, root) / plans_subdir(plans_name)


def _fold_key(name: str) -> tuple[int, str]:
    k = _FOLD_RE.match(name).group(1)
    return (int(k), "") if k.isdigit() else (1 << 30, k)


def find_checkpoints(stage_dir: Path, folds: Sequence[int | str] | None = None) -> list[Path]:
    """One checkpoint per fold under ``<stage>/<Trainer>/fold_K`` (final, else best, else latest)."""
    if folds is None:
        fold_dirs = sorted((p for p in stage_dir.iterdir() if p.is_dir() and _FOLD_RE.match(p.name)),
                           key=lambda p: _fold_key(p.name)) if stage_dir.is_dir() else []
    else:
        fold_dirs = [stage_dir / f"fold_{f}" for f in folds]
        missing = [str(p) for p in fold_dirs if not p.is_dir()]
        if missing:
            raise AutosegError(f"{missing[0]}: fold folder not found (requested folds {list(folds)})")
    found = []
    for d in fold_dirs:
        path = next((d / n for n in CHECKPOINT_NAMES if (d / n).is_file()), None)
        if path is None:
            if folds is not None:
                raise AutosegError(f"{d}: no checkpoint ({', '.join(CHECKPOINT_NAMES)})")
            log.warning("%s: no checkpoint, fold skipped", d)
            continue
        if path.name != CHECKPOINT_NAMES[0]:
            log.warning("%s: no %s (training unfinished?); using %s", d, CHECKPOINT_NAMES[0], path.name)
        found.append(path)
    return found


def find_stage_checkpoints(task: str | int, trainer: str = "Trainer", stage_trainers: dict | None = None,
                           folds: Sequence[int | str] | None = None,
                           results: str | os.PathLike | None = None,
                           plans_name: str | None = None) -> dict[str, list[Path]]:
    """``{stage: [checkpoint per fold]}`` for every stage folder that has at least one checkpoint (the
    stage names and their order come from the checkpoints' plans, not from this folder)."""
    ds = resolve_dataset_dir(task, results, plans_name)
    names = sorted(p.name for p in ds.iterdir() if p.is_dir() and not p.name.startswith("plans_")) \
        if ds.is_dir() else []
    for stage in stage_trainers or {}:
        if stage not in names:
            names.append(stage)
    out = {}
    for stage in names:
        tr = (stage_trainers or {}).get(stage, trainer)
        sdir = ds / stage / tr
        if not sdir.is_dir() or not any(sdir.glob("fold_*/checkpoint*.pt")):  # e.g. crossval/: not a stage
            if stage in (stage_trainers or {}):
                raise AutosegError(f"{sdir}: no such folder (--stage-trainer {stage}={tr})")
            continue
        ckpts = find_checkpoints(sdir, folds)
        if ckpts:
            out[stage] = ckpts
    if not out:
        raise AutosegError(f"{ds}: no checkpoints found for trainer '{trainer}' in any stage "
                           f"({', '.join(names) or 'no stage folders'}); train first or pass -tr")
    return out


def read_checkpoint(source: str | os.PathLike | bytes, where: str | os.PathLike | None = None) -> dict:
    """An autoseg checkpoint (a file or its bytes) loaded without running code: ``weights_only=True``
    refuses any pickle that would import or call something."""
    where = where or source
    try:
        stream = io.BytesIO(source) if isinstance(source, bytes) else source
        ckpt = torch.load(stream, map_location="cpu", weights_only=True)
    except Exception as e:
        raise AutosegError(f"{where}: unreadable checkpoint, or one weights_only=True refuses "
                           f"({str(e).strip().splitlines()[0][:160]})") from None
    if not isinstance(ckpt, dict) or "plans" not in ckpt or not ({"network_weights", "networks"} & set(ckpt)):
        raise AutosegError(f"{where}: not an autoseg checkpoint (needs 'network_weights' and 'plans')")
    return ckpt


def load_stage_model(stage: str, checkpoints: Sequence[str | os.PathLike], device: torch.device,
                     conv_dtype: torch.dtype | None = None) -> StageModel:
    """Build every fold's network from its checkpoint's own plans and wrap them in one ensemble;
    ``conv_dtype``: the autocast dtype the predictor will run in (see ``cast_conv_weights``)."""
    from autoseg.networks import build_network

    nets, plans = [], None
    for path in checkpoints:
        path = Path(path)
        ckpt = read_checkpoint(path)
        p = validate_plans(ckpt["plans"], str(path))
        st = ckpt.get("stage", stage)
        if st != stage or stage not in p["stages"]:
            raise AutosegError(f"{path}: checkpoint is for stage '{st}', expected '{stage}'")
        check_checkpoint_record(path, ckpt, p, stage)
        if plans is not None:
            check_same_origin(path, p, checkpoints[0], plans, "the folds of one stage")
        if plans is not None and p["stages"][stage] != plans["stages"][stage]:
            raise AutosegError(f"{path}: plans for stage '{stage}' differ from {checkpoints[0]}; "
                               "folds of one ensemble must share patch size, spacing and network")
        plans = plans or p
        net = build_network(p["stages"][stage]["network"], stage_in_channels(p, stage), num_outputs(p, stage),
                            deep_supervision=False)
        try:
            net.load_state_dict(inference_weights(ckpt, str(path)))  # the network the checkpoint names
        except RuntimeError as e:
            raise AutosegError(f"{path}: weights do not fit the plans' network ({str(e).splitlines()[0][:160]})") from None
        if hasattr(net, "deep_supervision"):
            net.deep_supervision = False
        nets.append(net)
    if plans is None:
        raise AutosegError(f"stage '{stage}': no checkpoints given")
    network = EnsembleNet(nets).to(device).eval()
    for prm in network.parameters():
        prm.requires_grad_(False)
    if conv_dtype is not None:
        cast_conv_weights(network, conv_dtype)
    # A fold without postprocessing.json votes for "no rule".
    rule_sets = [load_json(pp) if (pp := Path(c).parent / "postprocessing.json").is_file() else {}
                 for c in checkpoints]
    rules = merge_fold_rules(rule_sets)
    # Validation (where rules are learned) runs on the stage grid: a voxel count there is a volume.
    voxel_mm3 = float(np.prod(plans["stages"][stage]["target_spacing"]))
    for rule in rules["rules"].values():
        if rule.get("min_size") and not rule.get("min_volume_mm3"):
            rule["min_volume_mm3"] = float(rule["min_size"]) * voxel_mm3
    return StageModel(stage, plans, network, [Path(c) for c in checkpoints], rules)
