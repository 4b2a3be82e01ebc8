"""Preprocessing speed and memory: autoseg vs nnU-Net v2.8.1, side by side on the same phantoms.

Measures, in one run on one machine:
1. nnU-Net's ``plan_and_preprocess -c 3d_fullres`` (peer venv, ``benchmarks/peer_env.py``), per phase;
2. autoseg's organ stage at nnU-Net's 3d_fullres target spacing, all cases with ``-np`` workers (wall
   per case) and one by one in a single process (time per case), on the ROI crop as in the cascade
   and on the whole body crop;
3. each autoseg worker's peak working memory per case (VmHWM after resetting it, minus the RSS
   before the case) against the case's float32 size;
4. fingerprint memory of the whole process tree for 20 vs 200 cases (flat = bounded).

Usage: ``python -m benchmarks.bench_preprocessing --cases 8 --np 2 [--nnunet] [--json out.json]``.
Times are wall-clock on a possibly shared machine: compare only ratios from the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return float("nan")


def measured_case(args: tuple) -> dict:
    """Worker: preprocess one case and report its own peak memory above the pre-case baseline."""
    from autoseg.preprocessing.preprocessor import preprocess_case

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass
    base = _status_mb("VmRSS")
    t0 = time.perf_counter()
    r = preprocess_case(*args)
    r["seconds"] = time.perf_counter() - t0
    r["work_mb"] = _status_mb("VmHWM") - base
    return r


def _init(threads: int) -> None:
    from autoseg.preprocessing.preprocessor import init_worker

    init_worker(threads)  # exactly what preprocess_dataset's workers do


def _init_warm(threads: int) -> None:
    """Worker start: imports and a tiny warm-up, so a case's measured memory excludes one-off
    library initialisation (a fresh worker per case: nothing cached from an earlier case)."""
    import torch

    from autoseg.preprocessing import crop_to_body, resample_image, resample_labels
    from autoseg.preprocessing.preprocessor import tumours_to_hosts

    _init(threads)
    lab = np.zeros((8, 8, 8), np.uint8)
    lab[2:5, 2:5, 2:5], lab[3, 3, 3] = 1, 2
    resample_image(torch.zeros(1, 8, 8, 8, dtype=torch.int16), (5, 5, 5))
    resample_labels(torch.from_numpy(lab), (5, 5, 5), 3)
    tumours_to_hosts(lab, [2], [1])
    crop_to_body(np.zeros((8, 8, 8), np.int16))


def make_dataset(raw: Path, n: int, dataset_id: int, size: str) -> Path:
    """Phantom dataset via autoseg.synthetic (make_phantom_dataset when present, else make_phantom)."""
    import autoseg.synthetic as syn

    if hasattr(syn, "make_phantom_dataset"):
        return Path(syn.make_phantom_dataset(raw, dataset_id=dataset_id, num_train=n, num_test=0, seed=0, size=size))
    from autoseg.io import write_image

    folder = raw / f"Dataset{dataset_id}_Phantom"
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(exist_ok=True)
    for i in range(n):
        img, lab, geo = syn.make_phantom(i, size)
        write_image(img, geo, folder / "imagesTr" / f"phantom_{i:03d}_0000.nii.gz")
        write_image(lab, geo, folder / "labelsTr" / f"phantom_{i:03d}.nii.gz")
    dj = {"channel_names": {"0": "CT"}, "labels": syn.LABELS, "numTraining": n, "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(dj, indent=1))
    return folder


def replicate(src: Path, raw: Path, dataset_id: int, n: int) -> Path:
    """A dataset of ``n`` cases hard-linked from ``src``'s (same bytes, distinct case names)."""
    dst = raw / f"Dataset{dataset_id}_Replicated{n}"
    if dst.exists():
        shutil.rmtree(dst)
    (dst / "imagesTr").mkdir(parents=True)
    (dst / "labelsTr").mkdir()
    imgs = sorted((src / "imagesTr").glob("*_0000.nii.gz"))
    for i in range(n):
        im = imgs[i % len(imgs)]
        cid = im.name[: -len("_0000.nii.gz")]
        os.link(im, dst / "imagesTr" / f"rep_{i:04d}_0000.nii.gz")
        os.link(src / "labelsTr" / f"{cid}.nii.gz", dst / "labelsTr" / f"rep_{i:04d}.nii.gz")
    dj = json.loads((src / "dataset.json").read_text())
    dj["numTraining"] = n
    (dst / "dataset.json").write_text(json.dumps(dj))
    return dst


