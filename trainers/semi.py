"""Semi-supervised training on ``imagesUnlabeled/``: cross pseudo supervision (Chen et al., CVPR 2021).

Two networks of the stage's architecture, initialised differently (built one after the other from one
seed). A batch holds the plans' batch size in patches, half labelled and half unlabelled by default,
so a step costs about two single-network steps. Each step feeds both the labelled and the unlabelled patches through both networks once;
each network gets the supervised Dice+CE on the labelled patches (the partial-label loss where cases
are partially labelled) plus ``lambda(t)`` times the cross-entropy between its logits on the
unlabelled patches and the other network's argmax there. The pseudo labels are detached, so the two
losses touch disjoint parameters and each network steps with its own optimiser and grad scaler.
``lambda`` ramps up (``exp(-5 (1 - t)^2)``) over the first ``cps_rampup`` of training: early pseudo
labels are noise. Network ``net_a`` is the one the checkpoint names for inference.

Unlabelled patches come from ``<preprocessed>/unlabelled/<stage>/`` (``plan_and_preprocess`` writes
it); when ``autoseg select_unlabelled`` has written ``unlabelled_selection_<stage>.json`` next to the
plans, only the images it chose are used.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from autoseg import AutosegError
from autoseg.losses import masked_cross_entropy
from autoseg.preprocessing.unlabelled import unlabelled_case_ids, unlabelled_folder
from autoseg.trainers.data import BatchLoader, BatchStream, CaseStore, PatchSampler
from autoseg.trainers.fast import TrainerFast
from autoseg.trainers.networks_state import NetworkSlot
from autoseg.trainers.trainer import Trainer
from autoseg.utils import load_json

SELECTION_FILE = "unlabelled_selection_{stage}.json"


def selection_path(dataset_folder: str | Path, stage: str) -> Path:
    return Path(dataset_folder) / SELECTION_FILE.format(stage=stage)


def unlabelled_training_cases(dataset_folder: str | Path, stage: str, use_selection: bool = True) -> list[str]:
    """The unlabelled cases to train on: the selection's chosen list if there is one, else all."""
    ids = unlabelled_case_ids(dataset_folder, stage)
    sel = selection_path(dataset_folder, stage)
    if use_selection and sel.is_file():
        chosen = [c for c in load_json(sel).get("selected", []) if c in set(ids)]
        if not chosen:
            raise AutosegError(f"{sel}: none of the selected unlabelled cases is cached for stage '{stage}'")
        return chosen
    if not ids:
        raise AutosegError(f"{unlabelled_folder(dataset_folder) / stage}: no unlabelled cases; put images in "
                           "imagesUnlabeled/ and rerun 'autoseg plan_and_preprocess'")
    return ids


class PairedLoader:
    """``next()`` gives ``{"labelled": batch, "unlabelled": batch}``; closes both loaders on exit."""

    def __init__(self, labelled: BatchLoader, unlabelled: BatchLoader) -> None:
        self.labelled, self.unlabelled = labelled, unlabelled

    def __iter__(self) -> "PairedLoader":
        return self

    def __next__(self) -> dict[str, dict]:
        return {"labelled": next(self.labelled), "unlabelled": next(self.unlabelled)}

    def close(self) -> None:
        try:
            self.labelled.close()
        finally:
            self.unlabelled.close()

    def __enter__(self) -> "PairedLoader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def top_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (list, tuple)) else output


def split_output(output: Any, n: int) -> tuple[Any, torch.Tensor]:
    """(the first ``n`` samples of every deep-supervision output, the rest of the top output)."""
    if isinstance(output, (list, tuple)):
        return [o[:n] for o in output], output[0][n:]
    return output[:n], output[n:]


