"""Planners: from a dataset fingerprint to plans.json for the roi, organ and tumour stages.

``find_planner(name)`` finds ``ExperimentPlanner`` subclasses in this package and in the folders of
``AUTOSEG_PLANNER_PATH``; ``plan_and_preprocess`` runs check -> fingerprint -> plan -> preprocess.
Names resolve lazily, so ``import autoseg.planners.memory`` (used on GPU machines by the benchmarks) does
not pull in the image-reading stack.
"""
from __future__ import annotations

from autoseg.utils import lazy_exports

_EXPORTS = {
    "autoseg.planners.experiment_planner": ("ExperimentPlanner",),
    "autoseg.planners.registry": ("find_planner", "known_planners"),
    "autoseg.planners.pipeline": ("plan_and_preprocess",),
    "autoseg.planners.cli": ("add_cli_arguments", "run_from_args"),
    "autoseg.planners.memory": ("estimate_training_bytes", "estimate_training_gb"),
    "autoseg.planners.topology": ("get_topology",),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
