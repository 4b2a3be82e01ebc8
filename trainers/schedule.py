"""Learning-rate schedules."""
from __future__ import annotations

import torch


class PolyLR(torch.optim.lr_scheduler.LRScheduler):
    """lr = initial * (1 - epoch / max_epochs) ** exponent, in closed form so ``max_epochs`` may change
    on resume (``--epochs``) without the schedule jumping."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_epochs: int, exponent: float = 0.9) -> None:
        self.max_epochs, self.exponent = max_epochs, exponent
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        frac = max(0.0, 1.0 - self.last_epoch / max(1, self.max_epochs))
        return [base * frac ** self.exponent for base in self.base_lrs]
