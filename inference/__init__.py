"""The fused ROI -> organ -> tumour cascade predictor, sliding window and postprocessing.

Heavy modules load on first use so ``import inference`` (e.g. by the trainer for
``predict_sliding_window``) stays cheap.
"""
from autoseg.inference.cli import add_cli_arguments, run_from_args, run_inference
from autoseg.inference.postprocessing import apply_postprocessing, learn_postprocessing
from autoseg.inference.sliding_window import iter_sliding_window, predict_sliding_window

__all__ = ["CascadePredictor", "run_inference", "add_cli_arguments", "run_from_args", "predict_sliding_window",
           "iter_sliding_window", "learn_postprocessing", "apply_postprocessing"]


def __getattr__(name: str):
    if name == "CascadePredictor":
        from autoseg.inference.predictor import CascadePredictor

        return CascadePredictor
    raise AttributeError(f"module 'autoseg.inference' has no attribute {name!r}")
