"""nnU-Net v2.8.1's own models through autoseg's predictor: label agreement with ``nnUNetv2_predict`` and
speed per case on the CPU, TTA off on both. Writes ``benchmarks/RESULTS_nnunet_import.md``.

Prerequisite (long, untimed, run niced without the lock): ``benchmarks/nnunet_import_train.sh`` trains
nnU-Net models on the phantom dataset in ``$WORK`` (a PlainConvUNet and a ResEnc). Then, on a quiet
machine::

    flock /tmp/autoseg-cpu.lock .venv/bin/python -m benchmarks.bench_nnunet_import --work bench_work/nnunet_import

For each model: ``autoseg import_nnunet`` converts it; both predictors run the test images twice, once
on the first case alone and once on all cases, each a separate command (start-up included). Per case
with start-up = time(all) / N; steady state per case = (time(all) - time(one)) / (N - 1), which
removes start-up and model loading from both tools alike. autoseg runs at fp32 (nnU-Net's precision on
CPU) and at its default (bf16 autocast on CPUs with native bf16). Agreement = fraction of voxels with
the same label, per case, against nnU-Net's fp32 prediction; DSC against the phantoms' ground truth.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PEER_TRAINER = "nnUNetTrainerAutosegBenchStock"  # trained by benchmarks/nnunet_import_train.sh
UNTRAINED = "nnUNetTrainer"  # benchmarks/peer/make_nnunet_checkpoint.py: nnU-Net's network, random weights
MODELS = {"PlainConvUNet": "nnUNetPlansBench", "ResEnc": "nnUNetPlansBenchResEnc"}


def _run(cmd: list[str], env: dict, log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=True, cwd=REPO)
    return time.perf_counter() - t0


def _case_folder(images: Path, dest: Path, n: int) -> Path:
    """``dest`` holding links to the first ``n`` test images (and nothing else)."""
    if dest.is_dir():
        for old in dest.iterdir():
            old.unlink()
    dest.mkdir(parents=True, exist_ok=True)
    for img in sorted(images.glob("*_0000.nii.gz"))[:n]:
        (dest / img.name).symlink_to(img.resolve())
    return dest


def _labels(path: Path) -> np.ndarray:
    from autoseg.io import read_image

    return read_image(path)[0]


def _dsc(pred: np.ndarray, gt: np.ndarray) -> dict[int, float]:
    """DSC per label present in the ground truth."""
    out = {}
    for c in np.unique(gt[gt > 0]):
        p, g = pred == c, gt == c
        out[int(c)] = float(2 * np.logical_and(p, g).sum() / max(1, p.sum() + g.sum()))
    return out


def step_differences(ref_dir: Path, image: Path, stage_model) -> dict:
    """autoseg's steps against nnU-Net's (peer/nnunet_reference.py) on one image, all fp32: the
    preprocessed input, the network on one patch, the Gaussian-weighted sliding window."""
    import torch

    from autoseg.inference.sliding_window import predict_sliding_window
    from autoseg.io import read_image
    from autoseg.nnunet.predict import nnunet_gaussian
    from autoseg.nnunet.preprocessing import nnunet_block, nonzero_box, prepare

    img, geom = read_image(image)
    block = nnunet_block(stage_model.config)
    box = nonzero_box(img)
    crop = torch.from_numpy(np.ascontiguousarray(img[tuple(slice(a, b) for a, b in box)]))[None]
    x = prepare(crop, geom.spacing, block, stage_model.spacing)
    data = np.load(ref_dir / "data.npy")
    ref_patch = np.load(ref_dir / "patch_logits.npy")
    ref_patch = ref_patch[0] if ref_patch.ndim == 6 else ref_patch  # deep supervision: full resolution first
    p = [min(a, b) for a, b in zip(stage_model.patch_size, data.shape[1:])]
    with torch.no_grad():
        patch = stage_model.network(torch.from_numpy(np.ascontiguousarray(data[:, :p[0], :p[1], :p[2]]))[None])
        full = predict_sliding_window(stage_model.network, torch.from_numpy(data), stage_model.patch_size,
                                      stage_model.num_classes, 0.5, 1, nnunet_gaussian(stage_model.patch_size),
                                      None, False)
    ref_full = np.load(ref_dir / "logits.npy")
    return {"input_max_abs": float(np.abs(x.numpy() - data).max()), "input_max": float(np.abs(data).max()),
            "patch_logits_max_abs": float(np.abs(patch.numpy() - ref_patch).max()),
            "patch_logits_max": float(np.abs(ref_patch).max()),
            "window_logits_mean_abs": float(np.abs(full.numpy() - ref_full).mean()),
            "window_logits_max_abs": float(np.abs(full.numpy() - ref_full).max()),
            "window_argmax_agree": float((full.numpy().argmax(0) == ref_full.argmax(0)).mean())}


def compare(ours: Path, theirs: Path, gt_dir: Path) -> dict:
    """Per-case agreement with nnU-Net and DSC of both against the ground truth."""
    rows = {}
    for t in sorted(theirs.glob("*.nii.gz")):
        a, b, g = _labels(ours / t.name), _labels(t), _labels(gt_dir / t.name)
        da, db = _dsc(a, g), _dsc(b, g)
        rows[t.name] = {"agree": float((a == b).mean()), "dsc_ours": float(np.mean(list(da.values()))),
                        "dsc_theirs": float(np.mean(list(db.values()))), "liver_ours": da.get(1, float("nan")),
                        "liver_theirs": db.get(1, float("nan")), "voxels": int(a.size)}
    return rows


def _schedule(folder: Path) -> str:
    """'E epochs x I iterations' of an nnU-Net training, from the debug.json it writes."""
    try:
        d = json.loads((folder / "fold_all" / "debug.json").read_text())
        return f"{d['num_epochs']} epochs x {d['num_iterations_per_epoch']} iterations"
    except (OSError, ValueError, KeyError):
        return "schedule unknown (no debug.json)"


class Bench:
    def __init__(self, work: Path, venv: Path, log: Path, cases: int, timing_models: list[str]):
        self.work, self.venv, self.log, self.timing_models = work, venv, log, timing_models
        self.raw = work / "raw" / "Dataset501_Phantom"
        self.images = _case_folder(self.raw / "imagesTs", work / "test_cases", cases)
        self.n = len(list(self.images.glob("*_0000.nii.gz")))
        self.one = _case_folder(self.images, work / "one_case", 1)
        base = dict(os.environ, PYTHONUNBUFFERED="1")
        self.env_theirs = dict(base, nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"),
                               nnUNet_results=str(work / "results"),
                               nnUNet_extTrainer=str(REPO / "benchmarks/peer/trainers"))
        self.env_ours = dict(base, AUTOSEG_RESULTS=str(work / "autoseg_results"))

    def model_dir(self, plans: str) -> Path | None:
        """The trained model for these plans, else the untrained one nnU-Net's code built, else None."""
        for trainer in (PEER_TRAINER, UNTRAINED):
            d = self.work / "results" / "Dataset501_Phantom" / f"{trainer}__{plans}__3d_fullres"
            if (d / "fold_all" / "checkpoint_final.pth").is_file():
                return d
        return None

    def theirs(self, folder: Path, inp: Path, out: Path) -> float:
        trainer, plans, _ = folder.name.split("__")
        cmd = [str(self.venv / "bin" / "nnUNetv2_predict"), "-i", str(inp), "-o", str(out), "-d", "501",
               "-c", "3d_fullres", "-p", plans, "-tr", trainer, "-f", "all", "-device", "cpu", "--disable_tta"]
        return _run(cmd, self.env_theirs, self.log)

    def ours(self, name: str, inp: Path, out: Path, precision: str) -> float:
        cmd = [sys.executable, "-m", "autoseg", "run_inference", "-i", str(inp), "-o", str(out), "-t", "501",
               "-tr", name, "-f", "all", "--device", "cpu", "--precision", precision, "--profile"]
        return _run(cmd, self.env_ours, self.log)

    def model(self, label: str, folder: Path) -> dict:
        start = (datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M UTC"), os.getloadavg()[0])
        name = f"nnUNet_{label}"
        t_import = _run([sys.executable, "-m", "autoseg", "import_nnunet", str(folder), "-tr", name, "--force"],
                        self.env_ours, self.log)
        pred = self.work / "predictions" / label
        res: dict = {"model_folder": str(folder.relative_to(self.work)), "import_s": t_import, "times": {},
                     "trained": not folder.name.startswith(UNTRAINED + "__"), "schedule": _schedule(folder)}
        runs = [("nnU-Net fp32", lambda i, o: self.theirs(folder, i, o)),
                ("autoseg fp32", lambda i, o: self.ours(name, i, o, "fp32")),
                ("autoseg default (bf16)", lambda i, o: self.ours(name, i, o, "auto"))]
        timed = label in self.timing_models
        for tag, fn in runs[1:] if timed else []:  # untimed: engine auto's one-off measurement is cached here
            fn(self.one, pred / "warmup")
        for tag, fn in runs if timed else []:  # alternate the tools: one-case runs first, then all cases
            key = tag.split()[0].lower() + ("_fp32" if "fp32" in tag else "_default")
            res["times"][tag] = {"one": fn(self.one, pred / f"{key}_one")}
        for tag, fn in runs:
            key = tag.split()[0].lower() + ("_fp32" if "fp32" in tag else "_default")
            res["times"].setdefault(tag, {})["all"] = fn(self.images, pred / f"{key}_all")
        for t in res["times"].values():
            t["per_case_with_startup"] = t["all"] / self.n
            if "one" in t:
                t["steady_per_case"] = (t["all"] - t["one"]) / max(1, self.n - 1)
        gt = self.raw / "labelsTs"
        res["fp32"] = compare(pred / "autoseg_fp32_all", pred / "nnu-net_fp32_all", gt)
        res["bf16"] = compare(pred / "autoseg_default_all", pred / "nnu-net_fp32_all", gt)
        profile = json.loads((pred / "autoseg_fp32_all" / "profile.json").read_text())
        res["own_timer_fp32"] = {c: p.get("total") for c, p in profile["cases"].items()}
        first = sorted(self.images.glob("*_0000.nii.gz"))[0]
        ref_dir = self.work / "reference" / label
        _run([str(self.venv / "bin" / "python"), str(REPO / "benchmarks/peer/nnunet_reference.py"), str(folder),
              str(first), str(ref_dir)], self.env_theirs, self.log)
        from autoseg.inference.models import find_stage_checkpoints, load_stage_model
        import torch

        ckpts = find_stage_checkpoints(501, name, results=self.work / "autoseg_results")["organ"]
        res["steps"] = {"case": first.name, **step_differences(ref_dir, first,
                                                               load_stage_model("organ", ckpts, torch.device("cpu")))}
        res["measured"] = (f"{start[0]} to {datetime.datetime.now(datetime.timezone.utc).strftime('%H:%M UTC')}, "
                           f"1-min load average {start[1]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
        return res


def render(results: dict, meta: dict) -> str:
    out = ["# nnU-Net v2.8.1 models through autoseg's predictor (`autoseg import_nnunet`)", ""]
    out += [f"- **{k}**: {v}" for k, v in meta.items()]
    out += ["", "## What is compared", "",
            "- The same nnU-Net v2.8.1 model folder, predicted by `nnUNetv2_predict -device cpu --disable_tta` "
            "(its defaults otherwise: fp32, step 0.5, Gaussian weighting, 3 preprocessing + 3 export worker "
            "processes) and, after `autoseg import_nnunet`, by `autoseg run_inference --device cpu` (TTA off by "
            "default, step 0.5) at `--precision fp32` and at its default (bf16 autocast on this CPU, which has "
            "AVX512-BF16).",
            "- Every prediction is a separate command on the same input folder; times are whole-command wall "
            "times, so model loading and start-up are in. *Per case incl. start-up* = all-cases time / cases. "
            "*Steady state per case* = (all-cases time - one-case time) / (cases - 1): start-up and loading "
            "cancel, for both tools alike.",
            "- Agreement: fraction of voxels with the same label as nnU-Net's fp32 prediction, per case and over "
            "all voxels. DSC: mean over the labels present in the phantom's ground truth.",
            "- The models: `benchmarks/nnunet_import_train.sh`, i.e. nnU-Net's own training "
            "(`nnUNetTrainerAutosegBenchStock`: AdamW 3e-3, every bias trained) on 12 phantoms, the `--quality` "
            "bench plans (patch 32x64x64, features x0.5, spacing 4x2x2 mm): PlainConvUNet and ResEnc (ResEnc-M "
            "blocks 1-3-4-6-6-6, one decoder conv per level), epochs x iterations as each model's section says "
            "(read from its `debug.json`). Short schedules: the models find the liver and little else, which is "
            "enough to compare predictors, not to judge nnU-Net.",
            "- autoseg's commands are each run once untimed on the one-case folder first: `--engine auto` "
            "measures and caches its engine choice on a model's first run, and that one-off cost must not land "
            "in the one-case command only (it would make the steady state look faster than it is).",
            "- Timings ran under `flock /tmp/autoseg-cpu.lock`; the machine is shared (2 cores) and other "
            "work outside the lock may have run (load averages are given): compare only the ratios, which "
            "were measured side by side.",
            "", "## Results", ""]
    for label, r in results.items():
        kind = "trained by nnU-Net" if r["trained"] else "untrained: nnU-Net's network with random weights and biases"
        out += [f"### {label} (`{r['model_folder']}`, {kind})", "",
                f"trained by nnU-Net for {r.get('schedule', 'an unrecorded schedule')}; measured {r['measured']}; import: {r['import_s']:.1f} s (command, start-up included)", "",
                "| predictor | command, 1 case (s) | command, all cases (s) | per case incl. start-up (s) "
                "| steady state per case (s) | nnU-Net / this, steady state |", "|---|---|---|---|---|---|"]
        ref = r["times"]["nnU-Net fp32"].get("steady_per_case")
        for tag, t in r["times"].items():
            if ref is None:
                out.append(f"| {tag} | not run | {t['all']:.1f} | {t['per_case_with_startup']:.2f} | not measured | |")
                continue
            out.append(f"| {tag} | {t['one']:.1f} | {t['all']:.1f} | {t['per_case_with_startup']:.2f} | "
                       f"{t['steady_per_case']:.2f} | {ref / t['steady_per_case']:.2f}x |")
        out += ["", "| case | voxels | agreement fp32 vs nnU-Net | agreement bf16 vs nnU-Net | mean DSC nnU-Net / "
                "autoseg fp32 / bf16 | liver DSC nnU-Net / autoseg fp32 / bf16 |", "|---|---|---|---|---|---|"]
        for case in r["fp32"]:
            a, b = r["fp32"][case], r["bf16"][case]
            out.append(f"| {case} | {a['voxels']:,} | {100 * a['agree']:.4f} % | {100 * b['agree']:.4f} % | "
                       f"{a['dsc_theirs']:.3f} / {a['dsc_ours']:.3f} / {b['dsc_ours']:.3f} | "
                       f"{a.get('liver_theirs', float('nan')):.3f} / {a.get('liver_ours', float('nan')):.3f} / "
                       f"{b.get('liver_ours', float('nan')):.3f} |")
        tot = sum(a["voxels"] for a in r["fp32"].values())
        agree = {p: 100 * sum(a["agree"] * a["voxels"] for a in r[p].values()) / tot for p in ("fp32", "bf16")}
        out.append(f"| **all voxels** | {tot:,} | {agree['fp32']:.4f} % | {agree['bf16']:.4f} % | | |")
        st = r.get("steps")
        if st:
            out += ["", f"Step by step on {st['case']}, fp32, against nnU-Net's own intermediate results "
                        "(`benchmarks/peer/nnunet_reference.py`): preprocessed input max |diff| "
                        f"{st['input_max_abs']:.2e} (values up to {st['input_max']:.1f}); network on one patch max "
                        f"|logit diff| {st['patch_logits_max_abs']:.2e} (logits up to {st['patch_logits_max']:.1f}); "
                        f"sliding window mean |logit diff| {st['window_logits_mean_abs']:.2e}, max "
                        f"{st['window_logits_max_abs']:.2e} (nnU-Net accumulates windows in float16), argmax "
                        f"agreement on the network grid {100 * st['window_argmax_agree']:.3f} %."]
        out += ["", f"autoseg's own per-case timer (fp32, excl. start-up, read and write included): "
                    f"{', '.join(f'{c} {s:.2f} s' for c, s in r['own_timer_fp32'].items())}", ""]
    return "\n".join(out) + "\n"


def render_saved(work: Path, output: Path) -> int:
    """The report from bench_nnunet_import.json and the prediction folders a full run left."""
    saved = json.loads((work / "bench_nnunet_import.json").read_text())
    meta_file = work / "bench_nnunet_import_meta.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
    else:  # a report written before the meta file existed: its header lines
        lines = [ln[4:].split("**: ", 1) for ln in output.read_text().splitlines() if ln.startswith("- **")]
        meta = {k: v for k, v in lines if k in ("date", "machine", "commit", "load average (1/5/15 min)",
                                                  "wall time", "test cases", "regenerate")}
    gt = work / "raw" / "Dataset501_Phantom" / "labelsTs"
    for label, r in saved.items():
        pred = work / "predictions" / label
        r["fp32"] = compare(pred / "autoseg_fp32_all", pred / "nnu-net_fp32_all", gt)
        r["bf16"] = compare(pred / "autoseg_default_all", pred / "nnu-net_fp32_all", gt)
    (work / "bench_nnunet_import.json").write_text(json.dumps(saved, indent=2))
    output.write_text(render(saved, meta))
    print(output.read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    from benchmarks.peer_env import default_venv

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=REPO / "bench_work" / "nnunet_import")
    ap.add_argument("--venv", type=Path, default=default_venv())
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--timing-models", nargs="*", default=["PlainConvUNet"], choices=list(MODELS),
                    help="models also run on one case alone, for the steady-state per-case time")
    ap.add_argument("--cases", type=int, default=3, help="test images used (the first N)")
    ap.add_argument("--output", type=Path, default=REPO / "benchmarks" / "RESULTS_nnunet_import.md")
    ap.add_argument("--render-only", action="store_true",
                    help="recompute agreement/DSC from the saved predictions and rewrite the report (no runs)")
    args = ap.parse_args(argv)
    work = args.work.resolve()
    if args.render_only:
        return render_saved(work, args.output)
    log = work / "bench_nnunet_import.log"
    bench = Bench(work, args.venv, log, args.cases, args.timing_models)
    load0 = os.getloadavg()
    t0 = time.time()
    found = {m: bench.model_dir(MODELS[m]) for m in args.models}
    results = {m: bench.model(m, d) for m, d in found.items() if d is not None}
    old = work / "bench_nnunet_import.json"
    if old.is_file():  # models measured by an earlier run (--models) stay in the report
        results = {**json.loads(old.read_text()), **results}
    old.write_text(json.dumps(results, indent=2))
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                     cwd=REPO).stdout.strip(),
            "load average (1/5/15 min)": f"{load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f} at the start, "
                                         f"{'/'.join(f'{v:.2f}' for v in os.getloadavg())} at the end",
            "wall time": f"{time.time() - t0:.0f} s", "test cases": str(bench.n),
            "regenerate": "`flock /tmp/autoseg-cpu.lock .venv/bin/python -m benchmarks.bench_nnunet_import` "
                          "after `nice -n 19 bash benchmarks/nnunet_import_train.sh`"}
    (work / "bench_nnunet_import_meta.json").write_text(json.dumps(meta, indent=2))
    args.output.write_text(render(results, meta))
    print(args.output.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
