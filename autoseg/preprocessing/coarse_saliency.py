"""Coarse-stage saliency for training a refinement stage (RSTN's "predicted saliency" mode).

A refinement stage reads, besides the CT crop, its saliency source's prediction of some organs. The
preprocessed cache holds ground-truth masks in those channels; this step predicts the training cases
once with the *trained* source stage (a cross-validation fold's checkpoint, or fold ``all``) and
caches what inference would feed instead, next to the stage's cache and marked as predicted:

    <stage>/coarse_saliency/fold_<F>/<case>.npz   ``saliency`` float16 (S, Z, Y, X), the stage's grid
    <stage>/coarse_saliency/fold_<F>/<case>.json  kind "coarse_prediction", source stage, checkpoint
                                                  sha256, the stage's cache hash, DSC to the ground truth

As at inference, the saliency of class c is the source stage's argmax mask of c in the original image
frame (here: resampled from the source stage's grid), cropped to this stage's box and resampled to its
grid like the CT (so soft at the edges). The trainer only reads these files (its schedule says when,
``autoseg.trainers.saliency_schedule``); it never runs the source model itself.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from autoseg import AutosegError
from autoseg.io import Geometry
from autoseg.plans import stage_classes
from autoseg.preprocessing.cache import case_paths, load_case, stage_hash, write_npz
from autoseg.preprocessing.crop import full_bbox
from autoseg.preprocessing.resample import needs_anisotropic, resample_labels
from autoseg.stage_graph import stage_input
from autoseg.utils import atomic_path, file_sha256, load_json, save_json

log = logging.getLogger(__name__)

COARSE_DIR = "coarse_saliency"
KIND = "coarse_prediction"


def coarse_folder(dataset_folder: str | os.PathLike, stage: str, fold: int | str) -> Path:
    """Where the coarse saliency made with the source stage's fold ``fold`` model lives."""
    return Path(dataset_folder) / stage / COARSE_DIR / f"fold_{fold}"


def saliency_source(plans: dict, stage: str, where: str = "plans") -> tuple[str, tuple[int, ...]]:
    """(source stage, saliency classes) of a refinement stage; one-line error for any other stage."""
    if stage not in plans["stages"]:
        raise AutosegError(f"{where}: no stage '{stage}' (stages: {', '.join(plans['stages'])})")
    si = stage_input(plans, stage)
    if si.saliency_stage is None:
        raise AutosegError(f"{where}: stage '{stage}' reads no saliency (stages.{stage}.input.saliency is unset): "
                           "coarse saliency is for refinement stages only")
    if stage_input(plans, si.saliency_stage).saliency_stage is not None:
        raise AutosegError(f"{where}: stages.{stage}.input.saliency.stage '{si.saliency_stage}' reads saliency "
                           "itself; predicting a chain of refinement stages is not supported")
    return si.saliency_stage, si.saliency_classes


def find_source_checkpoint(results_dir: str | os.PathLike, plans: dict, stage: str, trainer: str,
                           fold: int | str) -> Path:
    """``<results_dir>/<source>/<trainer>/fold_<fold>/checkpoint_final.pt`` (else best, else latest);
    a one-line error saying to train the source stage first when there is none."""
    src, _ = saliency_source(plans, stage)
    d = Path(results_dir) / src / trainer / f"fold_{fold}"
    for name in ("checkpoint_final.pt", "checkpoint_best.pt", "checkpoint_latest.pt"):
        if (d / name).is_file():
            return d / name
    raise AutosegError(f"{d}: no checkpoint of stage '{src}' (trainer {trainer}, fold {fold}), which stage "
                       f"'{stage}' needs for its coarse saliency; train '{src}' first or pass --checkpoint")


def is_current(folder: Path, stage: str, case_id: str, expected_hash: str, checkpoint_sha: str | None,
               shape: Sequence[int] | None = None) -> bool:
    """True when the case's coarse saliency exists and was made for this cache (and checkpoint, shape)."""
    js, npz = folder / f"{case_id}.json", folder / f"{case_id}.npz"
    if not (js.is_file() and npz.is_file()):
        return False
    try:
        meta = load_json(js)
    except AutosegError:
        return False
    return (meta.get("kind") == KIND and meta.get("stage") == stage and meta.get("stage_hash") == expected_hash
            and (checkpoint_sha is None or meta.get("checkpoint_sha256") == checkpoint_sha)
            and (shape is None or list(meta.get("shape", [])) == list(shape)))


def missing_cases(dataset_folder: str | os.PathLike, plans: dict, stage: str, fold: int | str,
                  case_ids: Sequence[str]) -> list[str]:
    """The cases without a current coarse saliency in ``fold``'s folder (what a trainer checks)."""
    folder, h = coarse_folder(dataset_folder, stage, fold), stage_hash(plans, stage)
    return [c for c in case_ids if not is_current(folder, stage, c, h, None)]


def _source_labels(network: torch.nn.Module, data: np.ndarray, plans: dict, src: str, n_in: int,
                   device: torch.device) -> np.ndarray:
    """Source-stage-local argmax labels (Z, Y, X) of one cached source-stage volume."""
    from autoseg.inference.sliding_window import predict_sliding_window
    from autoseg.plans import num_outputs

    image = torch.from_numpy(np.asarray(data[:n_in], dtype=np.float32)).to(device)
    logits = predict_sliding_window(network, image, plans["stages"][src]["patch_size"], num_outputs(plans, src),
                                    amp=device.type == "cuda")
    return logits.argmax(0).to(torch.int16).cpu().numpy()


