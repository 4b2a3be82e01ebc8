"""The sliding-window step each stage is planned with, and the measurement behind it.

Rule (issue 18): the largest of 0.5 / 0.65 / 0.8 whose organ DSC is at most 0.002 below step 0.5's,
judged where the step changes the windows. Measured with ``benchmarks/bench_overlap.py`` on the
``autoseg demo`` cascade (CPUPlanner + TrainerFast, 4 held-out phantoms; ``benchmarks/RESULTS_overlap.md``):
in the cascade the ROI, organ and tumour crops span at most two patches per axis, so 0.5, 0.65 and 0.8
give the same windows and the same DSC; where the windows differ (the organ stage on the whole body
crop: 52 windows at 0.5, 28 at 0.65 and 0.8) the larger steps lost 0.063 DSC. Every stage therefore
keeps 0.5. A stage this table does not name (a refinement stage, a user's) keeps nnU-Net's 0.5.
"""
from __future__ import annotations

_MEASURED = ("bench_overlap (RESULTS_overlap.md, demo cascade, 4 held-out phantoms): steps 0.65 and 0.8 "
             "lost 0.063 organ DSC where they change the windows (organ stage on the whole body crop, "
             "52 -> 28 windows); in the cascade this stage's crop gave the same windows at 0.5, 0.65 and 0.8")
WINDOW_STEPS: dict[str, tuple[float, str]] = {
    "roi": (0.5, f"0.5: {_MEASURED}; its whole-volume pass (default when it fits 2 patches) measured -0.0045 DSC"),
    "organ": (0.5, f"0.5: {_MEASURED}; one whole-crop pass measured -0.012 DSC"),
    "tumour": (0.5, f"0.5: {_MEASURED}; one whole-crop pass measured -0.070 tumour DSC"),
}


def window_step(stage: str) -> tuple[float, str]:
    """(step as a fraction of the patch, why) for ``stage``."""
    return WINDOW_STEPS.get(stage, (0.5, "0.5: nnU-Net's default; not measured for this stage"))
