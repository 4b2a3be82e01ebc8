"""ExperimentPlanner on synthetic fingerprints: spacing rules, stages, patch/topology/memory fit."""
from __future__ import annotations

import math

import numpy as np
import pytest

from autoseg import AutosegError
from autoseg.fingerprint import summarize
from autoseg.plans import validate_plans
from autoseg.planners import ExperimentPlanner, find_planner
from autoseg.planners.memory import GIB, estimate_training_bytes
from autoseg.planners.topology import get_topology, total_stride

ORGANS = {"background": 0, "liver": 1, "spleen": 2, "kidney": 3}


def _box(shape, frac_lo, frac_hi):
    return [[int(n * a), max(int(n * a) + 1, int(n * b))] for n, a, b in zip(shape, frac_lo, frac_hi)]


def synthetic_fingerprint(spacing=(1.0, 1.0, 1.0), shape=(200, 256, 256), n_cases=10, labels=None,
                          tumour_labels=(), tumour_mm=(20.0, 20.0, 20.0), host=1, seed=0) -> dict:
    """Fingerprint records as autoseg.fingerprint writes them, without any image."""
    labels = dict(labels or ORGANS)
    rng = np.random.default_rng(seed)
    organ_vals = [v for v in labels.values() if v and v not in tumour_labels]
    cases = []
    for i in range(n_cases):
        jit = rng.uniform(0.9, 1.1)
        shp = [max(4, int(s * jit)) for s in shape]
        body = _box(shp, (0.0, 0.1, 0.1), (1.0, 0.9, 0.9))
        boxes = {}
        for k, v in enumerate(organ_vals):
            lo = (0.2 + 0.05 * k, 0.25 + 0.05 * k, 0.2 + 0.1 * k)
            boxes[v] = _box(shp, lo, (lo[0] + 0.4, lo[1] + 0.3, lo[2] + 0.25))
        comps, hosts = {}, {}
        for t in tumour_labels:
            hb = boxes[host]
            c = [(a + b) // 2 for a, b in hb]
            half = [max(1, int(round(m / s / 2))) for m, s in zip(tumour_mm, spacing)]
            boxes[t] = [[ci - h, ci + h] for ci, h in zip(c, half)]
            comps[str(t)] = [list(tumour_mm)]
            hosts[str(t)] = {str(host): 100}
        fg = [[min(b[a][0] for b in boxes.values()), max(b[a][1] for b in boxes.values())] for a in range(3)]
        vox = float(np.prod(spacing))
        ext = {str(v): [(hi - lo) * s for (lo, hi), s in zip(b, spacing)] for v, b in boxes.items()}
        cases.append({
            "case_id": f"c{i}", "spacing": list(spacing), "shape": shp, "body_bbox": body,
            "cropped_shape": [hi - lo for lo, hi in body], "fg_bbox": fg,
            "label_voxels": {k: int(np.prod([hi - lo for lo, hi in b])) for k, b in
                             ((str(v), b) for v, b in boxes.items())},
            "label_volume_mm3": {str(v): float(np.prod([hi - lo for lo, hi in b])) * vox for v, b in boxes.items()},
            "label_bbox": {str(v): b for v, b in boxes.items()}, "label_extent_mm": ext,
            "fg_reach_mm": {str(t): [2.0 * spacing[0], 2.0 * spacing[1], 2.0 * spacing[2]]
                            for t in (10, 25, 50, 100, 200, 400, 800, 1600)},
            "tumour_components_mm": comps, "tumour_hosts": hosts,
        })
    samples = rng.normal(60, 40, 5000).astype(np.float32)
    return {"dataset_name": "Dataset999_Synth", "labels": labels, "tumour_labels": list(tumour_labels),
            "channel_names": {"0": "CT"}, "cases": cases,
            "dataset": summarize(cases, samples, labels, list(tumour_labels))}


def _check_stage(plans, stage, budget_gb):
    st = plans["stages"][stage]
    stride = total_stride(st["network"]["strides"])
    assert all(p % s == 0 for p, s in zip(st["patch_size"], stride))
    est = estimate_training_bytes(st["network"], st["patch_size"], st["batch_size"], 1,
                                  2 if st["classes"] == "foreground" else len(st["classes"]) + 1)
    assert est <= budget_gb * GIB
    assert st["network"]["features"][0] in (16, 32) and max(st["network"]["features"]) <= 320
    return st


@pytest.mark.parametrize("budget", [4.0, 8.0, 16.0])
def test_isotropic_ct_with_tumour(budget):
    fp = synthetic_fingerprint((0.8, 0.8, 0.8), (400, 512, 512), labels={**ORGANS, "liver_tumour": 7},
                               tumour_labels=(7,), tumour_mm=(15.0, 15.0, 15.0))
    plans = validate_plans(ExperimentPlanner(fp, gpu_memory_gb=budget).plan())
    assert list(plans["stages"]) == ["roi", "organ", "tumour"]
    organ = _check_stage(plans, "organ", budget)
    roi = _check_stage(plans, "roi", budget)
    tum = _check_stage(plans, "tumour", budget)
    assert organ["target_spacing"] == [2.5, 1.6, 1.6]  # the floor for fast inference
    assert organ["classes"] == [1, 2, 3] and organ["input"]["crop"] == "roi"
    assert all(r >= o for r, o in zip(roi["target_spacing"], organ["target_spacing"]))
    assert all(p <= 128 for p in roi["patch_size"]) and roi["network"]["features"][0] == 16
    # small tumours: finer than the organ stage, but never finer than the data
    assert all(0.8 <= t <= o for t, o in zip(tum["target_spacing"], organ["target_spacing"]))
    assert tum["target_spacing"][1] < organ["target_spacing"][1]
    assert tum["input"]["labels"] == [1] and tum["classes"] == [7] and tum["input"]["crop"] == "organ"
    assert all(m > 0 for m in tum["input"]["margin_mm"]) and all(m > 0 for m in organ["input"]["margin_mm"])
    assert roi["input"] == {"crop": "body"}
    assert "why" in organ and "target_spacing" in organ["why"]


def test_thick_slice_not_upsampled_and_anisotropic_kernels():
    fp = synthetic_fingerprint((5.0, 0.8, 0.8), (60, 512, 512))
    plans = ExperimentPlanner(fp).plan()
    organ = _check_stage(plans, "organ", 8)
    assert organ["target_spacing"][0] == 5.0  # z kept, not upsampled
    net = organ["network"]
    assert net["kernel_sizes"][0] == [1, 3, 3] and net["strides"][1][0] == 1  # z not pooled first
    assert "thick-slice" in organ["why"]["target_spacing"]
    med_z = organ["median_shape"][0]
    assert organ["patch_size"][0] <= math.ceil(med_z / 4) * 4 + 4


def test_memory_budget_shrinks_patch_and_is_respected():
    fp = synthetic_fingerprint((1.0, 0.7, 0.7), (500, 512, 512))
    sizes = {}
    for b in (3.0, 8.0, 24.0):
        plans = ExperimentPlanner(fp, gpu_memory_gb=b).plan()
        st = _check_stage(plans, "organ", b)
        sizes[b] = math.prod(st["patch_size"]) * st["batch_size"]
    assert sizes[3.0] < sizes[8.0] <= sizes[24.0]
    with pytest.raises(AutosegError, match="gpu-memory-gb"):
        ExperimentPlanner(fp, gpu_memory_gb=0.5).plan()


def test_tiny_images():
    fp = synthetic_fingerprint((2.0, 2.0, 2.0), (12, 20, 20), n_cases=3)
    plans = validate_plans(ExperimentPlanner(fp).plan())
    for stage in plans["stages"]:
        st = _check_stage(plans, stage, 8)
        assert len(st["network"]["features"]) <= 3
        assert all(p <= m + 8 for p, m in zip(st["patch_size"], st["median_shape"]))


def test_huge_images():
    fp = synthetic_fingerprint((0.5, 0.5, 0.5), (1200, 1024, 1024), n_cases=4)
    plans = ExperimentPlanner(fp).plan()
    roi = _check_stage(plans, "roi", 8)
    organ = _check_stage(plans, "organ", 8)
    assert all(p <= 128 for p in roi["patch_size"])
    assert len(organ["network"]["features"]) == 6
    full = ExperimentPlanner(fp, target_spacing=[0.5, 0.5, 0.5]).plan()
    organ = _check_stage(full, "organ", 8)
    assert all(p < m for p, m in zip(organ["patch_size"], organ["median_shape"]))


def test_one_organ_without_tumour_skips_roi_and_tumour():
    fp = synthetic_fingerprint(labels={"background": 0, "liver": 1})
    plans = ExperimentPlanner(fp).plan()
    assert list(plans["stages"]) == ["organ"]
    assert plans["stages"]["organ"]["input"] == {"crop": "body"}
    assert "single organ" in plans["why"]["stages"] and "no tumour" in plans["why"]["stages"]


def test_one_organ_with_tumour():
    fp = synthetic_fingerprint(labels={"background": 0, "liver": 1, "lesion": 2}, tumour_labels=(2,))
    plans = ExperimentPlanner(fp).plan()
    assert list(plans["stages"]) == ["organ", "tumour"]
    assert plans["stages"]["tumour"]["input"]["labels"] == [1]


def test_overrides_target_spacing_and_stages():
    fp = synthetic_fingerprint((1.0, 0.8, 0.8), labels={**ORGANS, "tumor": 9}, tumour_labels=(9,))
    plans = ExperimentPlanner(fp, target_spacing=[3.0, 1.2, 1.2], stages=["organ", "tumour"]).plan()
    assert list(plans["stages"]) == ["organ", "tumour"]
    assert plans["stages"]["organ"]["target_spacing"] == [3.0, 1.2, 1.2]
    assert plans["stages"]["organ"]["input"] == {"crop": "body"}
    with pytest.raises(AutosegError, match="stages"):
        ExperimentPlanner(synthetic_fingerprint(), stages=["tumour"]).plan()
    with pytest.raises(AutosegError, match="unknown stage"):
        ExperimentPlanner(fp, stages=["lesion"])


def test_topology_rules():
    net, patch = get_topology([5.0, 0.8, 0.8], [20, 200, 200])
    assert net["strides"][0] == [1, 1, 1]
    assert all(p % s == 0 for p, s in zip(patch, total_stride(net["strides"])))
    sizes = np.array(patch, float)
    for s in net["strides"][1:]:
        sizes = sizes / np.array(s)
    assert (sizes >= 4).all()  # pooling stops at feature-map size 4
    assert net["features"] == [min(32 * 2 ** i, 320) for i in range(len(net["features"]))]


def test_find_planner_registry(tmp_path, monkeypatch):
    assert find_planner("ExperimentPlanner") is ExperimentPlanner
    folder = tmp_path / "myplanners"
    folder.mkdir()
    (folder / "fine.py").write_text(
        "from autoseg.planners import ExperimentPlanner\n"
        "class FinePlanner(ExperimentPlanner):\n"
        "    organ_spacing_floor_mm = (1.0, 1.0, 1.0)\n")
    cls = find_planner("FinePlanner", [str(folder)])
    plans = cls(synthetic_fingerprint((1.0, 0.8, 0.8))).plan()
    assert plans["planner"] == "FinePlanner"
    assert plans["stages"]["organ"]["target_spacing"] == [1.0, 1.0, 1.0]
    monkeypatch.setenv("AUTOSEG_PLANNER_PATH", str(folder))
    assert find_planner("FinePlanner").__name__ == "FinePlanner"
    with pytest.raises(AutosegError, match="known: .*ExperimentPlanner"):
        find_planner("NoSuchPlanner")


def test_refinement_planned_for_pancreas_and_small_organs():
    labels = {**ORGANS, "pancreas": 4}
    fp = synthetic_fingerprint(labels=labels)
    plans = validate_plans(ExperimentPlanner(fp).plan())
    ref = plans["stages"]["refine_pancreas"]
    assert list(plans["stages"])[-1] == "refine_pancreas" and ref["classes"] == [4]
    assert ref["input"]["crop"] == "organ" and ref["input"]["saliency"] == {"stage": "organ", "classes": [4]}
    assert ref["refine"]["max_rounds"] >= 2 and "30000 mm3" in ref["why"]["input"]
    # a small organ by median volume (threshold recorded in why), capped by refine_max_stages
    fp["dataset"]["labels"] = {"3": {"volume_mm3_median": 8000.0}, "1": {"volume_mm3_median": 1.5e6}}

    class Two(ExperimentPlanner):
        refine_max_stages = 2

    plans = validate_plans(Two(fp).plan())
    assert [s for s in plans["stages"] if s.startswith("refine_")] == ["refine_pancreas", "refine_kidney"]
    assert "refine_pancreas" not in ExperimentPlanner(synthetic_fingerprint()).plan()["stages"]