class CrossPseudoSupervision:
    """The CPS recipe as a mixin over any single-network trainer (``TrainerCPS``, ``TrainerFastCPS``)."""

    network_names = ("net_a", "net_b")
    inference_network = "net_a"
    labelled_batch_size: int | None = None  # None: half the plans' batch (at least 1)
    unlabelled_batch_size: int | None = None  # None: the rest of the plans' batch (at least 1)
    cps_weight: float = 1.0  # lambda after the ramp-up
    cps_rampup: float = 0.3  # share of all iterations over which lambda ramps up
    use_selection: bool = True  # train on the select_unlabelled list when it exists

    def cps_lambda(self) -> float:
        total = max(1, self.num_epochs * self.iters_per_epoch)
        t = (self.current_epoch * self.iters_per_epoch + self._iter_in_epoch) / max(1.0, self.cps_rampup * total)
        return self.cps_weight * (1.0 if t >= 1 else math.exp(-5.0 * (1.0 - t) ** 2))

    def on_epoch_start(self) -> None:
        super().on_epoch_start()
        self._iter_in_epoch = 0

    def build_slot(self, name: str) -> NetworkSlot:
        """``--pretrained`` initialises the inference network only: two identical networks fed the same
        patches would stay identical, and CPS would degrade to self-training."""
        if name == self.inference_network or not self.pretrained:
            return super().build_slot(name)
        pretrained, self.pretrained = self.pretrained, None
        try:
            return super().build_slot(name)
        finally:
            self.pretrained = pretrained

    def setup_cases(self) -> None:
        super().setup_cases()
        total = self.batch_size
        self.batch_size = self.labelled_batch_size or max(1, (total + 1) // 2)
        self.unlabelled_batch = self.unlabelled_batch_size or max(1, total - self.batch_size)
        self._iter_in_epoch = 0
        self.unlabelled_cases = unlabelled_training_cases(self.dataset_folder, self.stage, self.use_selection)

    def get_dataloaders(self) -> tuple[PairedLoader, BatchLoader]:
        train, val = super().get_dataloaders()
        folder = unlabelled_folder(self.dataset_folder) / self.stage
        sampler = PatchSampler(CaseStore(folder, self.unlabelled_cases), self.unlabelled_cases,
                               self.unlabelled_batch, self.patch_size, 0.0,
                               self.spatial_augmenter(), self.num_classes)
        seed = self.seed + 7919 * self.rank + 104729 * self.current_epoch + 2
        unl = BatchLoader(BatchStream(sampler, self.training_transforms(), seed), self.num_workers,
                          self.device.type == "cuda", self.loader_timeout_s)
        return PairedLoader(train, unl), val

    def train_step(self, batch: dict[str, dict]) -> dict[str, torch.Tensor]:
        lab, unl = batch["labelled"], batch["unlabelled"]
        x_l, y_l = self.to_device(lab)
        x_u = unl["data"].to(self.device, non_blocking=self.device.type == "cuda").contiguous(
            memory_format=self.memory_format)
        annotated, n = self.annotated_classes(lab), x_l.shape[0]
        lam = self.cps_lambda()
        self._iter_in_epoch += 1
        x = torch.cat([x_l, x_u])
        names = list(self.slots)
        with self.autocast():
            outs = {k: split_output(self.slots[k].model(x), n) for k in names}
            pseudo = {k: u.detach().argmax(1, keepdim=True) for k, (_, u) in outs.items()}
            losses = {}
            for k, other in zip(names, names[::-1]):
                sup = self.compute_loss(outs[k][0], y_l, annotated)
                losses[k] = sup + lam * masked_cross_entropy(outs[k][1], pseudo[other])
        for k in names:
            self.slots[k].step(losses[k], self.grad_clip)
        return {"loss": (sum(losses.values()) / len(losses)).detach()}

    def on_epoch_end(self, train_outputs: list[dict], val_outputs: list[dict], epoch_time: float) -> None:
        self.write_log(f"cps: lambda {self.cps_lambda():.3f}, {len(self.unlabelled_cases)} unlabelled case(s)")
        super().on_epoch_end(train_outputs, val_outputs, epoch_time)

    def describe(self) -> str:
        return (super().describe() + f" unlabelled={len(self.unlabelled_cases)} "
                f"(batch {self.unlabelled_batch}) networks={list(self.slots)}")


class TrainerCPS(CrossPseudoSupervision, Trainer):
    """Cross pseudo supervision with the default recipe (SGD, 1000 epochs)."""


class TrainerFastCPS(CrossPseudoSupervision, TrainerFast):
    """Cross pseudo supervision with ``TrainerFast``'s AdamW recipe (CPU budgets, benchmarks)."""
