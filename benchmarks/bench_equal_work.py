"""Where the speed comes from: autoseg and nnU-Net v2.8.1 on the same network, windows and precision.

Real-sized CT, not phantoms: ``../shared/data/totalseg/example_ct`` resampled to 0.8x0.8x2.5 mm
(457x379x134) in five variants (as is, mirrored, noise, intensity-scaled, half-voxel shifted) plus
512x512x200 versions of it. nnU-Net plans the dataset itself (its default 3d_fullres, fingerprint and
experiment planning only); ``benchmarks/peer/make_nnunet_checkpoint.py`` builds that network with nnU-Net's
own code and random weights (time does not depend on the weights) and ``autoseg import_nnunet`` converts
it, so both tools run the same network with the same patch and step 0.5, i.e. the same windows.

Rows: nnU-Net fp32 (its defaults: 3 preprocessing + 3 export workers, and with ``-npp 0 -nps 0``), nnU-Net
bf16 (``benchmarks/peer/predict_bf16.py``: its predictor under CPU bf16 autocast), autoseg fp32 and bf16
with window skipping off (equal windows), autoseg fp32 with its engine choice (on a CPU with native bf16
the defaults run bf16 eager, and the compiled engines only run fp32), and autoseg's defaults. Each row is two commands (one case;
all cases); steady state per case = (all - one) / (N - 1), which cancels start-up and model loading.
Agreement: bf16 vs fp32 labels per tool, and autoseg vs nnU-Net at fp32.

    python -m benchmarks.bench_equal_work prepare --work bench_work/equal_work [--network-scale 0.25]
    flock /tmp/autoseg-cpu.lock python -m benchmarks.bench_equal_work run --work bench_work/equal_work
    python -m benchmarks.bench_equal_work report --work bench_work/equal_work
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CT = REPO.parent / "shared" / "data" / "totalseg" / "example_ct.nii.gz"
SEG = REPO.parent / "shared" / "data" / "totalseg" / "example_seg_fast_force_split.nii.gz"
DATASET = "Dataset502_RealCT"
LABELS = {"background": 0, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "gallbladder": 4, "liver": 5,
          "stomach": 6, "pancreas": 7}
VARIANTS = ["plain", "mirrored", "noise", "scaled", "shifted"]


def _resample(img, spacing, size, interp, shift=0.0):
    import SimpleITK as sitk

    origin = [o + shift * s for o, s in zip(img.GetOrigin(), spacing)]
    return sitk.Resample(img, size, sitk.Transform(), interp, origin, spacing, img.GetDirection(), -1024 if
                         interp != sitk.sitkNearestNeighbor else 0, img.GetPixelID())


def make_cases(raw: Path, n_large: int, large_only: bool = False) -> list[str]:
    """The real-sized variants of the example CT (images and organ labels) in nnU-Net raw format;
    ``large_only``: just the 512x512x200 ones (named ``RealCTLarge_NNN``, kept out of the planned dataset)."""
    import SimpleITK as sitk

    ct, seg = sitk.ReadImage(str(CT)), sitk.ReadImage(str(SEG))
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    extent = [n * s for n, s in zip(ct.GetSize(), ct.GetSpacing())]
    specs = [(v, (0.8, 0.8, 2.5)) for v in VARIANTS]
    specs = [] if large_only else specs
    specs += [(f"large{i}", tuple(e / n for e, n in zip(extent, (512, 512, 200)))) for i in range(n_large)]
    rng = np.random.default_rng(0)
    names = []
    for i, (variant, spacing) in enumerate(specs):
        size = [int(round(e / s)) for e, s in zip(extent, spacing)]
        shift = 0.5 if variant in ("shifted", "large1") else 0.0
        im = _resample(ct, spacing, size, sitk.sitkLinear, shift)
        lb = _resample(seg, spacing, size, sitk.sitkNearestNeighbor, shift)
        a, m = sitk.GetArrayFromImage(im).astype(np.int16), sitk.GetArrayFromImage(lb)
        m = np.where(m <= max(LABELS.values()), m, 0).astype(np.uint8)
        if variant == "mirrored":
            a, m = a[:, :, ::-1].copy(), m[:, :, ::-1].copy()
        elif variant == "noise":
            a = np.clip(a + rng.normal(0, 15, a.shape), -1024, 3071).astype(np.int16)
        elif variant == "scaled":
            a = np.clip(a * 0.95 + 12, -1024, 3071).astype(np.int16)
        name = f"RealCTLarge_{i:03d}" if large_only else f"RealCT_{i:03d}"
        for arr, dest in ((a, raw / "imagesTr" / f"{name}_0000.nii.gz"), (m, raw / "labelsTr" / f"{name}.nii.gz")):
            out = sitk.GetImageFromArray(arr)
            out.CopyInformation(im)
            sitk.WriteImage(out, str(dest))
        names.append(name)
    if large_only:
        return names
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": len(names), "file_ending": ".nii.gz",
        "name": "RealCT", "description": "example_ct (TotalSegmentator test file) resampled; labels are model output"},
        indent=2))
    return names


class Work:
    """Paths and environments of one benchmark folder."""

    def __init__(self, work: Path, venv: Path):
        self.work, self.venv = work.resolve(), venv
        self.raw = self.work / "raw" / DATASET
        self.pre = self.work / "preprocessed" / DATASET
        self.results = self.work / "results" / DATASET
        self.large = self.work / "large"  # 512x512x200 cases added after planning (prepare --large N)
        self.log = self.work / "bench.log"
        base = dict(os.environ, PYTHONUNBUFFERED="1")
        self.env_theirs = dict(base, nnUNet_raw=str(self.work / "raw"), nnUNet_preprocessed=str(self.work / "preprocessed"),
                               nnUNet_results=str(self.work / "results"))
        self.env_ours = dict(base, AUTOSEG_RESULTS=str(self.work / "autoseg_results"))
        self.state_file = self.work / "equal_work.json"

    def state(self) -> dict:
        return json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}

    def save(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    def run(self, cmd: list[str], env: dict) -> float:
        t0 = time.perf_counter()
        with open(self.log, "a") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=True, cwd=REPO)
        return time.perf_counter() - t0

    def peer(self, tool: str) -> str:
        return str(self.venv / "bin" / tool)


def scaled_plans(plans: dict, scale: float) -> dict:
    """nnU-Net's plans with every stage's feature count scaled (same patch, stages and windows)."""
    import copy

    out = copy.deepcopy(plans)
    out["plans_name"] = f"nnUNetPlansScaled{int(round(scale * 100))}"
    kw = out["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    kw["features_per_stage"] = [max(4, int(round(f * scale))) for f in kw["features_per_stage"]]
    return out


def prepare(w: Work, n_large: int, scales: list[float]) -> None:
    if not (w.raw / "dataset.json").is_file():
        make_cases(w.raw, n_large)
    elif n_large and not any(w.large.glob("imagesTr/*_0000.nii.gz")):  # added to a folder planned without them
        make_cases(w.large, n_large, large_only=True)
    if not (w.pre / "nnUNetPlans.json").is_file():
        w.run([w.peer("nnUNetv2_extract_fingerprint"), "-d", "502", "-np", "2"], w.env_theirs)
        w.run([w.peer("nnUNetv2_plan_experiment"), "-d", "502"], w.env_theirs)
    plans = json.loads((w.pre / "nnUNetPlans.json").read_text())
    names = ["nnUNetPlans"]
    for s in scales:
        p = scaled_plans(plans, s)
        (w.pre / f"{p['plans_name']}.json").write_text(json.dumps(p, indent=2))
        names.append(p["plans_name"])
    for name in names:
        folder = w.results / f"nnUNetTrainer__{name}__3d_fullres"
        if not (folder / "fold_all" / "checkpoint_final.pth").is_file():
            w.run([w.peer("python"), str(REPO / "benchmarks/peer/make_nnunet_checkpoint.py"), str(w.pre), name,
                   str(w.results)], w.env_theirs)
        w.run([sys.executable, "-m", "autoseg", "import_nnunet", str(folder), "-tr", name, "--force"], w.env_ours)


def case_folder(w: Work, tag: str, names: list[str]) -> Path:
    dest = w.work / "inputs" / tag
    if dest.is_dir():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for n in names:
        src = w.raw / "imagesTr" / f"{n}_0000.nii.gz"
        (dest / f"{n}_0000.nii.gz").symlink_to(src if src.is_file() else w.large / "imagesTr" / src.name)
    return dest


def rows(w: Work, plans: str) -> dict[str, list[str]]:
    """Each row's command, minus -i/-o."""
    theirs = [w.peer("nnUNetv2_predict"), "-d", "502", "-c", "3d_fullres", "-p", plans, "-tr", "nnUNetTrainer",
              "-f", "all", "-device", "cpu", "--disable_tta"]
    bf16 = [w.peer("python"), str(REPO / "benchmarks/peer/predict_bf16.py"), *theirs[1:]]
    ours = [sys.executable, "-m", "autoseg", "run_inference", "-t", "502", "-tr", plans, "-f", "all",
            "--device", "cpu", "--profile"]
    equal = [flag for flag in (["--skip-windows", "off"], ["--engine", "eager"]) if _supports(flag[0])]
    equal = [a for flag in equal for a in flag]
    return {"nnU-Net fp32 (defaults)": theirs,
            "nnU-Net fp32 -npp 0 -nps 0": theirs + ["-npp", "0", "-nps", "0"],
            "nnU-Net bf16 shim -npp 0 -nps 0": bf16 + ["-npp", "0", "-nps", "0"],
            "autoseg fp32, equal windows": ours + ["--precision", "fp32"] + equal,
            "autoseg bf16, equal windows": ours + ["--precision", "bf16"] + equal,
            "autoseg fp32, engine auto": ours + ["--precision", "fp32"],
            "autoseg defaults (engine auto)": ours,
            # after `autoseg quantize` (random weights: a speed row; its DSC gate is meaningless here)
            "autoseg int8 (--engine openvino_int8)": ours + ["--engine", "openvino_int8"]}


