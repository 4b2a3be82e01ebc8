"""The two tools under test, as commands: autoseg ("ours") and nnU-Net v2 ("theirs").

Each method returns the exact command and the environment variables it needs; ``benchmarks.run``
measures them with :func:`benchmarks.measure.run_measured`. Both tools read the same raw dataset;
each writes its preprocessed data and results under its own folder of the work directory, so neither
can reuse the other's files. Per-phase times come from each tool's own output: autoseg logs its
plan_and_preprocess phases, the nnU-Net side runs through ``peer/timed_plan_and_preprocess.py``, and
both short trainers print ``AUTOSEG_BENCH iteration_s=...`` lines.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks import peer_env

REPO = Path(__file__).resolve().parent.parent
OUR_TRAINER_DIR = Path(__file__).resolve().parent / "ours"
OUR_TRAINER = "AutosegBenchTrainer"
THEIR_TRAINER = peer_env.TRAINER_NAME
# --quality: each tool trains one model with the same short recipe; each model then runs in both predictors
OUR_QUALITY_TRAINER = "AutosegBenchFastTrainer"
THEIR_QUALITY_TRAINER = "nnUNetTrainerAutosegBenchFast"
SHARED_CHECKPOINT = "checkpoint_autoseg_weights.pth"  # autoseg's model in nnU-Net's checkpoint format
FROM_NNUNET = "nnUNetWeights"  # autoseg results folder holding nnU-Net's model in autoseg's format
BENCH_PLANS = "nnUNetPlansBench"        # nnU-Net plans identifier both trainings use (see write_bench_plans)
MARKER_RE = re.compile(r"AUTOSEG_BENCH (\w+)=([-+0-9.eE]+)")
OUR_PHASES_RE = re.compile(r"plan_and_preprocess \S+: verify ([0-9.]+)s, fingerprint ([0-9.]+)s, "
                           r"plan ([0-9.]+)s, preprocess ([0-9.]+)s")


def markers(text: str) -> dict[str, list[float]]:
    """All ``AUTOSEG_BENCH name=value`` markers of a log, by name, in order."""
    out: dict[str, list[float]] = {}
    for name, value in MARKER_RE.findall(text):
        out.setdefault(name, []).append(float(value))
    return out


def our_phases(text: str) -> dict[str, float] | None:
    """autoseg plan_and_preprocess's own phase times (the last such log line), or None."""
    found = OUR_PHASES_RE.findall(text)
    if not found:
        return None
    verify, fingerprint, plan, preprocess = (float(x) for x in found[-1])
    return {"verify_s": verify, "fingerprint_s": fingerprint, "plan_s": plan, "preprocess_s": preprocess}


@dataclass
class Work:
    """Folder layout of one benchmark run."""

    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def pre(self, tool: str) -> Path:
        return self.root / tool / "preprocessed"

    def results(self, tool: str) -> Path:
        return self.root / tool / "results"

    def predictions(self, tool: str, variant: str, repeat: int) -> Path:
        return self.root / tool / "predictions" / f"{variant}_{repeat}"

    @property
    def infer_images(self) -> Path:
        return self.root / "infer_input" / "images"

    @property
    def infer_labels(self) -> Path:
        return self.root / "infer_input" / "labels"

    @property
    def body_images(self) -> Path:
        """--quality's control: the inference images cropped to autoseg's body box."""
        return self.root / "infer_input" / "body_images"

    @property
    def body_labels(self) -> Path:
        return self.root / "infer_input" / "body_labels"

    @property
    def our_plans_file(self) -> Path:
        return self.root / "ours" / "plans_from_nnunet.json"


