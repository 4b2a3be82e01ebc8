"""Dataset fingerprint: what the planner needs to know about a raw dataset, computed once and cached.

Per case: spacing, shape, body-cropped shape, per-label voxel counts, volumes, bounding boxes and
extents, tumour components and the organs they touch, how far thin label parts reach beyond the
bulk (for crop margins), and a foreground intensity sample. Per dataset: foreground HU percentiles,
mean and std, the host organs of every tumour label, and medians the planner starts from.

Each worker handles one case at a time and returns only small dicts plus a 10k-voxel intensity
sample, so memory stays flat whatever the number of cases. The result is cached in
``dataset_fingerprint.json`` under a key made of every input file's size and mtime: a rerun on an
unchanged dataset reads it back instead of recomputing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from autoseg.datasets import RawDataset
from autoseg.io import geometry_of, read_sitk
from autoseg.preprocessing.crop import crop_to_body, full_bbox, label_bboxes, union_bbox
from autoseg.utils import load_json, parallel_map, save_json

log = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1
SAMPLES_PER_CASE = 10_000
AREA_THRESHOLDS_MM2 = (10, 25, 50, 100, 200, 400, 800, 1600)
MAX_COMPONENTS = 64
_SLAB = 16


def _read(path: Path) -> tuple[sitk.Image, np.ndarray]:
    """The image and a zero-copy array view (the sitk image must outlive the view)."""
    img = read_sitk(path)
    return img, sitk.GetArrayViewFromImage(img)


def _as_labels(arr: np.ndarray) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.integer):
        return arr
    return np.rint(arr).astype(np.int16)


def _scan_labels(lab: np.ndarray, n_values: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Voxel count per label value and foreground count per slice along each axis, slab by slab
    (bincount on the whole volume would allocate 8 bytes per voxel)."""
    counts = np.zeros(n_values, dtype=np.int64)
    prof = [np.zeros(lab.shape[0], np.int64), np.zeros(lab.shape[1], np.int64), np.zeros(lab.shape[2], np.int64)]
    for a in range(0, lab.shape[0], _SLAB):
        sl = lab[a:a + _SLAB]
        counts += np.bincount(sl.ravel().astype(np.intp, copy=False), minlength=n_values)[:n_values]
        fg = sl > 0
        prof[0][a:a + _SLAB] = fg.sum(axis=(1, 2))
        prof[1] += fg.sum(axis=(0, 2))
        prof[2] += fg.sum(axis=(0, 1))
    return counts, prof


def _reach_mm(prof: list[np.ndarray], spacing: list[float], fg_box: list[list[int]]) -> dict[str, list[float]]:
    """Per area threshold T (mm²) and axis: how far (mm) the foreground's thin ends reach beyond the
    first and last slice whose foreground cross-section is at least T. A coarse ROI model sees the
    bulk but may miss such tails, so the planner sizes the ROI crop margin from this."""
    face = [spacing[1] * spacing[2], spacing[0] * spacing[2], spacing[0] * spacing[1]]
    out: dict[str, list[float]] = {}
    for t in AREA_THRESHOLDS_MM2:
        reach = []
        for ax in range(3):
            b0, b1 = fg_box[ax]
            big = np.flatnonzero(prof[ax][b0:b1] * face[ax] >= t)
            if big.size == 0:
                reach.append((b1 - b0) * spacing[ax])
            else:
                reach.append(max(big[0], (b1 - b0 - 1) - big[-1]) * spacing[ax])
        out[str(t)] = [float(r) for r in reach]
    return out


