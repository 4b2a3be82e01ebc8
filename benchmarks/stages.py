"""The benchmark's stages, run side by side: preprocess, train, infer (see benchmarks.run)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks import harness, inputs
from benchmarks.measure import Measurement, run_measured
from benchmarks.nnunet_plans import autoseg_plans_from_nnunet, describe
from benchmarks.report import (OURS, THEIRS, Report, git_commit, load_average, machine_info, now_utc,
                               shell_join)
from benchmarks.rows import WeightSet, rows

if TYPE_CHECKING:
    from benchmarks.run import Settings

log = logging.getLogger("benchmarks")
STAGES = ("preprocess", "train", "infer")
class Bench:
    """One harness run: owns the settings, the two tools, the report and the list of failures."""

    def __init__(self, s: "Settings"):
        self.s = s
        self.work = harness.Work(s.work)
        self.work.logs.mkdir(parents=True, exist_ok=True)
        iters = s.warmup_iters + s.measured_iters + 1  # N steps give N-1 start-to-start intervals
        self.ours = harness.Ours(self.work, s.task, s.device, s.num_workers)
        self.theirs = harness.Theirs(self.work, s.task, s.device, s.num_workers, s.venv, iterations=iters)
        self.train_iters = iters
        self.failures: list[str] = []
        self.foreign: list[float] = []  # per command: mean number of other running processes
        self.dataset = ""
        self.report = Report(title=self.title, rows=self.report_rows())
        self.report.meta.update({"date": now_utc(), "machine": machine_info(), "commit": git_commit(harness.REPO),
                                 "mode": s.describe(),
                                 "regenerate": "`python -m benchmarks.run" + ("" if s.mode == "full" else " " + s.mode)
                                               + "`"})

    title = "autoseg vs nnU-Net v2.8.1, side by side"

    def report_rows(self) -> list:
        return rows(self.s.quick, self.s.their_default_tta, [WeightSet()])

    # ----- running one command ---------------------------------------------------------------------------
    def measure(self, tool, cmd: list[str], tag: str, env: dict[str, str] | None = None) -> Measurement | None:
        env_extra = {**(tool.env() if tool is not None else {}), **(env or {})}
        log_path = self.work.logs / f"{tag}.log"
        line = self.portable(shell_join(cmd, env_extra))
        if line not in self.report.commands:
            self.report.commands.append(line)
        m = run_measured(cmd, env={**os.environ, **env_extra}, cwd=harness.REPO, log_path=log_path,
                         timeout=self.s.timeout_s, gpu=self.s.device == "cuda")
        self.foreign.append(m.foreign_running_mean)
        state = "TIMED OUT" if m.timed_out else ("ok" if m.returncode == 0 else f"FAILED rc={m.returncode}")
        log.info("%-28s %-6s %s: %.1f s, peak RSS %.0f MB, PSS %.0f MB%s, %.2f other running processes (log %s)",
                 tag, getattr(tool, "name", ""), state, m.wall_s, m.peak_rss_mb, m.peak_pss_mb,
                 f", GPU {m.peak_gpu_mb:.0f} MB" if m.peak_gpu_mb is not None else "", m.foreign_running_mean,
                 log_path)
        if m.returncode != 0:
            tail = "\n".join(Path(log_path).read_text(errors="replace").splitlines()[-15:])
            self.failures.append(f"{tag} ({getattr(tool, 'name', '')}): {state}; log {log_path}")
            log.error("%s failed; last lines:\n%s", tag, tail)
            return None
        return m

    def portable(self, line: str) -> str:
        """A command line with this machine's folders replaced by the variables defined above the list."""
        for path, var in ((str(self.s.venv), "$PEER_VENV"), (str(self.work.root), "$WORK"),
                          (sys.executable, "python"), (str(harness.REPO) + "/", "")):
            line = line.replace(path, var)
        return line

    def record_common(self, stage: str, tool: str, m: Measurement, repeat: int) -> None:
        self.report.add(stage, "wall_s", tool, m.wall_s, repeat)
        self.report.add(stage, "peak_rss_mb", tool, m.peak_rss_mb, repeat)
        self.report.add(stage, "peak_pss_mb", tool, m.peak_pss_mb, repeat)
        self.report.add(stage, "peak_gpu_mb", tool, m.peak_gpu_mb, repeat)

    # ----- the run ---------------------------------------------------------------------------------------------
    def run(self) -> Report:
        self.load_at_start = load_average()
        self.make_phantoms()
        self.stage_preprocess("preprocess" in self.s.stages)
        if "train" in self.s.stages or "infer" in self.s.stages:
            self.stage_train("train" in self.s.stages)
        if "infer" in self.s.stages:
            self.stage_infer()
        self.report.meta["load average (1/5/15 min)"] = (f"{self.load_at_start} at the start, {load_average()} "
                                                         f"at the end")
        busy = self.busy_warning()
        if busy:
            self.report.notes.insert(0, busy)
        if self.s.device == "cpu":
            self.report.notes.append("stage 4 (the same stages on CUDA, plus peak GPU memory) runs with "
                                     "`--device cuda` on a GPU machine; this run used the CPU only")
        self.report.notes += [f"FAILED: {f}" for f in self.failures]
        work = os.path.relpath(self.work.root, harness.REPO) if self.work.root.is_relative_to(harness.REPO) \
            else str(self.work.root)
        self.report.commands.insert(0, f"# run from the repository root; WORK={work} "
                                       f"PEER_VENV={self.s.venv}; python = autoseg's environment")
        return self.report

    def busy_warning(self) -> str | None:
        """A warning when other work competed for the CPU: absolute times, and ratios, are then noisy."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        worst = max(self.foreign, default=0.0)
        if worst < 0.25 * cores:
            return None
        return (f"**machine busy**: processes outside the benchmark were running during these measurements (on "
                f"average up to {worst:.1f} at a time, on {cores} cores; mean over all commands "
                f"{sum(self.foreign) / len(self.foreign):.1f}). Times, training above all, can then be off by a "
                f"factor of 2 or more even though the tools alternate: rerun on a quiet machine before quoting them.")

    def make_phantoms(self) -> None:
        s = self.s
        spec = {"task": s.task, "seed": s.seed, "size": s.size, "num_train": s.n_train, "num_test": s.n_test}
        try:
            ds = harness.find_dataset(self.work.raw, s.task)
        except RuntimeError:
            ds = None
        if not inputs.phantoms_ready(ds, spec):
            for old in self.work.raw.glob(f"Dataset{s.task:03d}_*"):
                shutil.rmtree(old)
            m = self.measure(None, self.ours.make_phantoms(s.n_train, s.n_test, s.seed, s.size), "make_phantoms")
            if m is None:
                raise SystemExit("autoseg make_phantoms failed; see the log above")
            ds = harness.find_dataset(self.work.raw, s.task)
            inputs.mark_phantoms(ds, spec)
        self.raw_dataset = ds
        self.dataset = ds.name
        self.case_ids = inputs.prepare_inference_input(ds, self.work.infer_images, self.work.infer_labels,
                                                       s.infer_cases, s.infer_max_shape)
        shapes = inputs.image_shapes(self.work.infer_images)
        self.report.setup.append(f"dataset `{ds.name}`: `autoseg make_phantoms` seed {s.seed}, size '{s.size}', "
                                 f"{s.n_train} training + {s.n_test} test cases, nnU-Net v2 raw format, one copy "
                                 f"read by both tools")
        crop = f", cropped around the anatomy to at most {s.infer_max_shape} voxels" if s.infer_max_shape else ""
        self.report.setup.append(f"inference input: {len(self.case_ids)} test case(s), shapes (z, y, x) "
                                 f"{', '.join(str(list(x)) for x in shapes)}{crop}")

    # ----- stage 1: fingerprint + planning + preprocessing ------------------------------------------------------
    def _pre_dir(self, tool: str) -> Path:
        return self.work.pre(tool) / self.dataset

    def _preprocess_theirs(self, repeat: int, record: bool) -> bool:
        self.theirs.clear_preprocessed(self.dataset)
        m = self.measure(self.theirs, self.theirs.preprocess(), f"preprocess_{repeat}_theirs")
        if m is None:
            return False
        mk = harness.markers(Path(m.log_path).read_text(errors="replace"))
        if record:
            self.record_common("preprocess", THEIRS, m, repeat)
            if {"fingerprint_s", "plan_s", "preprocess_s"} <= set(mk):
                self.report.add("preprocess", "analysis_s", THEIRS, mk["fingerprint_s"][-1] + mk["plan_s"][-1], repeat)
                self.report.add("preprocess", "per_case_s", THEIRS, mk["preprocess_s"][-1] / self.s.n_train, repeat)
        self.write_shared_plans()
        return True

    def _preprocess_ours(self, repeat: int, record: bool) -> bool:
        self.ours.clear_preprocessed(self.dataset)
        m = self.measure(self.ours, self.ours.preprocess(), f"preprocess_{repeat}_ours")
        if m is None:
            return False
        if record:
            self.record_common("preprocess", OURS, m, repeat)
            ph = harness.our_phases(Path(m.log_path).read_text(errors="replace"))
            if ph:
                self.report.add("preprocess", "analysis_s", OURS, ph["verify_s"] + ph["fingerprint_s"] + ph["plan_s"],
                                repeat)
                self.report.add("preprocess", "per_case_s", OURS, ph["preprocess_s"] / self.s.n_train, repeat)
        return True

    def write_shared_plans(self) -> None:
        """nnU-Net's plan -> nnUNetPlansBench.json (maybe capped patch) -> autoseg plans file."""
        pre = self._pre_dir(THEIRS)
        bench = harness.write_bench_plans(pre, self.s.patch_cap, self.s.features_scale, self.s.spacing)
        if harness.needs_own_preprocessing(pre, bench):
            if self.measure(self.theirs, self.theirs.preprocess_bench_plans(), "preprocess_bench_plans_theirs") is None:
                raise SystemExit("nnU-Net preprocessing for the bench plans failed; see the log above")
        dataset_json = json.loads((self.raw_dataset / "dataset.json").read_text())
        ours = autoseg_plans_from_nnunet(bench, dataset_json, "3d_fullres", self.dataset)
        self.work.our_plans_file.parent.mkdir(parents=True, exist_ok=True)
        self.work.our_plans_file.write_text(json.dumps(ours, indent=2))
        self.shared_plans = ours
        self.num_classes = len(dataset_json["labels"])

    def stage_preprocess(self, record: bool) -> None:
        """Timed when ``record``; otherwise run once only if a tool's preprocessed data is missing."""
        if not record:
            if not (self._pre_dir(THEIRS) / "nnUNetPlans.json").is_file():
                self._preprocess_theirs(0, False)
            else:
                self.write_shared_plans()
            if not (self._pre_dir(OURS) / "plans.json").is_file():
                self._preprocess_ours(0, False)
            self._describe_setup()
            return
        # nnU-Net plans first: autoseg is then given nnU-Net's choices. Order: theirs, ours, theirs, ours...
        for r in range(self.s.repeats_preprocess):
            if not self._preprocess_theirs(r, True) and r == 0:
                return
            self._preprocess_ours(r, True)
        self._describe_setup()

    def _describe_setup(self) -> None:
        plans = getattr(self, "shared_plans", None)
        if plans is None:
            return
        s = self.s
        changes = [f"patch capped to {s.patch_cap}"] if s.patch_cap else []
        changes += [f"features x{s.features_scale}"] if s.features_scale and s.features_scale != 1 else []
        changes += [f"spacing {s.spacing} mm, preprocessed again by nnU-Net"] if s.spacing else []
        cap = f" (for {s.mode}: {', '.join(changes)})" if changes else ""
        self.report.setup.append(f"nnU-Net's 3d_fullres plan, given to both tools{cap}: {describe(plans)}; "
                                 f"{plans['stages']['organ']['network']['kernel_sizes']} kernels, strides "
                                 f"{plans['stages']['organ']['network']['strides']}")
        self.report.setup.append(f"preprocessing: `-np {s.num_workers}` worker processes for both; nnU-Net "
                                 f"runs its planner, autoseg reads the translated plans file "
                                 f"(`--plans`, its planner is skipped)"
                                 + (f"; per-case time = each tool's own preprocessing-phase time / {s.n_train} cases"
                                    if "preprocess" in s.stages else ""))

    # ----- stage 2: training throughput ------------------------------------------------------------------------
    def _checkpoint(self, tool: str, trainer: str | None = None, name: str = "checkpoint_final.pth") -> Path:
        if tool == OURS:
            return (self.work.results(OURS) / self.dataset / "organ" / (trainer or harness.OUR_TRAINER) / "fold_all"
                    / "checkpoint_final.pt")
        return self.theirs.trainer_dir(self.dataset, trainer or harness.THEIR_TRAINER) / "fold_all" / name

    def _train(self, tool, repeat: int, record: bool) -> None:
        tool.clear_results(self.dataset)
        cmd = self.ours.train(self.train_iters) if tool is self.ours else self.theirs.train()
        m = self.measure(tool, cmd, f"train_{repeat}_{tool.name}")
        if m is None or not record:
            return
        self.record_common("train", tool.name, m, repeat)
        its = harness.markers(Path(m.log_path).read_text(errors="replace")).get("iteration_s", [])
        timed = its[self.s.warmup_iters:]
        if not timed:
            self.failures.append(f"train_{repeat} ({tool.name}): no AUTOSEG_BENCH iteration_s lines after the "
                                 f"warm-up in {m.log_path}")
            return
        med = statistics.median(timed)
        self.report.add("train", "iter_s", tool.name, med, repeat)
        self.report.add("train", "iters_per_s", tool.name, 1.0 / med, repeat)
        log.info("   %s iterations (s): %s", tool.name, ", ".join(f"{x:.2f}" for x in its))

    def stage_train(self, record: bool) -> None:
        if not record:
            for tool in (self.ours, self.theirs):
                if not self._checkpoint(tool.name).is_file():
                    self._train(tool, 0, False)
            return
        for r in range(self.s.repeats_train):
            for tool in (self.ours, self.theirs):
                self._train(tool, r, True)
        ours_p, theirs_p = self.parameter_counts()
        amp = "bf16 autocast where the CPU has bf16 units, fp16 autocast on CUDA" if self.s.device == "cpu" else \
            "fp16 autocast"
        self.report.setup.append(
            f"training: fold 'all' ({self.s.n_train} cases), 1 epoch of {self.train_iters} iterations + 1 "
            f"validation iteration, no final validation; the first {self.s.warmup_iters} interval(s) are warm-up; "
            f"iteration time = start of one train_step to the start of the next (includes waiting for data), "
            f"median over the {self.s.measured_iters} timed intervals. Trainers: `benchmarks/ours/"
            f"{harness.OUR_TRAINER}.py`, `benchmarks/peer/trainers/{harness.THEIR_TRAINER}.py`. "
            + _precision_text(amp) + f" Parameters with deep-supervision heads: autoseg {ours_p}, nnU-Net {theirs_p}")

    def parameter_counts(self) -> tuple[str, str]:
        plans = getattr(self, "shared_plans", None)
        if plans is None:
            return "?", "?"
        code = ("import json,sys\nfrom autoseg.networks import build_network\n"
                "net=json.load(open(sys.argv[1]))['stages']['organ']['network']\n"
                "n=build_network(net,1,int(sys.argv[2]),deep_supervision=True)\n"
                "print('AUTOSEG_BENCH parameters=%d' % sum(p.numel() for p in n.parameters()))\n")
        counts = []
        for cmd, env in (([sys.executable, "-c", code, str(self.work.our_plans_file), str(self.num_classes)], {}),
                         (self.theirs.parameter_count_cmd(self._pre_dir(THEIRS) / f"{harness.BENCH_PLANS}.json",
                                                          self.num_classes), self.theirs.env())):
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=harness.REPO, env={**os.environ, **env})
            mk = harness.markers(out.stdout).get("parameters")
            counts.append(f"{int(mk[0]):,}" if mk else "?")
        return counts[0], counts[1]

    # ----- stage 3: inference + agreement with the ground truth ----------------------------------------------
    def _dsc(self, pred_dir: Path, labels: Path | None = None) -> tuple[float | None, float | None]:
        """(mean DSC over all labels, mean over organ labels: those not in dataset.json's tumour_labels)."""
        labels = labels or self.work.infer_labels
        if not any(labels.iterdir()):
            return None, None
        out = pred_dir / "evaluation"
        dataset_json = self.raw_dataset / "dataset.json"
        cmd = [sys.executable, "-m", "autoseg", "evaluate", "-g", str(labels), "-p", str(pred_dir),
               "-o", str(out), "--labels", str(dataset_json), "--no-progress"]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=harness.REPO)
        summary = out / "summary.json"
        if res.returncode != 0 or not summary.is_file():
            self.failures.append(f"evaluate {pred_dir}: rc={res.returncode}: {res.stderr.strip()[-300:]}")
            return None, None
        summ = json.loads(summary.read_text())
        tumours = set(json.loads(dataset_json.read_text()).get("tumour_labels", []))
        organs = [c["dsc"]["mean"] for name, c in summ["per_class"].items()
                  if name not in tumours and c["dsc"]["mean"] is not None]
        return summ["mean"]["dsc"], (statistics.fmean(organs) if organs else None)

    def _infer(self, tool, ws: "WeightSet", variant: str, tta: bool, repeat: int) -> None:
        stage = f"infer, {'defaults' if variant == 'default' else 'TTA off'}{ws.suffix}"
        out = self.work.predictions(tool.name, variant + ws.tag, repeat)
        shutil.rmtree(out, ignore_errors=True)
        cmd = self.ours.predict(out, tta, ws.our_trainer) if tool is self.ours else \
            self.theirs.predict(out, tta, ws.their_checkpoint, ws.their_trainer)
        m = self.measure(tool, cmd, f"infer_{variant}{ws.tag}_{repeat}_{tool.name}")
        if m is None:
            return
        self.record_common(stage, tool.name, m, repeat)
        self.report.add(stage, "per_case_s", tool.name, m.wall_s / max(1, len(self.case_ids)), repeat)
        dsc, organ_dsc = self._dsc(out)
        self.report.add(stage, "dsc", tool.name, dsc, repeat)
        self.report.add(stage, "organ_dsc", tool.name, organ_dsc, repeat)
        profile = out / "profile.json"
        if profile.is_file():  # autoseg --profile: per-case totals, start-up excluded
            cases = json.loads(profile.read_text()).get("cases", {})
            totals = [c["total"] for c in cases.values() if isinstance(c, dict) and "total" in c]
            self.report.add(stage, "profile_case_s", tool.name, statistics.median(totals) if totals else None, repeat)

    def weight_sets(self) -> list["WeightSet"]:
        """The models to predict with: here each tool's own few-iteration checkpoint of stage 2."""
        return [WeightSet()]

    def prepare_inference(self) -> bool:
        for name in (OURS, THEIRS):
            if not self._checkpoint(name).is_file():
                self.failures.append(f"infer ({name}): no trained checkpoint at {self._checkpoint(name)}")
        return True

    def inference_models_text(self) -> str:
        return ("checkpoint of the training stage (few iterations: DSC shows that both pipelines run end to end and "
                "write correct geometry, not model quality)")

    def stage_infer(self) -> None:
        if not self.prepare_inference():
            return
        for ws in self.weight_sets():
            for r in range(self.s.repeats_infer):
                for tool in (self.ours, self.theirs):
                    self._infer(tool, ws, "notta", False, r)
            # autoseg's default inference is TTA off: the same command, so its samples serve both rows
            for smp in [x for x in self.report.samples if x.stage == f"infer, TTA off{ws.suffix}" and x.tool == OURS]:
                self.report.add(f"infer, defaults{ws.suffix}", smp.metric, OURS, smp.value, smp.repeat)
            if self.s.their_default_tta:
                self._infer(self.theirs, ws, "default", True, 0)
        self.report.setup.append(
            f"inference: {self.inference_models_text()}; autoseg `--profile` on, nnU-Net with its default "
            "worker counts; per-case time = whole command wall time / cases, so it includes start-up and model "
            "loading; DSC by `autoseg evaluate` (one metric implementation for both)")


def _precision_text(our_default: str) -> str:
    """What the training rows compare: each tool's default precision, or both at AUTOSEG_BENCH_PRECISION."""
    wanted = os.environ.get("AUTOSEG_BENCH_PRECISION", "")
    if wanted in ("fp32", "bf16"):
        how = "float32" if wanted == "fp32" else "CPU bf16 autocast (nnU-Net's unchanged step under torch.autocast)"
        return (f"Each tool's default data-loading workers; **both tools train in {how}** "
                f"(AUTOSEG_BENCH_PRECISION={wanted}).")
    return (f"Each tool's default data-loading workers and precision (autoseg: {our_default}; nnU-Net: fp32 on "
            f"CPU, fp16 autocast on CUDA).")
