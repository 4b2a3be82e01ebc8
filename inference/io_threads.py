"""Input discovery, output naming, and the background reader / writer threads.

Reading a compressed CT and writing the mask take about as long as predicting it on a GPU, so the
next case is read (and given its model-independent preprocessing: ``prepare``) and the previous one
written while the current one computes; SimpleITK, numpy and cc3d release the GIL for most of that work
(measured: the main thread kept 54-85 % of its pace beside them on a loaded 2-core machine), so on a CPU
it runs beside torch's threads. ``background=False`` does both in line (the same outputs, in order).
A case that cannot be read is reported (name and reason) and the others go on.
"""
from __future__ import annotations

import logging
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import SimpleITK as sitk

from autoseg import AutosegError
from autoseg.io import IMAGE_SUFFIXES, Geometry, read_image, strip_suffix, write_image

log = logging.getLogger(__name__)
_CHANNEL_RE = re.compile(r"^(.*)_(\d{4})$")
# single-file equivalents of header+data formats, so an atomic rename moves the whole image
_OUTPUT_SUFFIX = {".mhd": ".mha", ".nhdr": ".nrrd"}


@dataclass
class CaseInput:
    name: str  # case id, nnU-Net style: CASE from CASE_0000.nii.gz
    path: Path
    output_name: str  # file name of the mask


def _is_dicom_dir(path: Path) -> bool:
    if not path.is_dir():
        return False
    if any(path.glob("*.dcm")):
        return True
    try:
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))
    except RuntimeError:
        return False


def _suffix_of(name: str) -> str:
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), "")


def case_for(path: Path) -> CaseInput:
    """Case id and output name for an input file or DICOM folder (DICOM is written as NIfTI)."""
    if path.is_dir():
        return CaseInput(path.name, path, path.name + ".nii.gz")
    stem = strip_suffix(path.name) if _suffix_of(path.name) else path.name.rsplit(".", 1)[0]
    m = _CHANNEL_RE.match(stem)
    case = m.group(1) if m else stem
    suffix = _suffix_of(path.name) or ".nii.gz"
    return CaseInput(case, path, case + _OUTPUT_SUFFIX.get(suffix, suffix))