def _supports(flag: str) -> bool:
    """Whether this checkout's run_inference has ``flag`` (rows stay comparable across versions)."""
    out = subprocess.run([sys.executable, "-m", "autoseg", "run_inference", "-h"], capture_output=True, text=True,
                         cwd=REPO).stdout
    return flag in out


def run(w: Work, plans: str, cases: list[str], only: list[str] | None, key_tag: str = "") -> None:
    state = w.state()
    key = f"{plans}:{len(cases)}" + (" large" if cases[0].startswith("RealCTLarge") else "") + (f" {key_tag}" if key_tag else "")
    done = state.setdefault(key, {})
    one, all_ = case_folder(w, "one", cases[:1]), case_folder(w, f"all{len(cases)}", cases)
    for row, cmd in rows(w, plans).items():
        if (only and row not in only) or "all" in done.get(row, {}):
            continue
        slug = "".join(c if c.isalnum() else "_" for c in row)
        env = w.env_theirs if "nnU-Net" in row else w.env_ours
        if "autoseg" in row:  # untimed: engine auto measures once per model and caches; neither timed run pays it
            w.run(cmd + ["-i", str(one), "-o", str(w.work / "predictions" / "warmup")], env)
        r = {"load_before": os.getloadavg()[0]}
        for tag, inp in (("one", one), ("all", all_)):
            out = w.work / "predictions" / (plans + ("_large" if " large" in key else "")) / f"{slug}_{tag}"
            shutil.rmtree(out, ignore_errors=True)
            r[tag] = w.run(cmd + ["-i", str(inp), "-o", str(out)], env)
        r["load_after"] = os.getloadavg()[0]
        r["steady"] = (r["all"] - r["one"]) / max(1, len(cases) - 1)
        done[row] = r
        w.save(state)


