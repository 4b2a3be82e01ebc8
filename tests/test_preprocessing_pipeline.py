"""End-to-end plan_and_preprocess on a tiny synthetic dataset: outputs, contracts, resume, corruption.

``make_tiny_dataset`` is shared with tests/test_fingerprint.py (imported by module name).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from autoseg import AutosegError
from autoseg.io import Geometry, write_image
from autoseg.plans import load_plans, stage_classes
from autoseg.preprocessing import is_valid, load_case

REPO = Path(__file__).resolve().parents[1]
LABELS = {"background": 0, "liver": 1, "spleen": 2, "liver_tumour": 3}


def _ellipsoid(shape, centre, radii, spacing) -> np.ndarray:
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    d = sum(((g - c) * s / r) ** 2 for g, c, r, s in zip((zz, yy, xx), centre, radii, spacing))
    return d <= 1.0


def make_case(shape=(24, 48, 48), spacing=(2.5, 1.0, 1.0), seed=0, tumour=True):
    rng = np.random.default_rng(seed)
    img = np.full(shape, -1000, np.int16)
    lab = np.zeros(shape, np.uint8)
    z, y, x = shape
    body = _ellipsoid(shape, (z / 2, y / 2, x / 2), (z * spacing[0], 0.42 * y * spacing[1], 0.45 * x * spacing[2]),
                      spacing)
    img[body] = 0
    off = rng.integers(-2, 3, size=3)
    liver = _ellipsoid(shape, (z / 2 + off[0], y / 2 + off[1], x * 0.35 + off[2]), (18, 10, 9), spacing)
    spleen = _ellipsoid(shape, (z / 2, y / 2 - off[1], x * 0.7), (10, 6, 5), spacing)
    img[liver], lab[liver] = 60, 1
    img[spleen], lab[spleen] = 45, 2
    if tumour:
        tum = _ellipsoid(shape, (z / 2 + off[0], y / 2 + off[1] + 2, x * 0.35 + off[2]), (5, 3, 3), spacing) & liver
        img[tum], lab[tum] = 20, 3
    img = (img + rng.normal(0, 8, shape) * body).astype(np.int16)
    geo = Geometry(tuple(float(s) for s in spacing), (10.0, -5.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), shape)
    return img, lab, geo


def make_tiny_dataset(root: Path, n: int = 3, dataset_id: int = 990, tumour: bool = True,
                      labels: dict | None = None, **kw) -> Path:
    folder = root / f"Dataset{dataset_id}_Tiny"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for i in range(n):
        img, lab, geo = make_case(seed=i, tumour=tumour, **kw)
        write_image(img, geo, folder / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        write_image(lab, geo, folder / "labelsTr" / f"case_{i:03d}.nii.gz")
    lbl = labels or (LABELS if tumour else {k: v for k, v in LABELS.items() if v != 3})
    dj = {"channel_names": {"0": "CT"}, "labels": lbl, "numTraining": n, "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(dj))
    return folder


@pytest.fixture
def tiny(tmp_path):
    raw = tmp_path / "raw"
    make_tiny_dataset(raw)
    return raw, tmp_path / "pre"


def _mtimes(folder: Path) -> dict:
    return {f"{p.parent.name}/{p.name}": p.stat().st_mtime_ns for p in folder.glob("*/*.npz")}


def test_plan_and_preprocess_writes_contract_outputs(tiny):
    from autoseg.planners import plan_and_preprocess

    raw, pre = tiny
    out = plan_and_preprocess(990, raw=raw, preprocessed=pre, num_workers=1, progress=False)
    plans = load_plans(out / "plans.json")
    assert set(plans["stages"]) == {"roi", "organ", "tumour"}
    assert (out / "dataset_fingerprint.json").is_file()
    for stage in plans["stages"]:
        for i in range(3):
            data, seg, meta = load_case(out, stage, f"case_{i:03d}")
            assert data.dtype == np.float16 and seg.dtype == np.int8
            assert data.shape[1:] == seg.shape[1:] == tuple(meta["shape"])
            n_cls = len(stage_classes(plans, stage))
            assert set(np.unique(seg)) <= set(range(0, n_cls + 1))
            for c, locs in meta["class_locations"].items():
                for z, y, x in locs[:20]:
                    assert seg[0, z, y, x] == int(c)
            assert meta["spacing"] == plans["stages"][stage]["target_spacing"]
            assert Geometry.from_dict(meta["original_geometry"]).shape == (24, 48, 48)
    # the tumour crop is around the liver (host), so it is smaller than the organ crop
    _, _, m_org = load_case(out, "organ", "case_000")
    _, seg_t, m_tum = load_case(out, "tumour", "case_000")
    assert plans["stages"]["tumour"]["input"]["labels"] == [1]
    assert (seg_t == 1).any()
    size = lambda b: np.prod([hi - lo for lo, hi in b])  # noqa: E731
    assert size(m_tum["crop_bbox"]) <= size(m_org["crop_bbox"])
    # organ stage: tumour voxels were given to the liver, so no holes and no tumour class
    _, seg_o, _ = load_case(out, "organ", "case_000")
    assert set(np.unique(seg_o)) == {0, 1, 2}


def test_rerun_skips_valid_and_redoes_corrupt(tiny):
    from autoseg.planners import plan_and_preprocess

    raw, pre = tiny
    out = plan_and_preprocess(990, raw=raw, preprocessed=pre, num_workers=1, progress=False)
    before = _mtimes(out)
    bad = out / "organ" / "case_001.npz"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # truncated, as by a full disk
    (out / "tumour" / "case_002.json").unlink()
    (out / "roi" / ".case_000.npz.abc123.npz").write_bytes(b"partial")  # temp file of a killed run
    time.sleep(0.01)
    plan_and_preprocess(990, raw=raw, preprocessed=pre, num_workers=1, progress=False)
    after = _mtimes(out)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"organ/case_001.npz", "tumour/case_002.npz"}
    assert is_valid(out, "organ", "case_001") and is_valid(out, "tumour", "case_002")
    assert not (out / "roi" / ".case_000.npz.abc123.npz").exists()


def test_hand_edited_plans_are_respected_and_invalidate_cache(tiny):
    from autoseg.planners import plan_and_preprocess

    raw, pre = tiny
    out = plan_and_preprocess(990, raw=raw, preprocessed=pre, num_workers=1, progress=False, stages=["organ"])
    plans = json.loads((out / "plans.json").read_text())
    assert list(plans["stages"]) == ["organ"] and plans["stages"]["organ"]["input"] == {"crop": "body"}
    plans["stages"]["organ"]["target_spacing"] = [5.0, 2.0, 2.0]
    (out / "plans.json").write_text(json.dumps(plans))
    plan_and_preprocess(990, raw=raw, preprocessed=pre, num_workers=1, progress=False)
    _, _, meta = load_case(out, "organ", "case_000")
    assert meta["spacing"] == [5.0, 2.0, 2.0] and meta["shape"][0] == 12
    plan_and_preprocess(990, raw=raw, preprocessed=pre, num_workers=1, progress=False, overwrite_plans=True,
                        target_spacing=[2.5, 1.5, 1.5])
    assert load_plans(out / "plans.json")["stages"]["organ"]["target_spacing"] == [2.5, 1.5, 1.5]


def test_integrity_problems_abort_with_all_listed(tiny):
    from autoseg.planners import plan_and_preprocess

    raw, pre = tiny
    folder = raw / "Dataset990_Tiny"
    (folder / "labelsTr" / "case_001.nii.gz").unlink()
    (folder / "imagesTr" / "case_002_0000.nii.gz").write_bytes(b"not an image")
    with pytest.raises(AutosegError) as e:
        plan_and_preprocess(990, raw=raw, preprocessed=pre, num_workers=1, progress=False)
    assert "case_001" in str(e.value) and "case_002" in str(e.value)


def test_resume_after_killed_run(tmp_path):
    """Kill a real preprocessing run after its first case, rerun, and check every case ends valid
    while the cases finished before the kill are not redone."""
    raw, pre, n = tmp_path / "raw", tmp_path / "pre", 10  # enough cases that a fast CPU is still mid-run at the kill
    make_tiny_dataset(raw, n=n, shape=(32, 56, 56))
    code = ("import sys; from autoseg.planners import plan_and_preprocess; "
            f"plan_and_preprocess(990, raw={str(raw)!r}, preprocessed={str(pre)!r}, num_workers=1, progress=False)")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env)
    stage_dir = pre / "Dataset990_Tiny" / "organ"
    deadline = time.time() + 60

    def done_cases() -> list[Path]:  # not the hidden temp files (.CASE.json.xxxx.json) of a write in flight
        return [p for p in stage_dir.glob("*.json") if not p.name.startswith(".")]

    while time.time() < deadline and proc.poll() is None and not done_cases():
        time.sleep(0.005)
    assert proc.poll() is None, "preprocessing ended before it could be killed: the test would prove nothing"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    out = pre / "Dataset990_Tiny"
    finished = {p.stem: p.stat().st_mtime_ns for p in done_cases()}
    assert 1 <= len(finished) < n, f"the kill must fall between cases, {len(finished)} of {n} were done"
    from autoseg.planners import plan_and_preprocess

    plan_and_preprocess(990, raw=raw, preprocessed=pre, num_workers=2, progress=False)
    for i in range(n):
        for stage in ("roi", "organ", "tumour"):
            assert is_valid(out, stage, f"case_{i:03d}")
    for cid, mt in finished.items():
        assert (stage_dir / f"{cid}.json").stat().st_mtime_ns == mt
    assert not [p for p in out.rglob(".*") if p.is_file()]
