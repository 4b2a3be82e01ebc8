"""Which connected-component rules a predictor applies, and where they came from.

1. ``<results>/<Dataset>/crossval/<config>/postprocessing.json``: learned by ``autoseg evaluate_cv`` on
   out-of-fold predictions of the full cascade at original resolution. Used for every fold set of that
   configuration (fold ``all`` included), as nnU-Net applies its cross-validation rules.
2. Without cross-validation, fold ``all`` carries a conservative default written when its training
   ended: keep the largest component of each organ that is one object in every training case.
3. Otherwise the per-fold rules learned on each stage's own validation (merged by majority vote).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from autoseg.utils import load_json, save_json

log = logging.getLogger(__name__)
DEFAULT_SOURCE = "default"


def cv_rules_path(results_dataset: Path, config: str) -> Path:
    return Path(results_dataset) / "crossval" / config / "postprocessing.json"


def choose_rules(results_dataset: Path, config: str, stage_rules: dict, checkpoints: Sequence[Path]) -> dict:
    """The label -> rule map the predictor should apply (see the module docstring for the order)."""
    path = cv_rules_path(results_dataset, config)
    if path.is_file():
        rules = load_json(path)
        log.info("postprocessing from cross-validation (%s): %s", path, rules.get("rules") or "none")
        return dict(rules.get("rules", {}))
    sources = [load_json(p).get("source") for c in checkpoints
               if (p := Path(c).parent / "postprocessing.json").is_file()]
    if DEFAULT_SOURCE in sources:
        log.warning("no cross-validation for %s: using the conservative default postprocessing (largest "
                    "component of organs that are one object in every training case): %s; run "
                    "'autoseg evaluate_cv' after training folds 0-4 to learn rules", config, stage_rules or "none")
    return stage_rules


def single_object_labels(segs: Sequence[np.ndarray], class_values: Sequence[int]) -> list[int]:
    """Original label values that form exactly one 26-connected component in every case holding them."""
    import cc3d

    single = {int(v): False for v in class_values}
    ok = dict.fromkeys(single, True)
    for seg in segs:
        for i, v in enumerate(class_values, start=1):
            mask = seg == i
            if not mask.any():
                continue
            n = cc3d.connected_components(mask.astype(np.uint8), connectivity=26, return_N=True)[1]
            single[int(v)] = True
            ok[int(v)] &= n == 1
    return sorted(v for v in single if single[v] and ok[v])


def write_default_rules(cache_dir: Path, case_ids: Sequence[str], class_values: Sequence[int],
                        organ_values: Sequence[int], out: Path) -> dict:
    """Fold ``all``'s conservative default from the stage's cached training labels (local class ids)."""
    segs = []
    for cid in case_ids:
        with np.load(Path(cache_dir) / f"{cid}.npz") as z:
            segs.append(z["seg"][0])
    organs = [v for v in single_object_labels(segs, class_values) if v in set(organ_values)]
    rules = {"source": DEFAULT_SOURCE, "rules": {str(v): {"keep_largest": True} for v in organs},
             "why": f"largest component of the organs that are one object in all {len(segs)} training cases; "
                    "no cross-validation was run"}
    save_json(rules, out)
    return rules