def run_nnunet(raw: Path, work: Path, dataset_id: int, np_workers: int) -> dict:
    from benchmarks.measure import run_measured
    from benchmarks.peer_env import default_venv, is_ready, peer_python

    venv = default_venv()
    if not is_ready(venv):
        return {"skipped": f"peer venv {venv} not ready (python -m benchmarks.peer_env)"}
    env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(work / "nnunet_pre"),
               nnUNet_results=str(work / "nnunet_results"), OMP_NUM_THREADS="1")
    shutil.rmtree(work / "nnunet_pre", ignore_errors=True)
    log = work / "nnunet_plan_and_preprocess.log"
    m = run_measured([peer_python(venv), REPO / "benchmarks/peer/timed_plan_and_preprocess.py", "-d", str(dataset_id),
                      "-c", "3d_fullres", "-np", str(np_workers)], env=env, log_path=log)
    phases = {k: float(v) for k, v in re.findall(r"AUTOSEG_BENCH (\w+)_s=([\d.]+)", log.read_text())}
    plans_file = next((work / "nnunet_pre").glob("*/nnUNetPlans.json"), None)
    spacing = None
    if plans_file:
        spacing = json.loads(plans_file.read_text())["configurations"]["3d_fullres"]["spacing"]
    return {"returncode": m.returncode, "wall_s": m.wall_s, "peak_rss_mb": m.peak_rss_mb,
            "peak_pss_mb": m.peak_pss_mb, "phases_s": phases, "target_spacing": spacing}


def run_ours(folder: Path, pre: Path, spacing: list[float] | None, np_workers: int) -> dict:
    import multiprocessing as mp

    from autoseg.datasets import RawDataset
    from autoseg.fingerprint import compute_fingerprint
    from autoseg.planners import ExperimentPlanner

    ds = RawDataset.load(folder)
    out = pre / ds.name
    t0 = time.perf_counter()
    fp = compute_fingerprint(ds, out / "dataset_fingerprint.json", np_workers, progress=False, overwrite=True)
    t_fp = time.perf_counter() - t0
    res: dict = {"fingerprint_s": t_fp}
    for variant, stages in (("organ_on_roi_crop", None), ("organ_on_body_crop", ["organ"])):
        plans = ExperimentPlanner(fp, target_spacing=spacing, stages=stages).plan()
        jobs = [(c, plans, out / variant, ["organ"], True) for c in ds.cases]
        t0 = time.perf_counter()
        with mp.get_context("spawn").Pool(np_workers, initializer=_init, initargs=(1,)) as pool:
            pool.map(measured_case, jobs, chunksize=1)
        wall = time.perf_counter() - t0
        with mp.get_context("spawn").Pool(1, initializer=_init_warm, initargs=(1,), maxtasksperchild=1) as pool:
            pooled = pool.map(measured_case, jobs, chunksize=1)
        _init(1)
        serial = [measured_case(j) for j in jobs]
        sizes = [4 * float(np.prod(_shape(c.images[0]))) / 2**20 for c in ds.cases]
        res[variant] = {
            "target_spacing": plans["stages"]["organ"]["target_spacing"],
            "pool_wall_s": wall, "pool_wall_per_case_s": wall / len(jobs),
            "serial_per_case_s": [round(r["seconds"], 3) for r in serial],
            "serial_mean_s": float(np.mean([r["seconds"] for r in serial])),
            "case_float32_mb": [round(s, 1) for s in sizes],
            "worker_work_mb": [round(r["work_mb"], 1) for r in pooled],
            "worker_work_over_case_float32": float(max(r["work_mb"] / s for r, s in zip(pooled, sizes))),
            "worker_peak_rss_mb": float(max(r["peak_rss_mb"] for r in pooled)),
        }
    return res


def _shape(path: Path) -> tuple[int, ...]:
    from autoseg.io import read_header

    return read_header(path).shape


