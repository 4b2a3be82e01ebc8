"""Where the time of one real-sized CT goes on CPU, file to file, with the default CPU plans.

Inputs: the TotalSegmentator example CT resampled to 0.8 x 0.8 x 2.5 mm (457 x 379 x 134 voxels) and a
512 x 512 x 200 phantom. Plans: ``CPUPlanner`` on that phantom. Models: random weights (time does not
depend on them); the ROI and host-organ boxes are those of the labels (TotalSegmentator's own labels for
the real CT), as a trained model would find them, while every network still runs and is timed.

Each input is copied ``--copies`` times into a folder that ``predict_folder`` (what ``run_inference``
runs) predicts, so reading the next case and writing the previous one overlap the network as in use;
``--no-overlap`` reads and writes in line instead. Steady state per case = the median interval between
two consecutive cases' writes finishing. Per stage the profile is split into resampling + normalising
the crop (``resample``), the network's forward passes (``network``) and the rest (pasting, argmax back
to the original grid).

    python benchmarks/bench_breakdown.py inputs --work /tmp/bd
    flock /tmp/autoseg-cpu.lock python benchmarks/bench_breakdown.py run --work /tmp/bd --out bd.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REAL_CT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "totalseg"
TOTALSEG_TO_PHANTOM = {5: 1, 1: 2, 2: 3, 3: 4, 7: 5, 52: 6}  # liver, spleen, kidneys, pancreas, aorta
SPACING_XYZ = (0.8, 0.8, 2.5)


def make_inputs(work: Path) -> None:
    """plans_cpu.json, and per input kind a reference image + labels (the oracle's boxes)."""
    import SimpleITK as sitk

    from autoseg.datasets import RawDataset
    from autoseg.fingerprint import compute_fingerprint
    from autoseg.io import write_image
    from autoseg.planners.cpu_planner import CPUPlanner
    from autoseg.synthetic import LABELS, make_phantom

    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "Dataset990_BenchReal"
        for sub in ("imagesTr", "labelsTr"):
            (root / sub).mkdir(parents=True)
        for i in range(1):
            img, lab, geo = make_phantom(i, "real", shape=(200, 512, 512), spacing=(2.5, 0.8, 0.8))
            write_image(img, geo, root / "imagesTr" / f"case{i:03d}_0000.nii.gz")
            write_image(lab, geo, root / "labelsTr" / f"case{i:03d}.nii.gz")
            if i == 0:
                (work / "phantom512").mkdir(exist_ok=True)
                write_image(img, geo, work / "phantom512" / "image.nii.gz")
                write_image(lab, geo, work / "phantom512" / "labels.nii.gz")
        (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": LABELS,
                                                       "numTraining": 1, "file_ending": ".nii.gz"}))
        fp = compute_fingerprint(RawDataset.load(root), num_workers=1, progress=False)
        (work / "plans_cpu.json").write_text(json.dumps(CPUPlanner(fp).plan(), indent=1))
    ct = sitk.ReadImage(str(REAL_CT / "example_ct.nii.gz"))
    seg = sitk.ReadImage(str(REAL_CT / "example_seg_fast_force_split.nii.gz"))
    size = [int(round(n * s / t)) for n, s, t in zip(ct.GetSize(), ct.GetSpacing(), SPACING_XYZ)]

    def resample(img, interp, pixel):
        return sitk.Resample(img, size, sitk.Transform(), interp, img.GetOrigin(), SPACING_XYZ,
                             img.GetDirection(), -1024 if pixel == sitk.sitkInt16 else 0, pixel)

    seg.CopyInformation(ct)
    (work / "realct").mkdir(exist_ok=True)
    sitk.WriteImage(resample(ct, sitk.sitkLinear, sitk.sitkInt16), str(work / "realct" / "image.nii.gz"), True)
    lab = sitk.GetArrayFromImage(resample(seg, sitk.sitkNearestNeighbor, sitk.sitkUInt8))
    mapped = np.zeros_like(lab)
    for src, dst in TOTALSEG_TO_PHANTOM.items():
        mapped[lab == src] = dst
    out = sitk.GetImageFromArray(mapped)
    out.CopyInformation(resample(seg, sitk.sitkNearestNeighbor, sitk.sitkUInt8))
    sitk.WriteImage(out, str(work / "realct" / "labels.nii.gz"), True)


