"""NetworkSlot.step: a step with non-finite gradients is skipped (weights kept); a run of them stops training."""
from __future__ import annotations

import pytest
import torch

from autoseg import AutosegError
from autoseg.trainers.networks_state import NetworkSlot


def slot() -> NetworkSlot:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    return NetworkSlot("main", net, optimizer=torch.optim.AdamW(net.parameters(), lr=0.1))


def test_nonfinite_step_is_skipped_and_a_finite_one_resets_the_count():
    s, x = slot(), torch.randn(4, 3)
    before = [p.detach().clone() for p in s.network.parameters()]
    s.step(s.network(x).sum() * float("nan"), 12.0)
    assert s.nonfinite_streak == 1
    assert all(torch.equal(b, p) for b, p in zip(before, s.network.parameters()))  # weights untouched
    assert all(p.grad is None for p in s.network.parameters())
    s.step(s.network(x).sum(), 12.0)
    assert s.nonfinite_streak == 0
    assert not all(torch.equal(b, p) for b, p in zip(before, s.network.parameters()))
    assert all(torch.isfinite(p).all() for p in s.network.parameters())


def test_a_run_of_nonfinite_steps_stops_training_with_one_line():
    s, x = slot(), torch.randn(4, 3)
    for _ in range(s.max_nonfinite_steps - 1):
        s.step(s.network(x).sum() * float("inf"), 12.0)
    with pytest.raises(AutosegError, match=r"network 'main': 20 training steps in a row had non-finite gradients"):
        s.step(s.network(x).sum() * float("inf"), 12.0)
    assert all(torch.isfinite(p).all() for p in s.network.parameters())