def list_cases(input_path: str | Path) -> tuple[list[CaseInput], list[tuple[str, str]]]:
    """Cases under ``input_path`` (a folder of images / DICOM folders, one image, or one DICOM folder)
    and the entries skipped with a reason (extra channels of multi-channel cases)."""
    p = Path(input_path)
    if not p.exists():
        raise AutosegError(f"{p}: input not found")
    if p.is_file() or (not any(_suffix_of(c.name) for c in p.iterdir()) and any(
            c.is_file() for c in p.iterdir()) and _is_dicom_dir(p)):
        return [case_for(p)], []
    cases, skipped = [], []
    for entry in sorted(p.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if _is_dicom_dir(entry):
                cases.append(case_for(entry))
            continue
        if not (_suffix_of(entry.name) or entry.suffix.lower() in (".dcm", ".gz", ".nii")):
            continue
        stem = strip_suffix(entry.name)
        m = _CHANNEL_RE.match(stem)
        if m and m.group(2) != "0000":
            skipped.append((entry.name, "extra input channel ignored: the models take one CT channel"))
            continue
        cases.append(case_for(entry))
    if not cases:
        raise AutosegError(_nothing_to_segment(p, skipped))
    names = [c.name for c in cases]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise AutosegError(f"{p}: several inputs map to the same case id(s): {', '.join(dup)}")
    return cases, skipped


def _nothing_to_segment(folder: Path, skipped: list[tuple[str, str]]) -> str:
    """What a folder without inputs holds, and what was expected instead."""
    found = sorted(e.name for e in folder.iterdir() if not e.name.startswith("."))
    what = (f"found {len(found)} entr{'y' if len(found) == 1 else 'ies'} ({', '.join(found[:5])}"
            f"{', ...' if len(found) > 5 else ''})" if found else "the folder is empty")
    if skipped:
        what += f"; {len(skipped)} extra-channel file(s) but no CASE_0000 channel"
    return (f"{folder}: no image to segment: {what}; expected CASE_0000{'/'.join(IMAGE_SUFFIXES)} files "
            "or DICOM series folders")


def check_volume(array: np.ndarray, path: Path) -> None:
    if array.ndim != 3:
        raise AutosegError(f"{path}: {array.ndim}D image, expected 3D")
    if min(array.shape) < 1:
        raise AutosegError(f"{path}: empty image of shape {array.shape}")


def read_case(case: CaseInput, prepare: Callable[[np.ndarray], object] | None = None) -> tuple[object, dict]:
    """``((array, geometry, prepared) or AutosegError, {"read": s, "prepare": s})``: the case read and,
    with ``prepare``, ``prepare(array)`` (model-independent preprocessing) done; prepared is None without it."""
    t = time.perf_counter()
    times = {}
    try:
        arr, geom = read_image(case.path)
        check_volume(arr, case.path)
        times["read"] = time.perf_counter() - t
        prepared = prepare(arr) if prepare is not None else None
        item: object = (arr, geom, prepared)
    except AutosegError as e:
        item = e
    except Exception as e:  # never let one bad file kill the reader thread
        item = AutosegError(f"{case.path}: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
    times.setdefault("read", time.perf_counter() - t)
    times["prepare"] = time.perf_counter() - t - times["read"]
    return item, times


def prefetch(cases: list[CaseInput], depth: int = 1, prepare: Callable[[np.ndarray], object] | None = None,
             background: bool = True) -> Iterator[tuple[CaseInput, object, dict]]:
    """Yield ``(case, (array, geometry, prepared) or AutosegError, times)`` (see ``read_case``) while
    the next case is read and prepared in a thread; ``background=False`` reads each in line instead."""
    if not background:
        for case in cases:
            yield (case, *read_case(case, prepare))
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def reader() -> None:
        for case in cases:
            if stop.is_set():
                break
            q.put((case, *read_case(case, prepare)))
        q.put(None)

    th = threading.Thread(target=reader, name="autoseg-reader", daemon=True)
    th.start()
    try:
        while (got := q.get()) is not None:
            yield got
    finally:
        stop.set()
        while th.is_alive():  # unblock a reader waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                th.join(0.05)


class BackgroundWriter:
    """Writes masks in a thread (at most ``depth`` queued) and records failures and write times;
    ``background=False`` writes each in line when submitted."""

    def __init__(self, depth: int = 2, on_done: Callable[[str, float, str | None], None] | None = None,
                 background: bool = True):
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.on_done = on_done
        self.failures: list[tuple[str, str]] = []
        self._thread = threading.Thread(target=self._run, name="autoseg-writer", daemon=True) if background else None
        if self._thread is not None:
            self._thread.start()

    def _run(self) -> None:
        while (job := self.q.get()) is not None:
            self._write(*job)

    def _write(self, name: str, fn: Callable[[], None]) -> None:
        t = time.perf_counter()
        err = None
        try:
            fn()
        except Exception as e:
            err = str(e).splitlines()[0] if str(e) else type(e).__name__
            self.failures.append((name, f"write failed: {err}"))
            log.error("%s: write failed: %s", name, err)
        if self.on_done is not None:
            self.on_done(name, time.perf_counter() - t, err)

    def submit(self, name: str, fn: Callable[[], None]) -> None:
        if self._thread is None:
            self._write(name, fn)
        else:
            self.q.put((name, fn))

    def write_mask(self, name: str, labels: np.ndarray, geometry: Geometry, path: Path,
                   extra: Callable[[], None] | None = None) -> None:
        def job() -> None:
            write_image(labels, geometry, path)
            if extra is not None:
                extra()
        self.submit(name, job)

    def close(self) -> None:
        if self._thread is not None:
            self.q.put(None)
            self._thread.join()