def coarse_channels(local: np.ndarray, src_meta: dict, stage_meta: dict, plans: dict, src: str,
                    classes: Sequence[int], device: torch.device) -> np.ndarray:
    """Saliency (S, *stage shape) float16 from source-stage-local labels on the source grid: back to
    the original frame, cropped to the stage's box, resampled like the CT (the inference path)."""
    from autoseg.preprocessing.preprocessor import _saliency_channels

    src_classes = stage_classes(plans, src)
    small = np.zeros(local.shape, np.int16)
    for c in classes:
        small[local == src_classes.index(c) + 1] = c
    geo = Geometry.from_dict(stage_meta["original_geometry"])
    sbox, rbox = src_meta["crop_bbox"], stage_meta["crop_bbox"]
    sshape = [hi - lo for lo, hi in sbox]
    aniso_src = needs_anisotropic(geo.spacing, src_meta["spacing"])
    lut = np.zeros(max(classes) + 1, np.int8)  # resample_labels wants 0..n-1
    lut[list(classes)] = np.arange(1, len(classes) + 1)
    back = resample_labels(torch.from_numpy(lut[small]).to(device), sshape, len(classes) + 1, aniso_src).cpu().numpy()
    frame = np.zeros([hi - lo for lo, hi in rbox], np.int16)  # the stage's crop, original voxels
    lo = [max(a[0], b[0]) for a, b in zip(sbox, rbox)]
    hi = [min(a[1], b[1]) for a, b in zip(sbox, rbox)]
    if all(h > l for l, h in zip(lo, hi)):
        dst = tuple(slice(l - r[0], h - r[0]) for l, h, r in zip(lo, hi, rbox))
        srcs = tuple(slice(l - s[0], h - s[0]) for l, h, s in zip(lo, hi, sbox))
        frame[dst] = np.asarray([0, *classes], np.int16)[back[srcs]]
    aniso = needs_anisotropic(geo.spacing, stage_meta["spacing"])
    return _saliency_channels(frame, full_bbox(frame.shape), classes, list(stage_meta["shape"]), aniso, device)


def _dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else round(2.0 * int((a & b).sum()) / total, 4)


def predict_coarse_saliency(plans: dict, stage: str, dataset_folder: str | os.PathLike,
                            checkpoint: str | os.PathLike, fold: int | str, device: str | torch.device = "auto",
                            cases: Sequence[str] | None = None, force: bool = False,
                            progress: bool = False) -> list[str]:
    """Predict every cached case of ``stage`` (or ``cases``) with the source stage's ``checkpoint`` and
    cache the coarse saliency under ``coarse_folder(..., fold)``; returns the cases (re)made. Cases
    already made by the same checkpoint for the same cache are kept unless ``force``."""
    from autoseg.devices import resolve_device
    from autoseg.inference.models import load_stage_model
    from tqdm import tqdm

    src, classes = saliency_source(plans, stage)
    ckpt = Path(checkpoint)
    if not ckpt.is_file():
        raise AutosegError(f"{ckpt}: no checkpoint of stage '{src}' (stage '{stage}' needs it for its coarse "
                           f"saliency); train '{src}' first")
    dev = resolve_device(device)
    stage_dir, folder = Path(dataset_folder) / stage, coarse_folder(dataset_folder, stage, fold)
    ids = sorted(cases) if cases is not None else sorted(p.name[:-5] for p in stage_dir.glob("*.json"))
    if not ids:
        raise AutosegError(f"{stage_dir}: no preprocessed cases of stage '{stage}' (run plan_and_preprocess first)")
    missing = [c for c in ids if not case_paths(dataset_folder, src, c)[1].is_file()]
    if missing:
        raise AutosegError(f"{Path(dataset_folder) / src}: no cached case {missing[0]} of source stage '{src}' "
                           f"({len(missing)} missing); preprocess stage '{src}' first")
    sha, h = file_sha256(ckpt), stage_hash(plans, stage)
    model = None
    done = []
    n_img = int(plans.get("num_image_channels", 1))
    for case in tqdm(ids, desc=f"coarse saliency {stage}", disable=not progress):
        data, seg, meta = load_case(dataset_folder, stage, case)
        if not force and is_current(folder, stage, case, h, sha, meta["shape"]):
            continue
        if model is None:  # the checkpoint's own plans build the network (one registry, as inference)
            model = load_stage_model(src, [ckpt], dev)
            if stage_hash(model.plans, src) != stage_hash(plans, src):
                raise AutosegError(f"{ckpt}: stage '{src}' of this checkpoint was trained on other preprocessing "
                                   f"(spacing, crop or labels) than the cache in {Path(dataset_folder) / src}")
        sdata, _, smeta = load_case(dataset_folder, src, case)
        local = _source_labels(model.network, sdata, model.plans, src, n_img, dev)
        sal = coarse_channels(local, smeta, meta, model.plans, src, classes, dev)
        gt = data[n_img:] > 0.5
        record = {"kind": KIND, "case_id": case, "stage": stage, "source_stage": src, "classes": list(classes),
                  "checkpoint": str(ckpt), "checkpoint_sha256": sha, "fold": str(fold), "stage_hash": h,
                  "shape": list(meta["shape"]),
                  "dsc_to_ground_truth": [_dice(sal[i] > 0.5, gt[i]) for i in range(len(classes))]}
        js = folder / f"{case}.json"
        js.unlink(missing_ok=True)  # the old json must not vouch for a new npz
        with atomic_path(folder / f"{case}.npz", ".npz") as tmp:
            write_npz(tmp, saliency=sal.astype(np.float16))
        save_json(record, js, indent=None)
        done.append(case)
    log.info("coarse saliency of stage %s from %s: %d case(s) made, %d kept -> %s", stage, ckpt, len(done),
             len(ids) - len(done), folder)
    return done