class Timed:
    """Adds the wall time of each call of ``fn`` to ``store[key]``."""

    def __init__(self, store: dict, key: str):
        self.store, self.key = store, key

    def __call__(self, fn):
        def wrapped(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.store[self.key] = self.store.get(self.key, 0.0) + time.perf_counter() - t
        return wrapped


ENGINE = "auto"  # what run_inference uses by default (--engine)


def timed_predictor(plans: dict, ckpt_dir: Path, labels: np.ndarray, split: dict, splits: dict):
    """Random-weight cascade with the labels' boxes; ``split`` collects per-stage resample / network
    times of the case in progress, ``splits`` keeps them per case."""
    import torch

    from autoseg.inference.predictor import CascadePredictor
    from autoseg.inference.random_models import write_random_checkpoints
    from benchmarks.bench_inference_gpu import host_labels, oracle_predictor

    ckpts = write_random_checkpoints(plans, ckpt_dir)
    base = oracle_predictor(CascadePredictor, labels, host_labels(plans))

    class Split(base):
        def _prepare(self, sm, *a, **k):
            return Timed(split, f"{sm.stage}.resample")(super()._prepare)(sm, *a, **k)

        def predict_array_full(self, image, spacing, profile=None, name="image", prepared=None):
            split.clear()
            try:
                return super().predict_array_full(image, spacing, profile, name, prepared)
            finally:
                splits[name] = {k: round(v, 3) for k, v in split.items()}

    pred = Split(ckpts, device="cpu", engine=ENGINE)
    for s, sm in pred.stages.items():
        inner = sm.network

        class Net(torch.nn.Module):
            def __init__(self, net, key):
                super().__init__()
                self.net, self.key = net, key

            def forward(self, x):
                return Timed(split, self.key)(self.net)(x)

        sm.network = Net(inner, f"{s}.network")
    return pred


def run_kind(kind: str, work: Path, plans: dict, copies: int, overlap: bool) -> dict:
    import torch

    from autoseg.io import read_image

    src = work / kind
    labels, _ = read_image(src / "labels.nii.gz")
    inp, out = work / f"in_{kind}", work / f"out_{kind}"
    for d in (inp, out):
        shutil.rmtree(d, ignore_errors=True)
    inp.mkdir()
    for i in range(copies):
        os.link(src / "image.nii.gz", inp / f"case{i:02d}_0000.nii.gz")
    split: dict = {}
    splits: dict = {}
    done_at: list[float] = []
    profiles: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        pred = timed_predictor(plans, Path(tmp), labels, split, splits)
    pred.overlap_io = overlap

    def on_profile(name: str, summary: dict) -> None:
        done_at.append(time.perf_counter())
        profiles[name] = summary

    t0 = time.perf_counter()
    failures = pred.predict_folder(inp, out, profile=True, on_profile=on_profile)
    wall = time.perf_counter() - t0
    assert not failures, failures
    gaps = [b - a for a, b in zip(done_at, done_at[1:])]
    shape = list(labels.shape)
    return {"kind": kind, "shape_zyx": shape, "copies": copies, "overlap_io": overlap,
            "threads": torch.get_num_threads(), "wall_s": round(wall, 2),
            "first_case_s": round(done_at[0] - t0, 2) if done_at else None,
            "steady_per_case_s": round(statistics.median(gaps), 2) if gaps else None,
            "profiles": profiles, "splits": splits}


def markdown(path: Path) -> str:
    """Per input kind: the median over cases after the first of each profile entry and split."""
    res = json.loads(path.read_text())
    out = []
    for r in res["runs"]:
        names = sorted(r["profiles"])[1:] or sorted(r["profiles"])
        prof = [r["profiles"][n] for n in names]
        spl = [v for k, v in sorted(r["splits"].items())][1:] or list(r["splits"].values())
        med = lambda vals: statistics.median(vals) if vals else 0.0  # noqa: E731
        rows = [(k, med([p.get(k, 0.0) for p in prof])) for k in ("read", "prepare")]
        for st in ("roi", "organ", "tumour"):
            total = med([p.get(st, 0.0) for p in prof])
            res_s = med([x.get(f"{st}.resample", 0.0) for x in spl])
            net_s = med([x.get(f"{st}.network", 0.0) for x in spl])
            w = prof[-1].get("windows", {}).get(st, {})
            rows.append((f"{st}: resample + normalise", res_s))
            rows.append((f"{st}: network ({w.get('computed', 0)} windows, {w.get('skipped', 0)} skipped)", net_s))
            rows.append((f"{st}: rest ({'upload, argmax, components, box' if st == 'roi' else 'argmax back, crops'})",
                         total - res_s - net_s))
        rows += [(k, med([p.get(k, 0.0) for p in prof])) for k in ("postprocess", "write")]
        out.append(f"**{r['kind']}** {'x'.join(map(str, r['shape_zyx']))} (z, y, x), {r['copies']} copies, "
                   f"overlap {'on' if r['overlap_io'] else 'off'}, {r['threads']} threads: steady state "
                   f"**{r['steady_per_case_s']} s per case** (first case {r['first_case_s']} s, all {r['wall_s']} s)\n")
        out.append("| part | s (median, cases after the first) |\n|---|---|")
        out += [f"| {k} | {v:.2f} |" for k, v in rows]
        out.append(f"| sum of the parts (read, prepare and write overlap the next case when on) | "
                   f"{sum(v for _, v in rows):.2f} |\n")
    out.append(f"load average before {res['load_before']}, after {res['load_after']}")
    return "\n".join(out)


def main() -> None:
    if sys.argv[1:2] == ["--markdown"]:
        print(markdown(Path(sys.argv[2])))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["inputs", "run"])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--kinds", nargs="+", default=["realct", "phantom512"])
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--no-overlap", action="store_true", help="read and write in line with the compute")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--engine", default="auto", help="network engine, as run_inference --engine")
    args = ap.parse_args()
    if args.what == "inputs":
        make_inputs(args.work)
        return
    import torch

    global ENGINE
    ENGINE = args.engine
    torch.set_num_threads(args.threads)
    plans = json.loads((args.work / "plans_cpu.json").read_text())
    res = {"load_before": os.getloadavg(), "runs": []}
    for kind in args.kinds:
        r = run_kind(kind, args.work, plans, args.copies, not args.no_overlap)
        res["runs"].append(r)
        last = r["profiles"][sorted(r["profiles"])[-1]]
        print(f"{kind}: steady {r['steady_per_case_s']} s/case, first {r['first_case_s']} s; last case "
              f"{ {k: v for k, v in last.items() if isinstance(v, float)} }; split "
              f"{r['splits'][sorted(r['splits'])[-1]]}; windows {last.get('windows')}", flush=True)
    res["load_after"] = os.getloadavg()
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
