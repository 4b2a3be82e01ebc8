"""The augmentation and crop-helper benchmarks (ours vs batchgeneratorsv2 / acvl-utils) still run and
still agree on results; the figures themselves live in benchmarks/RESULTS_augmentation.md."""
from __future__ import annotations

import pytest


def test_bench_augmentation_runs(capsys):
    from benchmarks.bench_augmentation import main

    assert main(["--patches", "2", "--configs", "small"]) == 0
    assert "spatial ours" in capsys.readouterr().out


def test_bench_crop_utils_runs_and_results_match(capsys):
    pytest.importorskip("acvl_utils")
    from benchmarks.bench_crop_utils import main

    assert main(["--repeats", "1"]) == 0  # asserts ours and acvl-utils give identical boxes and crops
    assert "crop+pad [80, 160, 160] past border" in capsys.readouterr().out
