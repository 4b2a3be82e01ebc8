"""Seeded abdominal CT phantoms in nnU-Net v2 raw format, for the demo, the tests and benchmarks.

``make_phantom(seed, size)`` returns one case (image int16 HU, label uint8, Geometry);
``make_phantom_dataset(...)`` writes a whole dataset; ``add_cli_arguments``/``run_from_args``
implement ``autoseg make_phantoms``. Package layout: params (acquisition), body/anatomy/viscera/
tumours (what is in the body), shapes/grid (rasterisation), phantom (assembly), dataset (files).
"""
from autoseg.synthetic.anatomy import LABELS
from autoseg.synthetic.dataset import add_cli_arguments, make_phantom_dataset, run_from_args
from autoseg.synthetic.params import SIZES, CaseParams, sample_params
from autoseg.synthetic.phantom import make_phantom

__all__ = ["LABELS", "SIZES", "CaseParams", "add_cli_arguments", "make_phantom", "make_phantom_dataset",
           "run_from_args", "sample_params"]