def _sample_foreground(img: np.ndarray, lab: np.ndarray, fg_count: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform sample of foreground intensities without materialising all foreground indices."""
    k = min(SAMPLES_PER_CASE, fg_count)
    if k == 0:
        return np.zeros(0, np.float32)
    ranks = np.sort(rng.choice(fg_count, size=k, replace=False))
    out, seen, r = [], 0, 0
    for a in range(0, lab.shape[0], _SLAB):
        fg = lab[a:a + _SLAB] > 0
        idx = np.flatnonzero(fg)
        hi = np.searchsorted(ranks, seen + idx.size, side="left")
        if hi > r:
            out.append(img[a:a + _SLAB].reshape(-1)[idx[ranks[r:hi] - seen]].astype(np.float32))
            r = hi
        seen += idx.size
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _tumour_stats(lab: np.ndarray, t: int, box: list[list[int]], spacing: list[float],
                  tumour_labels: set[int]) -> tuple[list[list[float]], dict[str, int]]:
    """Extents (mm) of the tumour's connected components and, per organ label, how many voxels of
    the one-voxel shell around the tumour it covers (organs that touch or contain it)."""
    import cc3d
    from scipy.ndimage import binary_dilation

    grown = [[max(0, lo - 1), min(n, hi + 1)] for (lo, hi), n in zip(box, lab.shape)]
    sub = np.asarray(lab[tuple(slice(lo, hi) for lo, hi in grown)])
    mask = sub == t
    comps = cc3d.connected_components(mask.astype(np.uint8), connectivity=26)
    stats = cc3d.statistics(comps)
    extents = []
    for sl, n in zip(stats["bounding_boxes"][1:], stats["voxel_counts"][1:]):
        if sl is not None and n > 0:
            extents.append([float((s.stop - s.start) * sp) for s, sp in zip(sl, spacing)])
    extents.sort(key=lambda e: -float(np.prod(e)))
    shell = binary_dilation(mask) & ~mask
    vals, cnt = np.unique(sub[shell], return_counts=True)
    hosts = {str(int(v)): int(c) for v, c in zip(vals, cnt) if int(v) != 0 and int(v) not in tumour_labels}
    return extents[:MAX_COMPONENTS], hosts


def fingerprint_case(case_id: str, image: str | os.PathLike, label: str | os.PathLike | None,
                     label_values: list[int], tumour_labels: list[int]) -> tuple[dict, np.ndarray]:
    """Fingerprint one case; returns (small JSON-able dict, foreground intensity sample)."""
    img_sitk, img = _read(Path(image))
    geo = geometry_of(img_sitk)
    spacing = [float(s) for s in geo.spacing]
    body = crop_to_body(img)
    rec: dict[str, Any] = {"case_id": case_id, "spacing": spacing, "shape": list(geo.shape)}
    sample = np.zeros(0, np.float32)
    if label is not None:
        lab_sitk, lab = _read(Path(label))
        lab = _as_labels(lab)
        n_values = max(label_values + [0]) + 1
        counts, prof = _scan_labels(lab, n_values)
        found = label_bboxes(lab)
        boxes = {v: found[v] for v in label_values if v > 0 and v in found}
        fg_box = None
        for b in boxes.values():
            fg_box = union_bbox(fg_box, b)
        body = union_bbox(body, fg_box) or full_bbox(geo.shape)
        vox_mm3 = float(np.prod(spacing))
        rec.update({
            "fg_bbox": fg_box,
            "label_voxels": {str(v): int(counts[v]) for v in boxes},
            "label_volume_mm3": {str(v): float(counts[v] * vox_mm3) for v in boxes},
            "label_bbox": {str(v): b for v, b in boxes.items()},
            "label_extent_mm": {str(v): [float((hi - lo) * sp) for (lo, hi), sp in zip(b, spacing)]
                                for v, b in boxes.items()},
            "fg_reach_mm": _reach_mm(prof, spacing, fg_box) if fg_box else {},
            "tumour_components_mm": {}, "tumour_hosts": {},
        })
        for t in tumour_labels:
            if t in boxes:
                ext, hosts = _tumour_stats(lab, t, boxes[t], spacing, set(tumour_labels))
                rec["tumour_components_mm"][str(t)] = ext
                rec["tumour_hosts"][str(t)] = hosts
        rng = np.random.default_rng(zlib.crc32(case_id.encode()))
        sample = _sample_foreground(img, lab, int(counts[1:].sum()), rng)
        del lab, lab_sitk
    rec["body_bbox"] = body
    rec["cropped_shape"] = [hi - lo for lo, hi in body]
    return rec, sample


def _worker(args: tuple) -> tuple[dict, np.ndarray]:
    return fingerprint_case(*args)


def cache_key(ds: RawDataset) -> str:
    """Hash of every training file's name, size and mtime, the labels and the fingerprint version."""
    h = hashlib.sha1(f"v{FINGERPRINT_VERSION}".encode())
    h.update(json.dumps([ds.labels, ds.tumour_labels], sort_keys=True).encode())
    for c in ds.cases:
        for p in [*c.images, *([c.label] if c.label else [])]:
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def _pct(values: list[list[float]] | np.ndarray, q: float) -> list[float]:
    return [float(v) for v in np.percentile(np.asarray(values, dtype=np.float64), q, axis=0)]


def summarize(cases: list[dict], samples: np.ndarray, labels: dict[str, int],
              tumour_labels: list[int]) -> dict:
    """Dataset-level statistics from per-case records (pure: the planner tests build these)."""
    sp = np.array([c["spacing"] for c in cases], dtype=np.float64)
    crop_mm = np.array([c["cropped_shape"] for c in cases]) * sp
    out: dict[str, Any] = {
        "num_cases": len(cases),
        "spacing_median": _pct(sp, 50), "spacing_p10": _pct(sp, 10), "spacing_p90": _pct(sp, 90),
        "shape_median": _pct([c["shape"] for c in cases], 50),
        "cropped_shape_median": _pct([c["cropped_shape"] for c in cases], 50),
        "cropped_extent_mm_median": _pct(crop_mm, 50), "cropped_extent_mm_max": [float(v) for v in crop_mm.max(0)],
    }
    s = np.asarray(samples, dtype=np.float64)
    if s.size:
        p = np.percentile(s, [0.5, 50.0, 99.5])
        clipped = np.clip(s, p[0], p[2])
        out["intensity"] = {"p00_5": float(p[0]), "p50": float(p[1]), "p99_5": float(p[2]), "mean": float(s.mean()),
                            "std": float(s.std()), "min": float(s.min()), "max": float(s.max()),
                            "mean_clipped": float(clipped.mean()), "std_clipped": float(clipped.std()),
                            "num_samples": int(s.size)}
    per_label: dict[str, Any] = {}
    for name, v in labels.items():
        if v == 0:
            continue
        ext = [c["label_extent_mm"][str(v)] for c in cases if str(v) in c.get("label_extent_mm", {})]
        vol = [c["label_volume_mm3"][str(v)] for c in cases if str(v) in c.get("label_volume_mm3", {})]
        per_label[str(v)] = {"name": name, "cases": len(ext),
                             "volume_mm3_median": float(np.median(vol)) if vol else 0.0,
                             "extent_mm_median": _pct(ext, 50) if ext else [0.0, 0.0, 0.0]}
    out["labels"] = per_label
    out["host_organs"], out["tumour_component_extent_mm_median"] = {}, {}
    for t in tumour_labels:
        votes: dict[str, int] = {}
        n_cases = 0
        comps = []
        for c in cases:
            hosts = c.get("tumour_hosts", {}).get(str(t))
            if hosts is None:
                continue
            n_cases += 1
            if hosts:  # the case's host: the organ covering most of the tumour's surroundings
                h = max(hosts, key=lambda k: hosts[k])
                votes[h] = votes.get(h, 0) + 1
            comps += c.get("tumour_components_mm", {}).get(str(t), [])
        # host organs: the main host of this tumour in at least 10% of the cases that have it (an
        # organ a tumour merely brushes against would only inflate the tumour crop)
        out["host_organs"][str(t)] = sorted(int(h) for h, n in votes.items() if n >= max(1, 0.1 * n_cases))
        out["tumour_component_extent_mm_median"][str(t)] = _pct(comps, 50) if comps else None
    reach = [c["fg_reach_mm"] for c in cases if c.get("fg_reach_mm")]
    out["fg_reach_mm_p90"] = {str(t): _pct([r[str(t)] for r in reach], 90) for t in AREA_THRESHOLDS_MM2} if reach else {}
    return out


def _run_cases(ds: RawDataset, num_workers: int, progress: bool) -> tuple[list[dict], np.ndarray]:
    jobs = [(c.case_id, c.images[0], c.label, sorted(ds.labels.values()), list(ds.tumour_labels)) for c in ds.cases]
    records: list[dict] = []
    samples: list[np.ndarray] = []
    for rec, sample in parallel_map(_worker, jobs, num_workers, "fingerprint", progress):
        records.append(rec)
        samples.append(sample)
    return records, np.concatenate(samples) if samples else np.zeros(0, np.float32)


def compute_fingerprint(ds: RawDataset, out_file: str | os.PathLike | None = None, num_workers: int = 2,
                        progress: bool = True, overwrite: bool = False) -> dict:
    """Fingerprint ``ds`` (or reuse ``out_file`` when its cache key still matches the files)."""
    key = cache_key(ds)
    if out_file is not None and Path(out_file).is_file() and not overwrite:
        try:
            old = load_json(out_file)
        except Exception:  # an unreadable cache is simply recomputed
            old = {}
        if old.get("cache_key") == key:
            log.info("fingerprint of %s unchanged: reusing %s", ds.name, out_file)
            return old
    log.info("fingerprinting %d cases of %s with %d worker(s)", len(ds.cases), ds.name, num_workers)
    records, samples = _run_cases(ds, num_workers, progress)
    fp = {"fingerprint_version": FINGERPRINT_VERSION, "cache_key": key, "dataset_name": ds.name,
          "labels": dict(ds.labels), "tumour_labels": list(ds.tumour_labels),
          "channel_names": dict(ds.channel_names),
          "dataset": summarize(records, samples, ds.labels, list(ds.tumour_labels)), "cases": records}
    if out_file is not None:
        save_json(fp, out_file, indent=1)
    return fp
