"""Trainer variants that ship with autoseg: each changes a few attributes or one hook."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from autoseg import AutosegError
from autoseg.losses import IGNORE_LABEL, DiceCELoss
from autoseg.trainers import distributed as ddp
from autoseg.trainers.trainer import Trainer


class TrainerShort(Trainer):
    """50 epochs: quick experiments and CPU-only machines (still 250 iterations per epoch)."""

    num_epochs = 50


class TrainerFinetune(Trainer):
    """Start from ``--pretrained CKPT`` (tensors that fit are loaded, the rest reported) with a 10x lower
    learning rate, so pretrained features are refined rather than overwritten."""

    num_epochs = 250
    initial_lr = 1e-3

    def fit(self, continue_training: bool = False):
        if not self.pretrained and not continue_training:
            raise AutosegError(f"{type(self).__name__} fine-tunes a trained model: pass --pretrained CKPT")
        return super().fit(continue_training)


class TrainerTumourDynamicWeights(Trainer):
    """Class weights that follow how often each class appears in the training patches.

    Tumours are small and their share of the sampled voxels varies (oversampling, case mix), so a fixed
    weighting over- or under-shoots. Every epoch the voxel frequency of each class (EMA over epochs,
    summed over ranks) sets the weight ``clip((f_background / f_c) ** exponent, 1, max_class_weight)``
    for both cross-entropy and Dice; rare tumour classes get more weight, less as they become common.
    """

    class_weight_exponent: float = 0.5
    max_class_weight: float = 10.0
    frequency_momentum: float = 0.9

    def build_base_loss(self) -> nn.Module:
        self.class_weights = torch.ones(self.num_classes, device=self.device)
        self.class_frequency: torch.Tensor | None = None
        self._counts = torch.zeros(self.num_classes, dtype=torch.float64)
        self.dice_ce = DiceCELoss(batch_dice=self.batch_dice, class_weights=self.class_weights)
        return self.dice_ce

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        seg = batch["seg"]
        labels = seg[seg != IGNORE_LABEL].long()
        self._counts += torch.bincount(labels.flatten(), minlength=self.num_classes)[: self.num_classes].double()
        return super().train_step(batch)

    def update_class_weights(self) -> None:
        dev = self.device if self.device.type == "cuda" else torch.device("cpu")
        counts = ddp.all_reduce_sum(self._counts.to(dev)).cpu().clone()
        self._counts.zero_()
        if counts.sum() <= 0:
            return
        freq = counts / counts.sum()
        m = self.frequency_momentum
        self.class_frequency = freq if self.class_frequency is None else m * self.class_frequency + (1 - m) * freq
        f = self.class_frequency.clamp_min(1e-8)
        w = (f[0] / f).pow(self.class_weight_exponent).clamp(1.0, self.max_class_weight)
        w[0] = 1.0
        self.class_weights = w.float().to(self.device)
        self.dice_ce.class_weights = self.class_weights

    def on_epoch_end(self, train_outputs: list[dict], val_outputs: list[dict], epoch_time: float) -> None:
        self.update_class_weights()
        self.write_log("class weights: " + ", ".join(
            f"{n} {float(w):.2f}" for n, w in zip(["background"] + self.class_names, self.class_weights)))
        super().on_epoch_end(train_outputs, val_outputs, epoch_time)

    def extra_state(self) -> dict[str, Any]:
        return {"class_weights": self.class_weights.cpu(),
                "class_frequency": None if self.class_frequency is None else self.class_frequency.cpu()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("class_weights") is not None:
            self.class_weights = state["class_weights"].to(self.device)
            self.dice_ce.class_weights = self.class_weights
        if state.get("class_frequency") is not None:
            self.class_frequency = state["class_frequency"].cpu()
