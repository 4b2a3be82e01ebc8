"""The rows of the side-by-side report: what each stage measures, in which unit, which way is better."""
from __future__ import annotations

from dataclasses import dataclass

from benchmarks import harness
from benchmarks.report import Row

FEW_ITERATIONS = "few-iteration models: shows both run end to end, not model quality"


@dataclass(frozen=True)
class WeightSet:
    """One model given to the inference stage: which checkpoint each tool's predictor loads, and how
    its rows are labelled (``suffix`` on the stage name, ``tag`` in folder and log names)."""

    suffix: str = ""
    tag: str = ""
    our_trainer: str = harness.OUR_TRAINER
    their_trainer: str = harness.THEIR_TRAINER
    their_checkpoint: str | None = None
    reading: str = FEW_ITERATIONS


def infer_rows(ws: WeightSet, tta_note: str | None) -> list[Row]:
    off, dflt = f"infer, TTA off{ws.suffix}", f"infer, defaults{ws.suffix}"
    return [
        Row(off, "per_case_s", "wall time per case (command incl. start-up / cases)", "s"),
        Row(off, "profile_case_s", "per case, tool's own timer (excl. start-up)", "s",
            note="nnU-Net logs no per-case time"),
        Row(off, "peak_rss_mb", "peak RSS, process tree (sum)", "MB", digits=0),
        Row(off, "peak_pss_mb", "peak PSS, process tree (sum)", "MB", digits=0),
        Row(off, "peak_gpu_mb", "peak GPU memory (nvidia-smi)", "MB", digits=0, note="CPU run"),
        Row(off, "dsc", "mean DSC vs ground truth", "", better="higher", digits=3, reading=ws.reading),
        Row(off, "organ_dsc", "mean organ DSC (tumour labels left out)", "", better="higher", digits=3,
            reading=ws.reading),
        Row(dflt, "per_case_s", "wall time per case (ours: TTA off; nnU-Net: 8-mirror TTA)", "s", note=tta_note),
        Row(dflt, "peak_rss_mb", "peak RSS, process tree (sum)", "MB", digits=0, note=tta_note),
        Row(dflt, "dsc", "mean DSC vs ground truth", "", better="higher", digits=3, note=tta_note,
            reading=ws.reading),
        Row(dflt, "organ_dsc", "mean organ DSC (tumour labels left out)", "", better="higher", digits=3,
            note=tta_note, reading=ws.reading),
    ]


def rows(quick: bool, their_tta: bool, weight_sets: list[WeightSet], preprocess: bool = True) -> list[Row]:
    """The report's rows: preprocessing (unless left out), training, and inference per weight set."""
    skipped = "not run in --quick" if quick else "not run (--stages or failure)"
    tta_note = skipped if not their_tta else "not measured"
    out = [
        Row("preprocess", "wall_s", "plan_and_preprocess, whole command", "s"),
        Row("preprocess", "analysis_s", "verify + fingerprint + plan", "s"),
        Row("preprocess", "per_case_s", "preprocessing per case", "s"),
        Row("preprocess", "peak_rss_mb", "peak RSS, process tree (sum)", "MB", digits=0),
        Row("preprocess", "peak_pss_mb", "peak PSS, process tree (sum)", "MB", digits=0),
    ] if preprocess else []
    out += [
        Row("train", "iters_per_s", "training iterations per second", "it/s", better="higher", digits=4),
        Row("train", "iter_s", "seconds per training iteration", "s"),
        Row("train", "wall_s", "training command, whole (incl. start-up)", "s"),
        Row("train", "peak_rss_mb", "peak RSS, process tree (sum)", "MB", digits=0),
        Row("train", "peak_pss_mb", "peak PSS, process tree (sum)", "MB", digits=0),
        Row("train", "peak_gpu_mb", "peak GPU memory (nvidia-smi)", "MB", digits=0, note="CPU run"),
    ]
    for ws in weight_sets:
        out += infer_rows(ws, tta_note)
    return out
