"""Five-fold cross-validation splits, kept in ``splits.json`` so users can read and edit them.

The same file serves every stage: cases are split once per dataset (deterministically, from the sorted
case ids), so a case validated in fold k of the organ stage is also unseen by fold k of the tumour
stage and the cascade can be cross-validated end to end.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from autoseg import AutosegError
from autoseg.utils import load_json, save_json

log = logging.getLogger(__name__)

NUM_FOLDS = 5
SPLIT_SEED = 12345


def make_splits(case_ids: Sequence[str], num_folds: int = NUM_FOLDS, seed: int = SPLIT_SEED) -> list[dict]:
    """Shuffled k-fold over sorted ids; with fewer cases than folds each fold still validates one case."""
    ids = sorted(set(case_ids))
    if not ids:
        raise AutosegError("cannot make splits: no cases")
    order = list(np.random.RandomState(seed).permutation(len(ids)))
    shuffled = [ids[i] for i in order]
    splits = []
    for k in range(num_folds):
        if len(ids) >= num_folds:
            val = shuffled[k::num_folds]
        else:
            val = [shuffled[k % len(ids)]]
        train = [c for c in shuffled if c not in val] or list(val)
        splits.append({"train": sorted(train), "val": sorted(val)})
    return splits


def _check_splits(splits: object, path: Path) -> list[dict]:
    ok = isinstance(splits, list) and splits and all(
        isinstance(s, dict) and isinstance(s.get("train"), list) and isinstance(s.get("val"), list)
        for s in splits)
    if not ok:
        raise AutosegError(f"{path}: must be a list of {{\"train\": [ids], \"val\": [ids]}} objects")
    return splits


def load_or_create_splits(dataset_folder: str | Path, case_ids: Sequence[str], write: bool = True) -> list[dict]:
    """Read ``splits.json``; create it from ``case_ids`` when missing (only the writing rank writes)."""
    path = Path(dataset_folder) / "splits.json"
    if path.is_file():
        return _check_splits(load_json(path), path)
    splits = make_splits(case_ids)
    if write:
        save_json(splits, path)
        log.info("wrote %s (%d folds over %d cases)", path, len(splits), len(set(case_ids)))
    return splits


def parse_fold(fold: str | int) -> int | str:
    if str(fold) == "all":
        return "all"
    try:
        return int(fold)
    except ValueError:
        raise AutosegError(f"FOLD must be 0-{NUM_FOLDS - 1} or 'all', got {fold!r}") from None


def fold_cases(splits: list[dict], fold: int | str, available: Sequence[str],
               path: str | Path = "splits.json") -> tuple[list[str], list[str]]:
    """(train, val) ids of ``fold`` among the cases cached for this stage; fold 'all' trains on all."""
    avail = sorted(available)
    if str(fold) == "all":
        return avail, avail
    try:
        k = int(fold)
    except (TypeError, ValueError):
        raise AutosegError(f"fold must be 0-{len(splits) - 1} or 'all', got {fold!r}") from None
    if not 0 <= k < len(splits):
        raise AutosegError(f"{path}: fold {k} does not exist (the file holds {len(splits)} folds)")
    have = set(avail)
    train = [c for c in splits[k]["train"] if c in have]
    val = [c for c in splits[k]["val"] if c in have]
    unknown = [c for c in splits[k]["train"] + splits[k]["val"] if c not in have]
    if unknown:
        log.warning("%s: %d cases of fold %d are not cached for this stage and are skipped (%s%s)", path,
                    len(unknown), k, ", ".join(unknown[:5]), " ..." if len(unknown) > 5 else "")
    unassigned = sorted(have - set(train) - set(val))
    if unassigned:
        log.warning("%s: %d cached cases are in neither train nor val of fold %d; training on them",
                    path, len(unassigned), k)
        train += unassigned
    if not train:
        raise AutosegError(f"{path}: fold {k} has no training case cached for this stage")
    if not val:
        log.warning("%s: fold %d has no validation case cached for this stage; validating on training cases",
                    path, k)
        val = list(train)
    return train, val
