"""Integrity checks for imperfect data: partial labels (``labelled_classes``) and ``imagesUnlabeled/``.

They run with the rest of ``check_integrity``, before any work starts, and report every problem as one
line naming dataset.json, the case or the file.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from autoseg import AutosegError

if TYPE_CHECKING:
    from autoseg.datasets import Case, RawDataset

AIR_HU = -500.0  # every abdominal CT has air around the body well below this


def parse_labelled_classes(raw: object, where: str) -> dict[str, list[int]]:
    """dataset.json's ``labelled_classes`` as ``{case: [label ids]}``; a wrong shape is a one-line error."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise AutosegError(f"{where}: 'labelled_classes' must map case ids to lists of label ids, "
                           f"got {type(raw).__name__}")
    out: dict[str, list[int]] = {}
    for case, values in raw.items():
        if not isinstance(values, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                            for v in values):
            raise AutosegError(f"{where}: labelled_classes of case '{case}' must be a list of label ids, "
                               f"got {values!r}")
        out[str(case)] = [int(v) for v in values]
    return out


def check_labelled_classes(ds: "RawDataset") -> list[str]:
    """Unknown case ids, undeclared label ids, and cases annotating nothing."""
    where = ds.folder / "dataset.json"
    try:
        partial = parse_labelled_classes(ds.raw_json.get("labelled_classes"), str(where))
    except AutosegError as e:
        return [str(e)]
    known_cases = {c.case_id for c in ds.cases}
    declared = set(ds.labels.values())
    problems = []
    for case, values in partial.items():
        if case not in known_cases:
            problems.append(f"{where}: labelled_classes names case '{case}', which is not in imagesTr")
            continue
        unknown = sorted(set(values) - declared)
        if unknown:
            problems.append(f"{where}: labelled_classes of case '{case}' has label ids {unknown} "
                            f"not declared in 'labels'")
        elif not set(values) - {0}:
            problems.append(f"{where}: partially labelled case '{case}' annotates no class "
                            f"(move it to imagesUnlabeled/ instead)")
    return problems


def check_unlabelled_case(ds: "RawDataset", case: "Case") -> list[str]:
    """Channels and geometry as for training images, plus: a CT channel must contain air."""
    from autoseg.datasets import check_case
    from autoseg.io import read_image

    problems = check_case(ds, case)
    if problems:
        return problems
    for img, (_, modality) in zip(case.images, sorted(ds.channel_names.items())):
        if str(modality).upper() != "CT":
            continue
        arr, _ = read_image(img)
        if arr.size and float(np.min(arr)) > AIR_HU:
            problems.append(f"{img}: unlabelled image has no air (minimum {float(np.min(arr)):.0f} > {AIR_HU:.0f}); "
                            f"channel '{modality}' of dataset.json expects CT in Hounsfield units")
    return problems


def check_unlabelled(ds: "RawDataset", num_workers: int = 2) -> list[str]:
    if not ds.unlabelled:
        return []
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        return [p for ps in pool.map(lambda c: check_unlabelled_case(ds, c), ds.unlabelled) for p in ps]
