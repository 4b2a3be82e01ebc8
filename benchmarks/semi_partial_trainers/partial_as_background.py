"""The control arm of the partial-label benchmark: unannotated organs trained as background."""
from __future__ import annotations

from typing import Any

import torch

from autoseg.trainers.fast import TrainerFast


class TrainerFastPartialAsBackground(TrainerFast):
    """Plain Dice+CE on partially labelled cases, as if every unannotated organ were background."""

    def annotated_classes(self, batch: dict[str, Any]) -> torch.Tensor | None:
        return None
