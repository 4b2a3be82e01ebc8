"""The default trainer. Subclass it and override a class attribute or one small hook.

Lifecycle: ``fit()`` = ``initialize()`` (network, loss, optimiser, cases; every piece a hook) -> epochs
of ``train_step`` / ``validation_step`` with ``on_epoch_end`` bookkeeping -> final checkpoint ->
``final_validation()`` (sliding window on the fold's validation cases, metrics, postprocessing).
Checkpoints are written at epoch ends, so a run killed mid-epoch resumes (``--continue``) from the
last finished epoch and, with in-process loading, retraces exactly the same loss curve.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch
from torch import nn

from autoseg import AutosegError
from autoseg.augmentation import (AugmentationConfig, SpatialAugmenter, training_transforms,
                                  validation_transforms)
from autoseg.losses import DeepSupervisionLoss, DiceCELoss, deep_supervision_weights, pseudo_dice_counts
from autoseg.networks import build_network, deep_supervision_scales, network_class
from autoseg.paths import results_root
from autoseg.plans import num_outputs, stage_classes, stage_in_channels, validate_network
from autoseg.provenance import check_cache_plans, checkpoint_provenance
from autoseg.utils import seed_everything
from autoseg.trainers import distributed as ddp
from autoseg.devices import cpu_bf16_supported, resolve_device
from autoseg.trainers.checkpoint import (load_checkpoint, load_pretrained, most_advanced_checkpoint, rng_state,
                                        save_checkpoint, set_rng_state)
from autoseg.trainers.networks_state import MAIN, NetworkSlot, load_slots, slots_payload
from autoseg.trainers.data import BatchLoader, BatchStream, CaseStore, seed_process
from autoseg.trainers.progress import TrainingLog, epoch_bar
from autoseg.trainers.saliency import with_saliency_perturbation
from autoseg.trainers.saliency_schedule import SaliencySchedule
from autoseg.trainers.schedule import PolyLR
from autoseg.trainers.splits import fold_cases, load_or_create_splits, parse_fold

if TYPE_CHECKING:
    from autoseg.trainers.validation import Predictor

log = logging.getLogger(__name__)


class Trainer(SaliencySchedule):
    """nnU-Net-style trainer: Dice+CE with deep supervision, SGD Nesterov, poly LR, foreground oversampling
    (refinement stages: the saliency schedule of ``SaliencySchedule``)."""

    num_epochs: int = 1000
    iters_per_epoch: int = 250
    val_iters_per_epoch: int | None = None  # None: iters_per_epoch // 5, within [1, 50]
    initial_lr: float = 1e-2
    weight_decay: float = 3e-5
    momentum: float = 0.99
    grad_clip: float = 12.0
    oversample_foreground: float = 0.33
    batch_dice: bool = False
    deep_supervision: bool = True
    save_every: int = 1
    seed: int = 12345
    loader_timeout_s: float = 600.0
    channels_last: bool = False  # measured slower with bf16 on CPU (oneDNN reorders); opt-in
    validation_mirror_axes: tuple[int, ...] | None = None
    validation_tolerances: str = "flare22"
    network_names: tuple[str, ...] = (MAIN,)  # one slot per network this trainer owns
    inference_network: str = MAIN  # the slot the checkpoint tells inference to use

    def __init__(self, plans: dict, stage: str, fold: int | str, dataset_folder: str | os.PathLike,
                 device: str | torch.device = "auto", output_folder: str | os.PathLike | None = None, *,
                 num_epochs: int | None = None, iters_per_epoch: int | None = None,
                 num_workers: int | None = None, compile: bool = False, amp: bool | None = None,
                 pretrained: str | os.PathLike | None = None, seed: int | None = None) -> None:
        if stage not in plans.get("stages", {}):
            raise AutosegError(f"plans of {plans.get('dataset_name')}: no stage '{stage}' "
                               f"(stages: {', '.join(plans.get('stages', {}))})")
        self.plans, self.stage, self.fold = plans, stage, parse_fold(fold)
        self.stage_plans = plans["stages"][stage]
        self.dataset_folder = Path(dataset_folder)
        self.device = ddp.local_device(resolve_device(device))
        self.rank, self.world_size = ddp.rank(), ddp.world_size()
        self.is_main = self.rank == 0
        self.num_epochs = int(num_epochs or type(self).num_epochs)
        self.iters_per_epoch = int(iters_per_epoch or type(self).iters_per_epoch)
        self.num_workers = self.default_num_workers() if num_workers is None else int(num_workers)
        self.compile, self.pretrained = compile, pretrained
        self.seed = type(self).seed if seed is None else int(seed)
        self.amp_dtype = self.choose_amp_dtype(amp)
        self.patch_size = [int(p) for p in self.stage_plans["patch_size"]]
        self.spacing = [float(s) for s in self.stage_plans["target_spacing"]]
        self.batch_size = ddp.split_batch(int(self.stage_plans["batch_size"]), self.world_size, self.rank)
        self.num_classes = num_outputs(plans, stage)
        self.in_channels = stage_in_channels(plans, stage)
        self.class_values = stage_classes(plans, stage)
        self.output_folder = Path(output_folder) if output_folder is not None else (
            results_root() / plans["dataset_name"] / stage / type(self).__name__ / f"fold_{self.fold}")
        names = {v: k for k, v in plans["labels"].items()}
        self.class_names = ["foreground"] if self.stage_plans["classes"] == "foreground" else \
            [names.get(v, f"label_{v}") for v in self.class_values]
        self.progress = TrainingLog(self.output_folder / "training_log.txt" if self.is_main else None, self.class_names)
        self.current_epoch, self.best_ema = 0, -math.inf
        self.initialized = False

    # ----- configuration hooks -------------------------------------------------------------------
    def default_num_workers(self) -> int:
        """CUDA: enough augmentation workers to keep the GPU busy. CPU: one worker overlaps loading with
        compute; more would steal cores from the convolutions."""
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if self.device.type == "cuda":
            return max(1, min(12, cpus // max(1, self.world_size) - 1))
        return 1 if cpus >= 2 else 0

    def choose_amp_dtype(self, amp: bool | None) -> torch.dtype | None:
        """fp16 autocast on CUDA; bf16 on CPUs with native bf16 units; ``amp=False`` forces fp32."""
        if amp is False:
            return None
        if self.device.type == "cuda":
            return torch.float16
        if self.device.type == "cpu" and (amp or cpu_bf16_supported()):
            return torch.bfloat16
        return None

    def augmentation_config(self) -> AugmentationConfig:
        return AugmentationConfig()

    def network_config(self) -> dict:
        """The stage's network config (class name + arguments), by default the plans'. Override it to
        train another registered network: the checkpoint's plans record what was built, so inference
        builds the same through the same registry."""
        return self.stage_plans["network"]

    def build_network(self) -> nn.Module:
        return build_network(self.stage_plans["network"], self.in_channels, self.num_classes, self.deep_supervision)

    def _adopt_network_config(self) -> None:
        """Make the plans (hence every checkpoint) name the network ``network_config`` chose."""
        cfg = self.network_config()
        if cfg != self.stage_plans["network"]:
            validate_network(cfg, f"{type(self).__name__}.network_config()", f"stages.{self.stage}.network")
            stage = {**self.stage_plans, "network": cfg}
            self.plans = {**self.plans, "stages": {**self.plans["stages"], self.stage: stage}}
            self.stage_plans = stage

    def _check_network_class(self) -> None:
        """One construction path: the network must be the registered class the plans name, or the
        predictor (which builds from the checkpoint's plans) would build something else."""
        name = self.stage_plans["network"]["class"]
        cls = network_class(name, f"stages.{self.stage}.network.class")
        if type(self.network) is not cls:  # a subclass may change the layers: inference would not
            raise AutosegError(f"{type(self).__name__}.build_network returned {type(self.network).__name__}, but "
                               f"stages.{self.stage}.network.class is '{name}': inference builds from the plans, so "
                               "override network_config() (and register the class) instead of build_network()")

    def build_base_loss(self) -> nn.Module:
        """The per-output loss (deep supervision wraps it)."""
        return DiceCELoss(batch_dice=self.batch_dice)

    def build_loss(self) -> nn.Module:
        base = self.build_base_loss()
        if not self.deep_supervision:
            return base
        weights = deep_supervision_weights(len(deep_supervision_scales(self.stage_plans["network"])))
        return DeepSupervisionLoss(base, weights)

    def configure_optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        opt = torch.optim.SGD(self.network.parameters(), lr=self.initial_lr, momentum=self.momentum,
                              nesterov=True, weight_decay=self.weight_decay)
        return opt, PolyLR(opt, self.num_epochs)

    def spatial_augmenter(self) -> SpatialAugmenter | None:
        """Rotation/scaling/elastic, fused with patch cutting; None disables spatial augmentation."""
        return SpatialAugmenter(self.patch_size, self.augmentation_config(), self.spacing)

    def training_transforms(self) -> Any:
        return with_saliency_perturbation(training_transforms(self.patch_size, self.augmentation_config(), self.spacing),
                                          self.plans, self.stage)

    def validation_transforms(self) -> Any:
        return validation_transforms()

    def get_dataloaders(self) -> tuple[BatchLoader, BatchLoader]:
        """Training and per-epoch validation loaders (the caller closes them)."""
        store = CaseStore(self.dataset_folder / self.stage, self.train_cases + self.val_cases)
        tr, va = self.training_sampler(store), self.validation_sampler(store)  # PatchSamplers (SaliencySchedule)
        seed = self.seed + 7919 * self.rank
        pin = self.device.type == "cuda"
        val_workers = 0 if self.num_workers == 0 else max(1, self.num_workers // 2)
        e = self.current_epoch  # worker streams resume at the batch an uninterrupted run would be at
        return (BatchLoader(BatchStream(tr, self.training_transforms(), seed, e * self.iters_per_epoch),
                            self.num_workers, pin, self.loader_timeout_s),
                BatchLoader(BatchStream(va, self.validation_transforms(), seed + 1, e * self.num_val_iters),
                            val_workers, pin, self.loader_timeout_s))

    @property
    def num_val_iters(self) -> int:
        return self.val_iters_per_epoch or min(50, max(1, self.iters_per_epoch // 5))

    # ----- setup -------------------------------------------------------------------------------
    def stage_case_ids(self) -> list[str]:
        folder = self.dataset_folder / self.stage
        ids = sorted(p.name[:-4] for p in folder.glob("*.npz") if (folder / f"{p.name[:-4]}.json").is_file())
        if not ids:
            raise AutosegError(f"{folder}: no preprocessed cases (run 'autoseg plan_and_preprocess' first)")
        return ids

    def setup_cases(self) -> None:
        ids = self.stage_case_ids()
        check_cache_plans(self.dataset_folder, self.stage, ids, self.plans)
        all_ids = set(ids)
        for st in self.plans["stages"]:
            all_ids.update(p.name[:-4] for p in (self.dataset_folder / st).glob("*.npz"))
        splits = load_or_create_splits(self.dataset_folder, sorted(all_ids), write=self.is_main)
        self.train_cases, self.val_cases = fold_cases(splits, self.fold, ids, self.dataset_folder / "splits.json")

    def initialize(self) -> None:
        """Build everything from the plans; deterministic for a given seed."""
        if self.initialized:
            return
        seed_everything(self.seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed patch size: let cuDNN pick the fastest kernels
        self.setup_cases()
        self._adopt_network_config()
        self.memory_format = torch.channels_last_3d if self.use_channels_last() else torch.contiguous_format
        self.slots = {name: self.build_slot(name) for name in self.network_names}
        self.use_slot(self.inference_network)
        self.loss = self.build_loss()
        seed_process(self.seed + 7919 * self.rank)
        self.initialized = True

    def build_slot(self, name: str) -> NetworkSlot:
        """One network with its optimiser, schedule, grad scaler and DDP/compile wrapper. The hooks
        (``build_network``, ``configure_optimizer``) see ``self.network`` = the network being built."""
        net = self.build_network().to(self.device).to(memory_format=self.memory_format)
        self.network = net
        self._check_network_class()
        if self.pretrained:
            load_pretrained(net, self.pretrained)
        opt, sched = self.configure_optimizer()
        scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        model = ddp.wrap(net, self.device)
        return NetworkSlot(name, net, opt, sched, scaler, torch.compile(model) if self.compile else model)

    def use_slot(self, name: str) -> None:
        """Point ``network``/``model``/``optimizer``/``lr_scheduler``/``grad_scaler`` at one slot."""
        slot = self.slots[name]
        self.network, self.model, self.optimizer = slot.network, slot.model, slot.optimizer
        self.lr_scheduler, self.grad_scaler = slot.lr_scheduler, slot.grad_scaler

    def set_train_mode(self, train: bool) -> None:
        for slot in self.slots.values():
            slot.network.train(train)

    # ----- steps -------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def use_channels_last(self) -> bool:
        """channels_last_3d memory format (opt-in: on our CPUs bf16 training measured ~5% slower with it)."""
        return bool(self.channels_last)

    def to_device(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        nb = self.device.type == "cuda"
        data = batch["data"].to(self.device, non_blocking=nb).contiguous(memory_format=self.memory_format)
        return data, batch["seg"].to(self.device, non_blocking=nb)

    def annotated_classes(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """(B, K) bool: classes each patch's case annotates (partial labels: marginal + exclusion loss);
        None when every case annotates every class (the plain loss). Override to change the regime."""
        ann = batch.get("annotated")
        return None if ann is None or bool(ann.all()) else ann.to(self.device)

    def compute_loss(self, output: Any, target: torch.Tensor, annotated: torch.Tensor | None) -> torch.Tensor:
        return self.loss(output, target) if annotated is None else self.loss(output, target, annotated=annotated)

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        data, target = self.to_device(batch)
        annotated = self.annotated_classes(batch)
        with self.autocast():
            output = self.model(data)
            loss = self.compute_loss(output, target, annotated)
        self.slots[self.inference_network].step(loss, self.grad_clip)
        return {"loss": loss.detach()}

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        data, target = self.to_device(batch)
        with self.autocast():
            output = self.model(data)
            loss = self.compute_loss(output, target, annotated := self.annotated_classes(batch))
        logits = output[0] if isinstance(output, (list, tuple)) else output
        tp, fp, fn = pseudo_dice_counts(logits, target, annotated=annotated)
        return {"loss": loss.detach(), "tp": tp, "fp": fp, "fn": fn}

    # ----- epochs ------------------------------------------------------------------------------
    def on_epoch_start(self) -> None:
        self.set_train_mode(True)

    def run_epoch(self, train_loader: Iterator, val_loader: Iterator) -> None:
        self.on_epoch_start()
        t0, wait = time.perf_counter(), 0.0
        train_out = []
        bar = epoch_bar(self.iters_per_epoch, self.current_epoch + 1, self.num_epochs, self.is_main)
        for _ in range(self.iters_per_epoch):
            tw = time.perf_counter()
            batch = next(train_loader)
            wait += time.perf_counter() - tw
            train_out.append(self.train_step(batch))
            bar.update()
        bar.close()
        self.last_train_time, self.last_loader_wait = time.perf_counter() - t0, wait
        self.set_train_mode(False)
        with torch.no_grad():
            val_out = [self.validation_step(next(val_loader)) for _ in range(self.num_val_iters)]
        self.on_epoch_end(train_out, val_out, time.perf_counter() - t0)

    def on_epoch_end(self, train_outputs: list[dict], val_outputs: list[dict], epoch_time: float) -> None:
        """Aggregate (over ranks too), log, step the LR schedule, write checkpoints and the plot."""
        train_loss = torch.stack([o["loss"].float().cpu() for o in train_outputs]).mean()
        val_loss = torch.stack([o["loss"].float().cpu() for o in val_outputs]).mean()
        counts = torch.stack([sum(o[k] for o in val_outputs).double() for k in ("tp", "fp", "fn")])
        if ddp.is_distributed():
            packed = torch.cat([train_loss.double().view(1), val_loss.double().view(1), counts.flatten()])
            dev = self.device if self.device.type == "cuda" else torch.device("cpu")
            packed = ddp.all_reduce_sum(packed.to(dev)).cpu()
            train_loss, val_loss = packed[0] / self.world_size, packed[1] / self.world_size
            counts = packed[2:].view(3, -1)
        tp, fp, fn = counts
        denom = 2 * tp + fp + fn
        dice = [float(2 * a / d) if d > 0 else float("nan") for a, d in zip(tp, denom)]
        finite = [d for d in dice if not math.isnan(d)]
        mean_dice = float(np.mean(finite)) if finite else 0.0
        prev = self.progress.curves["ema_dice"]
        ema = mean_dice if not prev else 0.9 * prev[-1] + 0.1 * mean_dice
        lr = self.optimizer.param_groups[0]["lr"]
        patches = self.iters_per_epoch * self.batch_size * self.world_size
        self.progress.append(train_loss=float(train_loss), val_loss=float(val_loss), pseudo_dice=dice,
                        ema_dice=ema, lr=lr, epoch_time=epoch_time,
                        patches_per_s=patches / max(self.last_train_time, 1e-9))
        for slot in self.slots.values():
            slot.lr_scheduler.step()
        self.current_epoch += 1
        dice_txt = ", ".join(f"{n} {d:.4f}" for n, d in zip(self.class_names, dice))
        self.write_log(f"epoch {self.current_epoch}/{self.num_epochs}: train loss {float(train_loss):.4f}, "
                       f"val loss {float(val_loss):.4f}, pseudo dice [{dice_txt}] (EMA {ema:.4f}), lr {lr:.2e}, "
                       f"{epoch_time:.1f} s ({patches / max(self.last_train_time, 1e-9):.2f} patches/s, "
                       f"waited {self.last_loader_wait:.1f} s for data)")
        if self.is_main:
            if ema > self.best_ema:
                self.best_ema = ema
                self.save(self.output_folder / "checkpoint_best.pt")
            if self.current_epoch % self.save_every == 0 or self.current_epoch == self.num_epochs:
                self.save(self.output_folder / "checkpoint_latest.pt")
            self.progress.plot(self.output_folder / "progress.png")

    def write_log(self, message: str) -> None:
        """A line for the console and ``training_log.txt`` (other ranks only log it at debug level)."""
        if self.is_main:
            self.progress.write(message)
        else:
            log.debug("rank %d: %s", self.rank, message)

    # ----- checkpoints -------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        """Subclasses add their own plain-data/tensor state here (saved and restored with the run)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Counterpart of ``extra_state``."""

    def checkpoint_payload(self) -> dict[str, Any]:
        return {**slots_payload(self.slots, self.inference_network), "plans": self.plans, "stage": self.stage,
                "provenance": checkpoint_provenance(self.plans, self.stage),
                "trainer_name": type(self).__name__, "fold": str(self.fold), "epoch": self.current_epoch,
                "num_epochs": self.num_epochs, "iters_per_epoch": self.iters_per_epoch,
                "rng_state": rng_state(), "logs": self.progress.state(), "best_ema": self.best_ema,
                "extra_state": self.extra_state()}

    def save(self, path: Path) -> None:
        if self.is_main:
            save_checkpoint(self.checkpoint_payload(), path)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore weights, optimiser, schedule, grad scaler, RNGs and logs: training resumes exactly."""
        self.initialize()
        ckpt = load_checkpoint(path, "cpu")  # RNG states must stay on the CPU; load_state_dict moves the rest
        load_slots(self.slots, ckpt, str(path))
        for slot in self.slots.values():
            if isinstance(slot.lr_scheduler, PolyLR):
                slot.lr_scheduler.max_epochs = self.num_epochs
        self.current_epoch = int(ckpt["epoch"])
        self.best_ema = float(ckpt.get("best_ema", -math.inf))
        self.progress.load_state(ckpt.get("logs", {}), self.current_epoch)
        self.load_extra_state(ckpt.get("extra_state") or {})
        set_rng_state(ckpt["rng_state"])
        if self.world_size > 1:  # ranks must not replay rank 0's data stream
            seed_process(self.seed + 7919 * self.rank + 104729 * self.current_epoch)
        self.write_log(f"resumed from {path} at epoch {self.current_epoch}")

    def resume_checkpoint(self) -> Path | None:
        """The most advanced of checkpoint_final/latest in the output folder, if any."""
        return most_advanced_checkpoint(self.output_folder)

    # ----- the whole run -----------------------------------------------------------------------
    def fit(self, continue_training: bool = False) -> Path:
        """Train (resuming if asked), save checkpoint_final, run the final validation; return the folder."""
        self.initialize()
        if continue_training:
            ckpt = self.resume_checkpoint()
            if ckpt is None:
                self.write_log(f"--continue: no checkpoint in {self.output_folder}; starting from scratch")
            else:
                self.load_checkpoint(ckpt)
        self.write_log(self.describe())
        if self.current_epoch < self.num_epochs:
            train_loader, val_loader = self.get_dataloaders()
            with train_loader, val_loader:
                while self.current_epoch < self.num_epochs:
                    self.run_epoch(train_loader, val_loader)
        self.save(self.output_folder / "checkpoint_final.pt")
        ddp.barrier()
        self.final_validation()
        return self.output_folder

    def describe(self) -> str:
        amp = str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off"
        return (f"{type(self).__name__} stage={self.stage} fold={self.fold} device={self.device} "
                f"ranks={self.world_size} epochs={self.num_epochs}x{self.iters_per_epoch} "
                f"batch={self.batch_size}/rank patch={self.patch_size} workers={self.num_workers} amp={amp} "
                f"compile={self.compile} train={len(self.train_cases)} val={len(self.val_cases)} cases")

    def validation_predictor(self) -> "Predictor":
        """What the final validation predicts with: the network the checkpoint names for inference."""
        from autoseg.trainers.validation import network_predictor
        return network_predictor(self.slots[self.inference_network].network, self.patch_size, self.num_classes,
                                 self.device, self.validation_mirror_axes, self.amp_dtype is not None)

    def final_validation(self) -> None:
        """Sliding-window prediction of the fold's validation cases -> validation/ + postprocessing.json."""
        from autoseg.trainers.validation import validate_fold

        validate_fold(self)