class Ours:
    """autoseg, run with the interpreter that runs the harness (autoseg's own environment)."""

    name = "ours"

    def __init__(self, work: Work, task: int, device: str, num_workers: int):
        self.work, self.task, self.device, self.np = work, task, device, num_workers
        self.python = sys.executable

    def env(self) -> dict[str, str]:
        return {"AUTOSEG_RAW": str(self.work.raw), "AUTOSEG_PREPROCESSED": str(self.work.pre(self.name)),
                "AUTOSEG_RESULTS": str(self.work.results(self.name)), "AUTOSEG_TRAINER_PATH": str(OUR_TRAINER_DIR),
                "AUTOSEG_BENCH_VAL_ITERS": "1", "PYTHONUNBUFFERED": "1"}

    def _cli(self, *args: str) -> list[str]:
        return [self.python, "-m", "autoseg", *args]

    def make_phantoms(self, n_train: int, n_test: int, seed: int, size: str) -> list[str]:
        return self._cli("make_phantoms", "-o", str(self.work.raw), "--id", str(self.task), "--num-train",
                         str(n_train), "--num-test", str(n_test), "--seed", str(seed), "--size", size,
                         "-np", str(self.np), "--no-progress")

    def clear_preprocessed(self, dataset: str) -> None:
        shutil.rmtree(self.work.pre(self.name) / dataset, ignore_errors=True)

    def preprocess(self) -> list[str]:
        return self._cli("plan_and_preprocess", "-t", str(self.task), "--plans", str(self.work.our_plans_file),
                         "-np", str(self.np), "--no-progress")

    def train(self, iterations: int, epochs: int = 1, trainer: str = OUR_TRAINER) -> list[str]:
        return self._cli("run_training", "organ", trainer, str(self.task), "all", "--epochs", str(epochs),
                         "--iters-per-epoch", str(iterations), "--device", self.device)

    def clear_results(self, dataset: str, trainer: str = OUR_TRAINER) -> None:
        """Only this trainer's folder: --quality's model (another trainer) must survive the timing runs."""
        shutil.rmtree(self.work.results(self.name) / dataset / "organ" / trainer, ignore_errors=True)

    def predict(self, out_dir: Path, tta: bool, trainer: str = OUR_TRAINER) -> list[str]:
        cmd = self._cli("run_inference", "-i", str(self.work.infer_images), "-o", str(out_dir), "-t", str(self.task),
                        "-tr", trainer, "-f", "all", "--device", self.device, "--profile")
        return cmd + (["--tta"] if tta else [])


class Theirs:
    """nnU-Net v2.8.1 from the isolated peer venv (benchmarks.peer_env)."""

    name = "theirs"

    def __init__(self, work: Work, task: int, device: str, num_workers: int, venv: Path,
                 iterations: int = 4):
        self.work, self.task, self.device, self.np, self.venv = work, task, device, num_workers, Path(venv)
        self.iterations = iterations

    def env(self) -> dict[str, str]:
        return {"nnUNet_raw": str(self.work.raw), "nnUNet_preprocessed": str(self.work.pre(self.name)),
                "nnUNet_results": str(self.work.results(self.name)),
                "nnUNet_extTrainer": str(peer_env.PEER_TRAINER_DIR), "AUTOSEG_BENCH_EPOCHS": "1",
                "AUTOSEG_BENCH_ITERS": str(self.iterations), "AUTOSEG_BENCH_VAL_ITERS": "1",
                "PYTHONUNBUFFERED": "1"}

    def clear_preprocessed(self, dataset: str) -> None:
        shutil.rmtree(self.work.pre(self.name) / dataset, ignore_errors=True)

    def preprocess(self) -> list[str]:
        return [str(peer_env.peer_python(self.venv)), str(peer_env.PEER_DIR / "timed_plan_and_preprocess.py"),
                "-d", str(self.task), "-c", "3d_fullres", "-np", str(self.np)]

    def preprocess_bench_plans(self) -> list[str]:
        """nnU-Net's own preprocessing for the bench plans (needed when they change the spacing)."""
        return [str(peer_env.peer_bin(self.venv, "nnUNetv2_preprocess")), "-d", str(self.task), "-plans_name",
                BENCH_PLANS, "-c", "3d_fullres", "-np", str(self.np)]

    def train(self, trainer: str = THEIR_TRAINER) -> list[str]:
        """Epochs and iterations come from the environment (``env``; ``quality_env`` for --quality)."""
        return [str(peer_env.peer_bin(self.venv, "nnUNetv2_train")), str(self.task), "3d_fullres", "all",
                "-tr", trainer, "-p", BENCH_PLANS, "-device", self.device]

    def trainer_dir(self, dataset: str, trainer: str = THEIR_TRAINER) -> Path:
        """nnU-Net's results folder of one trainer with the bench plans (``TRAINER__PLANS__CONFIG``)."""
        return self.work.results(self.name) / dataset / f"{trainer}__{BENCH_PLANS}__3d_fullres"

    def clear_results(self, dataset: str, trainer: str = THEIR_TRAINER) -> None:
        """Only this trainer's folder: --quality's model (another trainer) must survive the timing runs."""
        shutil.rmtree(self.trainer_dir(dataset, trainer), ignore_errors=True)

    @staticmethod
    def quality_env(epochs: int, iterations: int) -> dict[str, str]:
        return {"AUTOSEG_BENCH_EPOCHS": str(epochs), "AUTOSEG_BENCH_ITERS": str(iterations)}

    def predict(self, out_dir: Path, tta: bool, checkpoint: str | None = None,
                trainer: str = THEIR_TRAINER, images: Path | None = None) -> list[str]:
        cmd = [str(peer_env.peer_bin(self.venv, "nnUNetv2_predict")), "-i", str(images or self.work.infer_images),
               "-o", str(out_dir), "-d", str(self.task), "-c", "3d_fullres", "-p", BENCH_PLANS,
               "-tr", trainer, "-f", "all", "-device", self.device]
        return cmd + ([] if tta else ["--disable_tta"]) + (["-chk", checkpoint] if checkpoint else [])

    def shared_weights(self, source: Path, template: Path, bench_plans: Path, out: Path,
                       reverse: bool = False) -> list[str]:
        """Convert one tool's trained weights into the other's checkpoint (see peer/shared_weights.py)."""
        return [str(peer_env.peer_python(self.venv)), str(peer_env.PEER_DIR / "shared_weights.py"),
                *(["--reverse"] if reverse else []), str(source), str(template), str(bench_plans), str(out)]

    def parameter_count_cmd(self, plans_file: Path, num_classes: int) -> list[str]:
        code = ("import json,sys\n"
                "from nnunetv2.utilities.get_network_from_plans import get_network_from_plans\n"
                "a=json.load(open(sys.argv[1]))['configurations']['3d_fullres']['architecture']\n"
                "n=get_network_from_plans(a['network_class_name'],a['arch_kwargs'],a['_kw_requires_import'],"
                "1,int(sys.argv[2]),deep_supervision=True)\n"
                "print('AUTOSEG_BENCH parameters=%d' % sum(p.numel() for p in n.parameters()))\n")
        return [str(peer_env.peer_python(self.venv)), "-c", code, str(plans_file), str(num_classes)]


