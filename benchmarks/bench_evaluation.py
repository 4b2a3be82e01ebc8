"""Time ``compute_metrics`` on one full-resolution abdominal case: 512x512x200, 13 organs, one core.

The issue's budget is 5 s per case on one core. The phantom places 13 ellipsoidal organs of
realistic size (liver ~1.9 L, aorta and IVC spanning ~35 cm) at 0.8 x 0.8 x 2.5 mm; the prediction
is every organ shifted by a few mm and shrunk by 3 %, so every class has real surface distances.

    python benchmarks/bench_evaluation.py [--repeats 3] [--check-edt]

``--check-edt`` also scores the case with distance transforms of each class box (the reference
method's way) and checks that both give identical numbers.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPE = (200, 512, 512)
SPACING = (2.5, 0.8, 0.8)
# name: (centre z, y, x in mm, semi-axes z, y, x in mm)
ORGANS = {
    "liver": ((250, 200, 130), (75, 80, 80)),
    "spleen": ((270, 230, 330), (55, 45, 35)),
    "kidney_right": ((200, 280, 150), (55, 30, 30)),
    "kidney_left": ((200, 280, 280), (55, 30, 30)),
    "pancreas": ((240, 230, 220), (22, 20, 65)),
    "aorta": ((250, 260, 210), (170, 12, 12)),
    "inferior_vena_cava": ((250, 250, 175), (160, 11, 11)),
    "adrenal_right": ((270, 250, 150), (15, 6, 18)),
    "adrenal_left": ((270, 250, 270), (15, 6, 18)),
    "gallbladder": ((230, 140, 140), (35, 18, 18)),
    "esophagus": ((400, 250, 225), (60, 9, 9)),
    "stomach": ((300, 170, 290), (55, 50, 70)),
    "duodenum": ((210, 220, 180), (28, 22, 45)),
}


def _paint(arr: np.ndarray, value: int, centre, semi, shift=(0.0, 0.0, 0.0), scale=1.0) -> None:
    c = np.add(centre, shift)
    r = np.multiply(semi, scale)
    box = tuple(slice(max(0, int((ci - ri) / s) - 1), min(n, int((ci + ri) / s) + 2))
                for ci, ri, s, n in zip(c, r, SPACING, SHAPE))
    z, y, x = np.meshgrid(*[np.arange(b.start, b.stop) * s for b, s in zip(box, SPACING)], indexing="ij", sparse=True)
    inside = ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1
    arr[box][inside] = value


def make_case() -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    gt, pred = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    labels = {}
    for i, (name, (centre, semi)) in enumerate(ORGANS.items(), 1):
        labels[name] = i
        _paint(gt, i, centre, semi)
        _paint(pred, i, centre, semi, shift=(2.0, 1.5, -1.0), scale=0.97)
    return gt, pred, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--check-edt", action="store_true")
    args = ap.parse_args()

    from autoseg.evaluation import metrics, surface

    gt, pred, labels = make_case()
    surface.surfel_area_table(SPACING)  # the 256-entry table is built once per process
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        res = metrics.compute_metrics(gt, pred, SPACING, labels, "flare22")
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    metrics._bounding_boxes(gt, len(labels))
    bbox_s = time.perf_counter() - t0
    report = {"shape": SHAPE, "spacing": SPACING, "classes": len(labels), "threads": 1,
              "seconds_median": round(float(np.median(times)), 3), "seconds_all": [round(t, 3) for t in times],
              "bbox_pass_one_map_s": round(bbox_s, 3), "budget_s": 5.0,
              "load_average_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
              "gt_volumes_ml": {n: round(res[v]["volume_gt_mm3"] / 1000, 1) for n, v in labels.items()},
              "mean_dsc": round(float(np.mean([r["dsc"] for r in res.values()])), 4),
              "mean_nsd": round(float(np.mean([r["nsd"] for r in res.values()])), 4)}
    if args.check_edt:
        original = surface.nearest_distances

        def edt_only(*a, **k):
            k["method"] = "edt"
            return original(*a, **k)

        surface.nearest_distances = edt_only
        t0 = time.perf_counter()
        ref = metrics.compute_metrics(gt, pred, SPACING, labels, "flare22")
        report["edt_path_s"] = round(time.perf_counter() - t0, 3)
        surface.nearest_distances = original
        report["edt_path_identical"] = ref == res
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
