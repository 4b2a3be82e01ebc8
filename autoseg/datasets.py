"""Raw datasets in nnU-Net format (v2 ``DatasetNNN_*`` and v1 ``TaskNNN_*``) and their integrity check."""
from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autoseg import AutosegError
from autoseg.integrity import has_nonfinite
from autoseg.imperfect import check_labelled_classes, check_unlabelled, parse_labelled_classes
from autoseg.io import Geometry, read_image, strip_suffix
from autoseg.paths import find_dataset_folder, raw_root
from autoseg.utils import load_json

log = logging.getLogger(__name__)
_TUMOUR_WORDS = ("tumor", "tumour", "lesion", "cancer")


@dataclass
class Case:
    case_id: str
    images: list[Path]
    label: Path | None = None
    labelled_classes: list[int] | None = None  # partial labels: classes annotated in this case


@dataclass
class RawDataset:
    """A raw dataset folder: its dataset.json, its labelled cases and optional test/unlabelled images."""

    folder: Path
    name: str
    labels: dict[str, int]
    channel_names: dict[str, str]
    file_ending: str
    cases: list[Case]
    tumour_labels: list[int] = field(default_factory=list)
    test_cases: list[Case] = field(default_factory=list)
    unlabelled: list[Case] = field(default_factory=list)
    raw_json: dict = field(default_factory=dict)

    @classmethod
    def from_task(cls, task: str | int, root: str | os.PathLike | None = None) -> "RawDataset":
        return cls.load(find_dataset_folder(task, raw_root(root)))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "RawDataset":
        folder = Path(folder)
        dj_path = folder / "dataset.json"
        dj = load_json(dj_path)
        if "modality" in dj or "training" in dj:
            return _load_v1(folder, dj)
        for key in ("channel_names", "labels", "file_ending"):
            if key not in dj:
                raise AutosegError(f"{dj_path}: missing key '{key}'")
        labels = _parse_labels(dj["labels"], dj_path)
        ending = dj["file_ending"]
        channels = {str(k): v for k, v in dj["channel_names"].items()}
        cases = _cases_from_folder(folder / "imagesTr", folder / "labelsTr", ending, len(channels))
        partial = parse_labelled_classes(dj.get("labelled_classes"), str(dj_path))
        for c in cases:
            if c.case_id in partial:
                c.labelled_classes = [int(v) for v in partial[c.case_id]]
        ds = cls(folder, folder.name, labels, channels, ending, cases,
                 _tumour_labels(labels, dj.get("tumour_labels"), dj_path), raw_json=dj)
        ds.test_cases = _cases_from_folder(folder / "imagesTs", folder / "labelsTs", ending, len(channels),
                                           need_labels=False)
        ds.unlabelled = _cases_from_folder(folder / "imagesUnlabeled", None, ending, len(channels),
                                           need_labels=False)
        return ds

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    def organ_labels(self) -> list[int]:
        return sorted(v for v in self.labels.values() if v != 0 and v not in self.tumour_labels)