def retime_one(w: Work, plans: str, cases: list[str], only: list[str]) -> None:
    """Repeat a row's one-case command after its all-cases run left the caches warm (a row measured
    before the warm-up above existed paid engine auto's one-off measurement in its one-case run only)."""
    state = w.state()
    done = state[f"{plans}:{len(cases)}" + (" large" if cases[0].startswith("RealCTLarge") else "")]
    one = case_folder(w, "one", cases[:1])
    for row, cmd in rows(w, plans).items():
        if row in (only or []) and row in done:
            out = w.work / "predictions" / plans / "retime_one"
            shutil.rmtree(out, ignore_errors=True)
            r = done[row]
            r["one_cold"], r["one"] = r["one"], w.run(cmd + ["-i", str(one), "-o", str(out)], w.env_ours)
            r["steady"] = (r["all"] - r["one"]) / max(1, len(cases) - 1)
            w.save(state)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.peer_env import default_venv

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["prepare", "run", "report", "roofline"])
    ap.add_argument("--work", type=Path, default=REPO / "bench_work" / "equal_work")
    ap.add_argument("--venv", type=Path, default=default_venv())
    ap.add_argument("--large", type=int, default=2, help="512x512x200 variants to write")
    ap.add_argument("--network-scale", type=float, nargs="*", default=[0.25],
                    help="also plan nnU-Net's network with features scaled by these factors")
    ap.add_argument("--plans", default="nnUNetPlans")
    ap.add_argument("--cases", type=int, default=5, help="real-sized cases per row (the first N)")
    ap.add_argument("--rows", nargs="*", default=None, help="only these rows")
    ap.add_argument("--large-cases", action="store_true", help="run the 512x512x200 cases (prepare --large N)")
    ap.add_argument("--tag", default="", help="store the rows under their own key (a repeat of rows already run)")
    ap.add_argument("--retime-one", action="store_true",
                    help="time the one-case command of --rows again (warm caches) and recompute their steady state")
    args = ap.parse_args(argv)
    w = Work(args.work, args.venv)
    w.work.mkdir(parents=True, exist_ok=True)
    if args.what == "prepare":
        prepare(w, args.large, args.network_scale)
    elif args.what == "run":
        names = sorted(p.name[:-12] for p in ((w.large if args.large_cases else w.raw) / "imagesTr").glob("*_0000.nii.gz"))
        if args.retime_one:
            retime_one(w, args.plans, names[:args.cases], args.rows)
        else:
            run(w, args.plans, names[:args.cases], args.rows, args.tag)
    elif args.what == "roofline":
        from benchmarks.equal_work_report import roofline

        roofline(w)
    else:
        from benchmarks.equal_work_report import report

        report(w)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