# ----- the shared training configuration ----------------------------------------------------------------
def total_stride(strides: list[list[int]]) -> list[int]:
    out = [1, 1, 1]
    for s in strides:
        out = [a * int(b) for a, b in zip(out, s)]
    return out


def capped_patch(patch: list[int], strides: list[list[int]], cap: list[int] | None) -> list[int]:
    """``patch`` shrunk to at most ``cap`` per axis, kept a multiple of the network's total stride."""
    if not cap:
        return [int(p) for p in patch]
    stride = total_stride(strides)
    return [int(min(p, max(s, (c // s) * s))) for p, c, s in zip(patch, cap, stride)]


def write_bench_plans(pre_dataset: Path, patch_cap: list[int] | None, features_scale: float | None = None,
                      spacing: list[float] | None = None) -> dict:
    """Copy nnU-Net's ``nnUNetPlans.json`` to ``nnUNetPlansBench.json`` with optional reductions that keep a
    CPU run affordable: a smaller 3d_fullres patch (``--quick``), every stage's features times
    ``features_scale`` and another target ``spacing`` (``--quality``). Both tools train and predict with this
    configuration, so their work stays equal. Unless the spacing changes, nnU-Net's preprocessed data
    folder is reused; a new spacing gets its own data identifier (see :func:`needs_own_preprocessing`).
    Returns the bench plans."""
    plans = json.loads((pre_dataset / "nnUNetPlans.json").read_text())
    plans["plans_name"] = BENCH_PLANS
    cfg = plans["configurations"]["3d_fullres"]
    kw = cfg["architecture"]["arch_kwargs"]
    cfg["patch_size"] = capped_patch(cfg["patch_size"], kw["strides"], patch_cap)
    if features_scale and features_scale != 1:
        kw["features_per_stage"] = [max(4, int(round(f * features_scale))) for f in kw["features_per_stage"]]
    if spacing:
        cfg["spacing"] = [float(s) for s in spacing]
        cfg["data_identifier"] = f"{BENCH_PLANS}_3d_fullres"
    (pre_dataset / f"{BENCH_PLANS}.json").write_text(json.dumps(plans, indent=2))
    return plans


def needs_own_preprocessing(pre_dataset: Path, bench_plans: dict) -> bool:
    """True when the bench plans read a data folder nnU-Net has not written yet (a changed spacing)."""
    ident = bench_plans["configurations"]["3d_fullres"]["data_identifier"]
    folder = pre_dataset / ident
    return not folder.is_dir() or not any(folder.iterdir())


def find_dataset(root: Path, task: int) -> Path:
    hits = sorted(p for p in root.glob(f"Dataset{task:03d}_*") if p.is_dir())
    if len(hits) != 1:
        raise RuntimeError(f"{root}: expected one Dataset{task:03d}_* folder, found {[h.name for h in hits]}")
    return hits[0]