def _parse_labels(labels: dict, where: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, v in labels.items():
        if isinstance(v, (list, tuple)):  # nnU-Net region labels: not supported by the cascade
            raise AutosegError(f"{where}: label '{name}' is a region {v}; autoseg needs one integer per label")
        try:
            out[str(name)] = int(v)
        except (TypeError, ValueError):
            raise AutosegError(f"{where}: label '{name}' has non-integer value {v!r}") from None
    if 0 not in out.values():
        raise AutosegError(f"{where}: 'labels' must declare background as 0")
    return out


def _tumour_labels(labels: dict[str, int], declared: list | None, where: Path) -> list[int]:
    if declared is not None:
        missing = [n for n in declared if n not in labels]
        if missing:
            raise AutosegError(f"{where}: tumour_labels {missing} are not in 'labels'")
        return sorted(labels[n] for n in declared)
    return sorted(v for n, v in labels.items() if v != 0 and any(w in n.lower() for w in _TUMOUR_WORDS))


def _cases_from_folder(img_dir: Path, lbl_dir: Path | None, ending: str, n_ch: int,
                       need_labels: bool = True) -> list[Case]:
    if not img_dir.is_dir():
        return []
    pat = re.compile(r"^(.*)_(\d{4})" + re.escape(ending) + "$")
    by_case: dict[str, list[Path]] = {}
    for p in sorted(img_dir.iterdir()):
        m = pat.match(p.name)
        if m:
            by_case.setdefault(m.group(1), []).append(p)
    cases = []
    for cid, files in sorted(by_case.items()):
        files = sorted(files)
        lbl = lbl_dir / f"{cid}{ending}" if lbl_dir is not None else None
        cases.append(Case(cid, files, lbl if (lbl is not None and (need_labels or lbl.exists())) else None))
    return cases


def _load_v1(folder: Path, dj: dict) -> RawDataset:
    where = folder / "dataset.json"
    labels = {str(n): int(k) for k, n in dj.get("labels", {}).items()}
    if 0 not in labels.values():
        raise AutosegError(f"{where}: v1 'labels' must declare background as \"0\"")
    channels = {str(k): v for k, v in dj.get("modality", {"0": "CT"}).items()}
    cases = []
    for entry in dj.get("training", []):
        img = folder / entry["image"].lstrip("./")
        cid = strip_suffix(img.name)
        images = [img.parent / f"{cid}_{i:04d}.nii.gz" for i in range(len(channels))]
        cases.append(Case(cid, images, folder / entry["label"].lstrip("./")))
    ds = RawDataset(folder, folder.name, labels, channels, ".nii.gz", cases,
                    _tumour_labels(labels, dj.get("tumour_labels"), where), raw_json=dj)
    ds.test_cases = _cases_from_folder(folder / "imagesTs", folder / "labelsTs", ".nii.gz", len(channels), False)
    return ds


def check_case(ds: RawDataset, case: Case) -> list[str]:
    """Every problem of one case, each a line naming the file."""
    problems: list[str] = []
    declared = set(ds.labels.values())
    if len(case.images) != ds.num_channels:
        problems.append(f"{case.images[0].parent / case.case_id}: has {len(case.images)} channel file(s), "
                        f"dataset.json declares {ds.num_channels}")
    ref: Geometry | None = None
    for img in case.images:
        if not img.exists():
            problems.append(f"{img}: missing channel file")
            continue
        try:
            arr, geo = read_image(img)
        except AutosegError as e:
            problems.append(str(e))
            continue
        if has_nonfinite(img, arr):
            problems.append(f"{img}: contains NaN or infinite intensities")
        if ref is None:
            ref = geo
        elif not geo.same_grid(ref):
            problems.append(f"{img}: geometry differs from channel 0 ({geo.shape} vs {ref.shape})")
    if case.label is None:
        return problems
    if not case.label.exists():
        problems.append(f"{case.label}: missing label file for case {case.case_id}")
        return problems
    try:
        lbl, lgeo = read_image(case.label)
    except AutosegError as e:
        return problems + [str(e)]
    if ref is not None:
        if lgeo.shape != ref.shape:
            problems.append(f"{case.label}: size {lgeo.shape} differs from image size {ref.shape}")
        elif not lgeo.same_grid(ref):
            problems.append(f"{case.label}: geometry (spacing/origin/direction) differs from its image")
    if not np.issubdtype(lbl.dtype, np.integer) and not np.all(np.mod(lbl, 1) == 0):
        problems.append(f"{case.label}: label map has non-integer values")
    undeclared = sorted(set(np.unique(lbl).astype(int).tolist()) - declared)
    if undeclared:
        problems.append(f"{case.label}: label values {undeclared} not declared in dataset.json")
    return problems


def check_integrity(ds: RawDataset, num_workers: int = 2) -> list[str]:
    """All problems in the dataset at once (not just the first), so users fix them in one pass."""
    problems: list[str] = []
    if not ds.cases:
        problems.append(f"{ds.folder / 'imagesTr'}: no training images matching CASE_0000{ds.file_ending}")
    n_decl = ds.raw_json.get("numTraining")
    if isinstance(n_decl, int) and n_decl != len(ds.cases):
        problems.append(f"{ds.folder / 'dataset.json'}: numTraining is {n_decl} but {len(ds.cases)} cases found")
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        for p in pool.map(lambda c: check_case(ds, c), ds.cases):
            problems.extend(p)
    problems += check_labelled_classes(ds) + check_unlabelled(ds, num_workers)
    if ds.labels:
        log.info("checked %d cases of %s: %d problem(s)", len(ds.cases), ds.name, len(problems))
    return problems

