"""autoseg's short trainer for the side-by-side benchmark (found through ``AUTOSEG_TRAINER_PATH``).

The twin of ``benchmarks/peer/nnUNetTrainerAutosegBench.py``: the default Trainer's step, network,
loss, data pipeline and checkpoints are unchanged; only the amount of work differs (epochs and
iterations come from ``--epochs``/``--iters-per-epoch``; ``AUTOSEG_BENCH_VAL_ITERS`` validation
iterations per epoch, default 1; no final validation pass). Each training iteration's wall time is
printed as ``AUTOSEG_BENCH iteration_s=<seconds>``, measured exactly as in the nnU-Net twin: from the
start of one ``train_step`` to the start of the next in the same epoch, so it includes waiting for the
next batch (an epoch of N iterations prints N-1 intervals). On CUDA the device is synchronised at
each mark so queued kernels are charged to their own iteration.
"""
from __future__ import annotations

import os
import time

import torch

from autoseg.trainers.fast import TrainerFast
from autoseg.trainers.trainer import Trainer


class AutosegBenchTrainer(Trainer):
    val_iters_per_epoch = int(os.environ.get("AUTOSEG_BENCH_VAL_ITERS", "1"))

    _bench_last_start: float | None = None

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if self._bench_last_start is not None:
            print(f"AUTOSEG_BENCH iteration_s={now - self._bench_last_start:.6f}", flush=True)
        self._bench_last_start = now
        return super().train_step(batch)

    def on_epoch_end(self, train_outputs: list[dict], val_outputs: list[dict], epoch_time: float) -> None:
        self._bench_last_start = None  # an interval across validation and checkpointing is no iteration
        super().on_epoch_end(train_outputs, val_outputs, epoch_time)

    def final_validation(self) -> None:
        self.write_log("autoseg bench: final validation skipped (timing run)")

    def choose_amp_dtype(self, amp: bool | None) -> torch.dtype | None:
        """``AUTOSEG_BENCH_PRECISION`` = fp32 | bf16 sets both tools' training precision alike (equal-precision
        rows; the nnU-Net twin reads the same variable); unset: each tool's default."""
        wanted = os.environ.get("AUTOSEG_BENCH_PRECISION", "")
        if wanted == "fp32":
            return None
        if wanted == "bf16" and self.device.type == "cpu":
            return torch.bfloat16
        return super().choose_amp_dtype(amp)


class AutosegBenchFastTrainer(AutosegBenchTrainer, TrainerFast):
    """``--quality``'s model: TrainerFast's recipe (AdamW, more foreground patches), which learns every
    organ in a few hundred CPU iterations where SGD learns the liver only; timed and cut short like
    its parent. Its weights are given to both predictors (``benchmarks/peer/shared_weights.py``)."""
