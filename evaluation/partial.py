"""Partial labels in evaluation: a class that a case does not annotate is never scored for that case.

dataset.json's ``"labelled_classes": {"CASE": [label ids]}`` lists what a partially labelled case
annotates (a case without an entry annotates everything). Unannotated classes are absent from its
label map, so scoring them would give DSC = NSD = 1 (both empty) or 0 (a correct prediction of an
unannotated organ) and bias every mean. Per-class means then count only the cases that annotate the
class, and the summary says how many those are.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Collection, Mapping, MutableMapping

from autoseg import AutosegError
from autoseg.utils import load_json

log = logging.getLogger(__name__)


def labelled_classes_from_json(path: str | os.PathLike) -> dict[str, set[int]]:
    """``{case: annotated label ids}`` from a dataset.json (empty when it has no ``labelled_classes``)."""
    raw = load_json(Path(path)).get("labelled_classes") or {}
    if not isinstance(raw, dict):
        raise AutosegError(f"{path}: 'labelled_classes' must map case ids to lists of label ids")
    out: dict[str, set[int]] = {}
    for case, values in raw.items():
        try:
            out[str(case)] = {int(v) for v in values}
        except (TypeError, ValueError):
            raise AutosegError(f"{path}: labelled_classes of case '{case}' must be a list of integers, "
                               f"got {values!r}") from None
    return out


def find_labelled_classes(gt_dir: Path) -> dict[str, set[int]]:
    """``labelled_classes`` of the dataset.json beside (or inside) the ground-truth folder, if any."""
    for cand in (gt_dir.parent / "dataset.json", gt_dir / "dataset.json"):
        if cand.is_file():
            return labelled_classes_from_json(cand)
    return {}


def drop_unannotated(per_case: MutableMapping[str, dict[int, dict]],
                     labelled: Mapping[str, Collection[int]] | None) -> int:
    """Remove, in place, each case's scores of classes it does not annotate; returns how many cases had some."""
    n = 0
    for case, res in per_case.items():
        keep = (labelled or {}).get(case)
        if keep is None:
            continue
        n += 1
        for v in [v for v in res if v not in keep]:
            del res[v]
    if n:
        log.info("%d partially labelled case(s): unannotated classes not scored", n)
    return n


def annotated_case_counts(per_case: Mapping[str, Mapping[int, object]], names: Mapping[int, str]) -> dict:
    """Summary entries: how many cases scored each class, and how many cases were partially labelled."""
    counts = {name: sum(1 for res in per_case.values() if v in res) for v, name in sorted(names.items())}
    partial = sum(1 for res in per_case.values() if any(v not in res for v in names))
    return {"annotated_cases_per_class": counts, "num_partially_labelled_cases": partial}
