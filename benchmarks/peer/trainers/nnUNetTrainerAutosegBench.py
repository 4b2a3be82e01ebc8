"""A short nnU-Net v2 trainer for autoseg's side-by-side benchmark (found through ``nnUNet_extTrainer``).

nnU-Net's shipped trainers run 250 iterations per epoch and, after training, predict every validation
case with test-time augmentation; on a CPU that is hours. This subclass keeps nnU-Net's training step,
network, loss, data pipeline and checkpoint format untouched and changes only how much work is done:
``AUTOSEG_BENCH_EPOCHS`` epochs (default 1) of ``AUTOSEG_BENCH_ITERS`` iterations (default 4) with
``AUTOSEG_BENCH_VAL_ITERS`` validation iterations (default 1), and no final validation pass.

Each training iteration's wall time is printed as ``AUTOSEG_BENCH iteration_s=<seconds>``: the time
from the start of one ``train_step`` to the start of the next in the same epoch, so it includes
waiting for the next batch from the augmentation workers (an epoch of N iterations prints N-1
intervals). autoseg's bench trainer prints the same marker, measured the same way.

``AUTOSEG_BENCH_PRECISION=bf16`` runs nnU-Net's unchanged training step under CPU bf16 autocast (nnU-Net
autocasts on CUDA only), for rows at equal precision with autoseg's bench trainer, which reads it too.
"""
import os
import time

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerAutosegBench(nnUNetTrainer):
    # nnU-Net records its constructor arguments by inspecting this exact signature: keep it explicit.
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("AUTOSEG_BENCH_EPOCHS", "1"))
        self.num_iterations_per_epoch = int(os.environ.get("AUTOSEG_BENCH_ITERS", "4"))
        self.num_val_iterations_per_epoch = int(os.environ.get("AUTOSEG_BENCH_VAL_ITERS", "1"))
        self._bench_last_start = None

    def train_step(self, batch):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if self._bench_last_start is not None:
            print(f"AUTOSEG_BENCH iteration_s={now - self._bench_last_start:.6f}", flush=True)
        self._bench_last_start = now
        if os.environ.get("AUTOSEG_BENCH_PRECISION") == "bf16" and self.device.type == "cpu":
            # nnU-Net autocasts on CUDA only; the equal-precision rows run its unchanged step under CPU bf16
            # autocast (autoseg's twin trainer reads the same variable)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return super().train_step(batch)
        return super().train_step(batch)

    def on_train_epoch_end(self, train_outputs):
        self._bench_last_start = None  # an interval across validation and checkpointing is no iteration
        return super().on_train_epoch_end(train_outputs)

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("autoseg bench: final validation skipped (timing run)")


class nnUNetTrainerAutosegBenchFast(nnUNetTrainerAutosegBench):
    """``--quality``'s nnU-Net model: nnU-Net's pipeline with the short-schedule recipe of autoseg's
    TrainerFast (AdamW 3e-3, weight decay 1e-4, poly decay, half the patches on foreground), which
    learns every organ in a few hundred CPU iterations where the default SGD learns the liver only.
    The transposed convolutions' biases are fixed at zero so that the trained weights are exactly
    expressible in autoseg's U-Net (``benchmarks/peer/shared_weights.py --reverse``); the conv biases
    before instance normalisation need nothing (the normalisation removes them)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 3e-3
        self.weight_decay = 1e-4
        self.oversample_foreground_percent = 0.5

    def configure_optimizers(self):
        from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

        for m in self.network.modules():
            if isinstance(m, (torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)) and m.bias is not None:
                with torch.no_grad():
                    m.bias.zero_()
                m.bias.requires_grad_(False)
        params = [p for p in self.network.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)


class nnUNetTrainerAutosegBenchStock(nnUNetTrainerAutosegBenchFast):
    """The short-schedule recipe of ``nnUNetTrainerAutosegBenchFast`` with nnU-Net's network untouched:
    every bias trains, the transposed convolutions' included. Its checkpoints are what a stock nnU-Net
    training leaves behind, so ``autoseg import_nnunet`` is measured on them (benchmarks/bench_nnunet_import.py)."""

    def configure_optimizers(self):
        from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)
