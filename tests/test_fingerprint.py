"""Dataset fingerprint: per-case statistics, host organs, caching, parallel == serial."""
from __future__ import annotations

import os

import numpy as np
import pytest

import autoseg.fingerprint as fpmod
from autoseg.datasets import RawDataset
from autoseg.fingerprint import compute_fingerprint, fingerprint_case, summarize
from autoseg.io import read_image
from test_preprocessing_pipeline import make_tiny_dataset


@pytest.fixture
def ds(tmp_path):
    return RawDataset.load(make_tiny_dataset(tmp_path / "raw", n=3))


def test_case_statistics_match_the_arrays(ds):
    case = ds.cases[0]
    rec, sample = fingerprint_case(case.case_id, case.images[0], case.label, [0, 1, 2, 3], [3])
    img, geo = read_image(case.images[0])
    lab, _ = read_image(case.label)
    assert rec["spacing"] == [2.5, 1.0, 1.0] and rec["shape"] == [24, 48, 48]
    counts = np.bincount(lab.ravel(), minlength=4)
    for v in (1, 2, 3):
        assert rec["label_voxels"][str(v)] == counts[v]
        assert rec["label_volume_mm3"][str(v)] == pytest.approx(counts[v] * 2.5)
        zz, yy, xx = np.nonzero(lab == v)
        assert rec["label_bbox"][str(v)] == [[zz.min(), zz.max() + 1], [yy.min(), yy.max() + 1], [xx.min(), xx.max() + 1]]
    # body crop excludes the air around the phantom but keeps every label
    body = rec["body_bbox"]
    assert rec["cropped_shape"] == [hi - lo for lo, hi in body]
    assert np.prod(rec["cropped_shape"]) < np.prod(rec["shape"])
    for b in rec["label_bbox"].values():
        assert all(blo >= lo and bhi <= hi for (blo, bhi), (lo, hi) in zip(b, body))
    assert rec["tumour_hosts"]["3"].keys() == {"1"}  # the tumour sits in the liver only
    assert len(rec["tumour_components_mm"]["3"]) == 1
    fg = img[lab > 0]
    assert sample.size == min(10_000, fg.size)
    assert set(np.unique(sample)) <= set(np.unique(fg).astype(np.float32))
    reach = rec["fg_reach_mm"]
    assert set(reach) == {str(t) for t in fpmod.AREA_THRESHOLDS_MM2}
    assert all(r >= 0 for v in reach.values() for r in v)
    assert reach["1600"] >= reach["10"]  # bigger area threshold: thin tails reach further


def test_dataset_summary_and_cache(ds, tmp_path, monkeypatch):
    out = tmp_path / "fp.json"
    fp = compute_fingerprint(ds, out, num_workers=1, progress=False)
    d = fp["dataset"]
    assert d["num_cases"] == 3 and d["spacing_median"] == [2.5, 1.0, 1.0]
    assert d["host_organs"] == {"3": [1]}
    inten = d["intensity"]
    assert inten["p00_5"] < inten["p50"] < inten["p99_5"]
    assert 20 <= inten["p50"] <= 70
    assert d["labels"]["3"]["cases"] == 3
    # unchanged files: the cached fingerprint is reused without reading a single case
    monkeypatch.setattr(fpmod, "fingerprint_case", lambda *a, **k: pytest.fail("recomputed"))
    assert compute_fingerprint(ds, out, num_workers=1, progress=False)["cache_key"] == fp["cache_key"]
    monkeypatch.undo()
    st = ds.cases[1].label.stat()
    os.utime(ds.cases[1].label, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fp2 = compute_fingerprint(ds, out, num_workers=1, progress=False)
    assert fp2["cache_key"] != fp["cache_key"]
    out.write_text("{ truncated")  # a damaged cache is recomputed, not an error
    assert compute_fingerprint(ds, out, num_workers=1, progress=False)["cache_key"] == fp2["cache_key"]


def test_parallel_equals_serial(ds):
    a = compute_fingerprint(ds, None, num_workers=1, progress=False)
    b = compute_fingerprint(ds, None, num_workers=2, progress=False)
    assert a["cases"] == b["cases"] and a["dataset"] == b["dataset"]


def test_summarize_host_rule_ignores_rare_contacts():
    base = {"spacing": [1, 1, 1], "shape": [10, 10, 10], "cropped_shape": [10, 10, 10]}
    cases = [dict(base, case_id=f"c{i}", tumour_hosts={"9": {"1": 50, "2": 5 if i % 2 else 60 * (i < 4)}},
                  tumour_components_mm={"9": [[5.0, 6.0, 7.0]]}) for i in range(20)]
    s = summarize(cases, np.zeros(0), {"background": 0, "liver": 1, "kidney": 2, "tumour": 9}, [9])
    assert s["host_organs"] == {"9": [1, 2]}  # kidney is the main host in 2 of 20 cases (10%)
    cases[2]["tumour_hosts"]["9"]["2"] = 0
    s = summarize(cases, np.zeros(0), {"background": 0, "liver": 1, "kidney": 2, "tumour": 9}, [9])
    assert s["host_organs"] == {"9": [1]}  # brushing against an organ does not make it a host
    assert s["tumour_component_extent_mm_median"]["9"] == [5.0, 6.0, 7.0]
    assert "intensity" not in s
