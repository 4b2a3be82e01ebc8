import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "totalseg"


@pytest.fixture(autouse=True)
def _isolated_paths(tmp_path, monkeypatch):
    """Keep every test away from the user's real AUTOSEG_* / nnUNet_* folders."""
    for var in ("AUTOSEG_RAW", "AUTOSEG_PREPROCESSED", "AUTOSEG_RESULTS", "nnUNet_raw",
                "AUTOSEG_TRAINER_PATH", "AUTOSEG_PLANNER_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    monkeypatch.setenv("AUTOSEG_ENGINE_CACHE", str(tmp_path / "engine-cache"))  # compiled-engine decisions
    # In-process tests run plain PyTorch: a test process that had loaded OpenVINO/ONNX Runtime segfaulted when
    # it trained later (2026-12-02). The engines are tested in test_zz_compiled_engines.py, last.
    monkeypatch.setenv("AUTOSEG_ENGINE", "eager")
    yield


@pytest.fixture
def totalseg():
    if not SHARED.is_dir():
        pytest.skip("../shared/data/totalseg is absent")
    return SHARED