def fingerprint_memory(src: Path, raw: Path, pre: Path, counts: list[int], np_workers: int) -> dict:
    from benchmarks.measure import run_measured

    out = {}
    for k, n in enumerate(counts):
        ds = replicate(src, raw, 900 + k, n)
        code = ("from autoseg.datasets import RawDataset; from autoseg.fingerprint import compute_fingerprint; "
                f"compute_fingerprint(RawDataset.load({str(ds)!r}), None, {np_workers}, progress=False)")
        m = run_measured([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO,
                         log_path=pre / f"fingerprint_{n}.log")
        out[str(n)] = {"returncode": m.returncode, "wall_s": round(m.wall_s, 2), "peak_rss_mb": round(m.peak_rss_mb, 1),
                       "peak_pss_mb": round(m.peak_pss_mb, 1), "per_case_s": round(m.wall_s / n, 3)}
        shutil.rmtree(ds)
    return out


def gpu_resample(repeats: int = 5) -> dict:
    """On-device resampling of a 200x512x512 CT (0.8x0.8x2.5 mm) to the organ spacing and of
    7-class logits back: the inference path's cost, plus a CPU/GPU agreement check."""
    import torch

    from autoseg.preprocessing.resample import (compute_new_shape, resample_image, resample_labels,
                                                resample_logits)

    dev = torch.device("cuda")
    shape, sp, target = (200, 512, 512), (2.5, 0.8, 0.8), (2.5, 1.6, 1.6)
    new = compute_new_shape(shape, sp, target)
    x = torch.randint(-1000, 1000, (1, *shape), dtype=torch.int16, device=dev)
    logits = torch.randn(8, *new, device=dev, dtype=torch.float16)
    seg = (torch.rand(shape, device=dev) * 8).to(torch.int8)

    def timed(fn):
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / repeats

    out = {"image_to_organ_s": timed(lambda: resample_image(x, new)),
           "logits8_back_s": timed(lambda: resample_logits(logits, shape)),
           "labels8_to_organ_s": timed(lambda: resample_labels(seg, new, 8))}
    small = torch.randn(1, 40, 96, 96)
    lab = (small[0] > 0.3).to(torch.int8) + (small[0] > 1.0).to(torch.int8)
    out["max_abs_diff_image"] = float((resample_image(small.to(dev), (23, 51, 77)).cpu()
                                       - resample_image(small, (23, 51, 77))).abs().max())
    out["label_mismatch"] = float((resample_labels(lab.to(dev), (23, 51, 77), 3).cpu()
                                   != resample_labels(lab, (23, 51, 77), 3)).float().mean())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--size", default="small")
    ap.add_argument("--np", type=int, default=2, dest="np_workers")
    ap.add_argument("--work", default="bench_work/preprocessing")
    ap.add_argument("--nnunet", action="store_true", help="also run nnU-Net v2.8.1 (peer venv) side by side")
    ap.add_argument("--target-spacing", type=float, nargs=3, default=None,
                    help="organ spacing when nnU-Net is not run (default: the planner's)")
    ap.add_argument("--fingerprint-cases", type=int, nargs="*", default=[20, 200])
    ap.add_argument("--json", default=None)
    ap.add_argument("--gpu-resample", action="store_true", help="only time on-device resampling (CUDA)")
    args = ap.parse_args(argv)
    if args.gpu_resample:
        text = json.dumps(gpu_resample(), indent=1)
        print(text)
        if args.json:
            Path(args.json).write_text(text + "\n")
        return 0
    work = Path(args.work).resolve()
    raw, pre = work / "raw", work / "pre"
    pre.mkdir(parents=True, exist_ok=True)
    folder = next(raw.glob("Dataset501_*"), None) if raw.is_dir() else None
    if folder is None or len(list((folder / "imagesTr").glob("*"))) != args.cases:
        shutil.rmtree(raw, ignore_errors=True)
        folder = make_dataset(raw, args.cases, 501, args.size)
    report: dict = {"cases": args.cases, "np": args.np_workers, "size": args.size}
    spacing = args.target_spacing
    if args.nnunet:
        report["nnunet"] = run_nnunet(raw, work, 501, args.np_workers)
        spacing = report["nnunet"].get("target_spacing")
    report["autoseg"] = run_ours(folder, pre, spacing, args.np_workers)
    if args.nnunet and "phases_s" in report["nnunet"] and "preprocess" in report["nnunet"]["phases_s"]:
        peer = report["nnunet"]["phases_s"]["preprocess"] / args.cases
        for v in ("organ_on_roi_crop", "organ_on_body_crop"):
            report["autoseg"][v]["speedup_vs_nnunet_per_case"] = peer / report["autoseg"][v]["pool_wall_per_case_s"]
    if args.fingerprint_cases:
        report["fingerprint_memory"] = fingerprint_memory(folder, raw, pre, args.fingerprint_cases, args.np_workers)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
