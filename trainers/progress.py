"""Per-epoch bookkeeping: ``training_log.txt`` lines and the ``progress.png`` curves.

The logs are plain lists of floats so they travel inside checkpoints (``weights_only`` loading) and a
resumed run continues the same curves.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any
from pathlib import Path

from autoseg.utils import atomic_path

log = logging.getLogger(__name__)

LOG_KEYS = ("train_loss", "val_loss", "pseudo_dice", "ema_dice", "lr", "epoch_time", "patches_per_s")


def epoch_bar(total: int, epoch: int, num_epochs: int, enabled: bool) -> Any:
    """Progress inside an epoch (iterations/s and ETA on stderr): long CPU epochs are otherwise silent
    for minutes. Off on other ranks and when AUTOSEG_PROGRESS=0."""
    from tqdm import tqdm

    on = enabled and os.environ.get("AUTOSEG_PROGRESS", "1") != "0"
    return tqdm(total=total, desc=f"epoch {epoch}/{num_epochs}", unit="it", leave=False, disable=not on,
                mininterval=1.0, dynamic_ncols=True)


class TrainingLog:
    """Curves (one value per epoch; ``pseudo_dice`` holds one list per epoch) plus a text log file."""

    def __init__(self, path: Path | None, class_names: list[str]) -> None:
        self.path = path
        self.class_names = class_names
        self.curves: dict[str, list] = {k: [] for k in LOG_KEYS}

    def write(self, message: str) -> None:
        """Log ``message`` and append it, timestamped, to the text log (writing rank only)."""
        log.info(message)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {message}\n")

    def append(self, **values: object) -> None:
        for k in LOG_KEYS:
            self.curves[k].append(values.get(k))

    def state(self) -> dict[str, list]:
        return {k: list(v) for k, v in self.curves.items()}

    def load_state(self, state: dict[str, list], epochs: int) -> None:
        self.curves = {k: list(state.get(k, []))[:epochs] for k in LOG_KEYS}

    def plot(self, path: Path) -> None:
        """Loss, pseudo-Dice (mean, EMA and per class), learning rate and epoch time against epochs."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        c = self.curves
        epochs = list(range(1, len(c["train_loss"]) + 1))
        if not epochs:
            return
        fig, axes = plt.subplots(3, 1, figsize=(10, 12))
        ax = axes[0]
        ax.plot(epochs, c["train_loss"], label="train loss", color="tab:blue")
        ax.plot(epochs, c["val_loss"], label="val loss", color="tab:red")
        ax.set_ylabel("loss")
        ax.legend(loc="upper left")
        ax2 = ax.twinx()
        per_class = list(zip(*c["pseudo_dice"])) if c["pseudo_dice"] and c["pseudo_dice"][0] else []
        for name, values in zip(self.class_names, per_class):
            ax2.plot(epochs, values, linestyle=":", linewidth=1, label=f"dice {name}")
        ax2.plot(epochs, c["ema_dice"], color="tab:green", linewidth=2, label="pseudo dice (EMA)")
        ax2.set_ylabel("pseudo dice")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="upper right", fontsize=7)
        axes[1].plot(epochs, c["epoch_time"], color="tab:purple")
        axes[1].set_ylabel("epoch time (s)")
        axes[2].plot(epochs, c["lr"], color="tab:orange")
        axes[2].set_ylabel("learning rate")
        axes[2].set_xlabel("epoch")
        fig.tight_layout()
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, dpi=80, format="png")
        plt.close(fig)
