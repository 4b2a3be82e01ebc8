"""The preprocessed cache: one ``<stage>/<CASE>.npz`` + ``<stage>/<CASE>.json`` per case and stage.

The .npz is written first and the .json last, both atomically, so a .json means "complete". A case
is redone when either file is missing, unreadable or truncated, when their shapes disagree, or when
the plans that produced it changed (``stage_hash``), so an edited plans.json never mixes with old
arrays. Temp files left by a killed run are removed before a rerun.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.utils import atomic_path, save_json

log = logging.getLogger(__name__)

PREPROCESS_VERSION = 1
META_KEYS = ("case_id", "stage", "spacing", "shape", "original_geometry", "crop_bbox", "class_locations")


def case_paths(folder: str | os.PathLike, stage: str, case_id: str) -> tuple[Path, Path]:
    d = Path(folder) / stage
    return d / f"{case_id}.npz", d / f"{case_id}.json"


def stage_hash(plans: dict, stage: str) -> str:
    """Hash of every plans entry that changes this stage's arrays (not patch, batch or network)."""
    st = plans["stages"][stage]
    relevant: dict[str, Any] = {k: st.get(k) for k in ("target_spacing", "classes", "input", "tumour_voxels_as_host")}
    relevant.update(version=PREPROCESS_VERSION, intensity=plans["intensity"], labels=plans["labels"],
                    tumour_labels=plans.get("tumour_labels"), transpose=plans.get("transpose", [0, 1, 2]))
    src = (st.get("input") or {}).get("crop", "body")
    if src in plans["stages"] and "labels" not in st["input"]:  # the crop follows the source's classes
        relevant["source_classes"] = plans["stages"][src]["classes"]
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def load_case(folder: str | os.PathLike, stage: str, case_id: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(data float16 (C,Z,Y,X), seg int8 (1,Z,Y,X), metadata) of one cached case."""
    npz, js = case_paths(folder, stage, case_id)
    with open(js, encoding="utf-8") as f:
        meta = json.load(f)
    with np.load(npz) as z:
        return z["data"], z["seg"], meta


def is_valid(folder: str | os.PathLike, stage: str, case_id: str, expected_hash: str | None = None) -> bool:
    """True when both files exist, read back completely (zip CRC checked), agree on the shape and,
    if given, were made with ``expected_hash``."""
    npz, js = case_paths(folder, stage, case_id)
    if not (npz.is_file() and js.is_file()):
        return False
    try:
        with open(js, encoding="utf-8") as f:
            meta = json.load(f)
        if any(k not in meta for k in META_KEYS) or meta["case_id"] != case_id or meta["stage"] != stage:
            return False
        if expected_hash is not None and meta.get("stage_hash") != expected_hash:
            return False
        with np.load(npz) as z:
            data, seg = z["data"], z["seg"]
        shape = tuple(meta["shape"])
        return (data.ndim == 4 and tuple(data.shape[1:]) == shape and seg.shape == (1, *shape)
                and data.dtype == np.float16 and seg.dtype == np.int8)
    except Exception as e:  # any failure to read back means: redo this case
        log.info("cache %s/%s is invalid (%s): redoing it", stage, case_id, type(e).__name__)
        return False


def write_case(folder: str | os.PathLike, stage: str, case_id: str, data: np.ndarray, seg: np.ndarray,
               meta: dict) -> None:
    """Write the arrays (uncompressed: reading them back is the trainer's hot path), then the json."""
    npz, js = case_paths(folder, stage, case_id)
    js.unlink(missing_ok=True)  # the old json must not vouch for a new, half-written npz
    with atomic_path(npz, ".npz") as tmp:
        write_npz(tmp, data=data, seg=seg)
    save_json(meta, js, indent=None)


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """An uncompressed .npz that ``np.load`` reads, written straight from the arrays' memory
    (``np.savez`` copies each array into a bytes buffer first, doubling a worker's peak)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(arr))
                f.write(memoryview(arr.reshape(-1)).cast("B"))


def clean_temp_files(folder: str | os.PathLike, stages: list[str], case_ids: list[str] | None = None) -> int:
    """Remove the hidden temp files (``.CASE.npz.xxxx.npz``) a killed run leaves behind; with ``case_ids``
    only theirs (another part of a sharded run may be writing the others)."""
    n = 0
    prefixes = None if case_ids is None else tuple(f".{c}.{k}." for c in case_ids for k in ("npz", "json"))
    for stage in stages:
        d = Path(folder) / stage
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if p.name.startswith(".") and (".npz." in p.name or ".json." in p.name) and (
                    prefixes is None or p.name.startswith(prefixes)):
                p.unlink(missing_ok=True)
                n += 1
    return n
