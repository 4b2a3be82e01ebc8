"""The networks a trainer owns, each with its own optimiser, LR schedule, grad scaler and EMA.

Most trainers own one network (``"main"``); cross pseudo supervision owns two. Everything that must
treat "all the networks" alike lives here, so the trainer's checkpoint, ``--continue``,
``--pretrained`` and DDP code loops over slots instead of hard-coding one network:

- ``NetworkSlot``: one network, its DDP/compiled wrapper (``model``) and its training state.
- ``slots_payload`` / ``load_slots``: the checkpoint's ``networks`` entry (tensors and plain data).
- ``inference_weights``: the state_dict inference uses, from a new multi-network checkpoint (its
  ``inference_network`` key) or an old single-network one (``network_weights``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from autoseg import AutosegError
from autoseg.checkpoints import inference_weights  # noqa: F401  (re-exported: the trainer side's name for it)

MAIN = "main"
log = logging.getLogger(__name__)


@dataclass
class NetworkSlot:
    """One trained network and everything that updates it."""

    name: str
    network: nn.Module
    optimizer: torch.optim.Optimizer | None = None
    lr_scheduler: Any = None
    grad_scaler: torch.amp.GradScaler | None = None
    model: nn.Module | None = None  # what forward passes call: the network, or its DDP/compiled wrapper
    ema: nn.Module | None = None  # an averaged copy, for trainers that keep one
    extra: dict[str, Any] = field(default_factory=dict)
    nonfinite_streak: int = 0  # consecutive steps skipped for a non-finite gradient norm

    # A NaN/inf gradient would make every weight NaN for good and the run would go on writing NaN
    # checkpoints (seen: a oneDNN bf16 conv backward on a 2x2x2 map, RESULTS_networks.md). Such a step is
    # skipped; this many in a row stop training with one line.
    max_nonfinite_steps = 20

    def __post_init__(self) -> None:
        if self.model is None:
            self.model = self.network

    def step(self, loss: torch.Tensor, grad_clip: float) -> None:
        """Backward, clip and step this network (through its own grad scaler when training in fp16)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), grad_clip)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            total = torch.nn.utils.clip_grad_norm_(self.network.parameters(), grad_clip)
            if not torch.isfinite(total):
                self._skip_nonfinite(loss)
                return
            self.optimizer.step()
        self.nonfinite_streak = 0

    def _skip_nonfinite(self, loss: torch.Tensor) -> None:
        """Drop this step's gradients (the weights keep their last finite values); stop after too many."""
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_streak += 1
        if self.nonfinite_streak == 1:
            log.warning("network '%s': non-finite gradients (loss %s); step skipped", self.name, float(loss.detach()))
        if self.nonfinite_streak >= self.max_nonfinite_steps:
            raise AutosegError(f"network '{self.name}': {self.nonfinite_streak} training steps in a row had non-finite "
                               "gradients (loss or a layer overflowed); training stopped with the weights of the last "
                               "finite step. Try --no-amp or a lower learning rate")

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.contiguous() for k, v in self.network.state_dict().items()}

    def state(self) -> dict[str, Any]:
        """Tensors and plain data only (``torch.load(weights_only=True)`` reads it back)."""
        return {"weights": self.weights(),
                "optimizer_state": self.optimizer.state_dict() if self.optimizer is not None else None,
                "lr_scheduler_state": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
                "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
                "ema_weights": self.ema.state_dict() if self.ema is not None else None}

    def load_state(self, state: dict[str, Any], where: str) -> None:
        try:
            self.network.load_state_dict(state["weights"])
            if self.optimizer is not None and state.get("optimizer_state") is not None:
                self.optimizer.load_state_dict(state["optimizer_state"])
            if self.lr_scheduler is not None and state.get("lr_scheduler_state") is not None:
                self.lr_scheduler.load_state_dict(state["lr_scheduler_state"])
            if self.grad_scaler is not None and state.get("grad_scaler_state"):
                self.grad_scaler.load_state_dict(state["grad_scaler_state"])
            if self.ema is not None and state.get("ema_weights") is not None:
                self.ema.load_state_dict(state["ema_weights"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise AutosegError(f"{where}: network '{self.name}' does not fit this trainer "
                               f"({str(e).splitlines()[0][:160]})") from None


def slots_payload(slots: dict[str, NetworkSlot], inference: str) -> dict[str, Any]:
    """Checkpoint entries for every network. ``network_weights`` repeats the inference network's
    tensors (the same storages: torch.save writes them once) so older readers keep working."""
    if inference not in slots:
        raise AutosegError(f"inference network '{inference}' is not one of {list(slots)}")
    states = {name: slot.state() for name, slot in slots.items()}
    main = states[inference]
    return {"networks": states, "inference_network": inference, "network_weights": main["weights"],
            "optimizer_state": main["optimizer_state"], "lr_scheduler_state": main["lr_scheduler_state"],
            "grad_scaler_state": main["grad_scaler_state"]}


def load_slots(slots: dict[str, NetworkSlot], ckpt: dict[str, Any], where: str) -> None:
    """Restore every slot; a single-network checkpoint restores the only (or ``main``) slot."""
    states = ckpt.get("networks")
    if not states:
        states = {MAIN: {"weights": ckpt["network_weights"], "optimizer_state": ckpt.get("optimizer_state"),
                         "lr_scheduler_state": ckpt.get("lr_scheduler_state"),
                         "grad_scaler_state": ckpt.get("grad_scaler_state")}}
        if MAIN not in slots and len(slots) == 1:
            states = {next(iter(slots)): states[MAIN]}
    missing = [n for n in slots if n not in states]
    if missing:
        raise AutosegError(f"{where}: checkpoint has networks {sorted(states)}, this trainer needs {list(slots)}")
    for name, slot in slots.items():
        slot.load_state(states[name], where)
