"""Reading + preparing the next case and writing the last one in threads changes no output nor order."""
import numpy as np
import pytest

from autoseg.inference import io_threads
from autoseg.inference.io_threads import BackgroundWriter, list_cases, prefetch
from autoseg.inference.predictor import CascadePredictor
from autoseg.inference.random_models import tiny_plans, write_random_checkpoints
from autoseg.io import Geometry, read_image, write_image


def _case(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((16, 48, 64), -1000, np.int32)  # int32 HU: the reader thread converts it to int16
    img[:, 8:40, 6:50 + seed] = rng.integers(-100, 200, size=(16, 32, 44 + seed))
    return img


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("cases")
    geom = Geometry((2.5, 2.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (16, 48, 64))
    for i in range(3):
        write_image(_case(i), geom, d / f"c{i}_0000.nii.gz")
    return d


def test_prefetch_in_line_and_threaded_yield_the_same(folder):
    cases, _ = list_cases(folder)
    seen = {True: [], False: []}
    for bg in (True, False):
        for case, (arr, geom, prepared), times in prefetch(cases, prepare=lambda a: a.dtype.str, background=bg):
            seen[bg].append((case.name, arr.sum(), prepared))
            assert set(times) == {"read", "prepare"} and min(times.values()) >= 0
    assert seen[True] == seen[False] and [s[0] for s in seen[True]] == ["c0", "c1", "c2"]


def test_writer_in_line_reports_like_the_thread():
    for bg in (True, False):
        done = []
        w = BackgroundWriter(on_done=lambda n, s, e: done.append((n, e)), background=bg)
        w.submit("a", lambda: None)
        w.submit("b", lambda: 1 / 0)
        w.close()
        assert done == [("a", None), ("b", "division by zero")]
        assert w.failures == [("b", "write failed: division by zero")]


def test_overlap_on_and_off_write_the_same_masks_in_the_same_order(folder, tmp_path, monkeypatch):
    ckpts = write_random_checkpoints(tiny_plans(stages=("organ",)), tmp_path / "models")
    prepared_in = []
    real = io_threads.read_case

    def spy(case, prepare=None):
        item, times = real(case, prepare)
        prepared_in.append(item[2] is not None)
        return item, times
    monkeypatch.setattr(io_threads, "read_case", spy)
    masks, orders = {}, {}
    for overlap in (True, False):
        pred = CascadePredictor(ckpts, device="cpu", precision="fp32")
        pred.overlap_io = overlap
        out = tmp_path / f"out_{overlap}"
        assert pred.predict_folder(folder, out, profile=True) == []
        orders[overlap] = list(pred.written)
        masks[overlap] = {p.name: read_image(p)[0] for p in sorted(out.glob("*.nii.gz"))}
        assert all(s["prepare"] >= 0 and s["read"] > 0 for s in pred.profiles.values())
    assert orders[True] == orders[False] == ["c0", "c1", "c2"]
    assert masks[True].keys() == masks[False].keys() and len(masks[True]) == 3
    for name, m in masks[True].items():
        assert np.array_equal(m, masks[False][name])
    assert prepared_in == [True] * 6  # the body crop and upload dtype were made where the case was read
