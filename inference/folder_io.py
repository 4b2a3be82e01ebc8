"""Files and folders through a ``CascadePredictor``: read (a file or DICOM folder), predict, write the
mask with the input's geometry; over a folder, reading the next case and writing the last overlap the
compute, one bad case never stops the others, and ``--continue`` skips what is done."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from autoseg import AutosegError
from autoseg.inference.profiling import CaseProfile, MemorySampler
from autoseg.utils import clean_stale_temp_files, ensure_dir, save_npz

if TYPE_CHECKING:
    from autoseg.inference.predictor import CascadePredictor

log = logging.getLogger(__name__)


def predict_file(predictor: "CascadePredictor", path: str | os.PathLike, output: str | os.PathLike,
                 profile: CaseProfile | None = None) -> None:
    """Read one image (file or DICOM folder), predict, write the mask with the input's geometry."""
    from autoseg.io import read_image, write_image
    from autoseg.inference.io_threads import check_volume

    arr, geom = read_image(path)
    check_volume(arr, Path(path))
    labels, probs = predictor.predict_array_full(arr, geom.spacing, profile, Path(path).name)
    write_image(labels, geom, output)
    if probs:
        _write_probabilities(probs, Path(output))

def predict_folder(predictor: "CascadePredictor", input_path: str | os.PathLike, output_dir: str | os.PathLike,
                   continue_prediction: bool = False, profile: bool = False,
                   on_profile: Callable[[str, dict], None] | None = None, num_parts: int = 1,
                   part_id: int = 0, output_format: str = "nifti") -> list[tuple[str, str]]:
    """Predict every case under ``input_path`` (or shard ``part_id`` of ``num_parts`` of them) into
    ``output_dir``; return ``[(case, reason)]`` of the cases that failed. Reading (next case) and
    writing (previous case) overlap the compute. ``predictor.written`` names the cases written."""
    from autoseg.utils import shard
    from autoseg.inference.io_threads import BackgroundWriter, list_cases, prefetch
    from autoseg.inference.outputs import CaseOutputs

    cases, skipped = list_cases(input_path)
    cases = shard(cases, num_parts, part_id, key=lambda c: c.name)
    outputs = CaseOutputs(output_dir, output_format, predictor.label_names)
    for name, why in skipped:
        log.warning("%s: %s", name, why)
    out_dir = Path(output_dir)
    if Path(input_path).is_dir() and out_dir.resolve() == Path(input_path).resolve():
        raise AutosegError(f"{out_dir}: output folder must differ from the input folder")
    ensure_dir(out_dir, writable=True)
    for stale in clean_stale_temp_files(out_dir):
        log.info("removed %s, left by an interrupted earlier run", stale.name)
    todo = [c for c in cases if not (continue_prediction and outputs.done(c))]
    if len(todo) < len(cases):
        log.info("--continue: %d of %d case(s) already predicted, skipped", len(cases) - len(todo), len(cases))
    failures: list[tuple[str, str]] = []
    summaries: dict[str, dict] = {}
    sampler = MemorySampler(predictor.device).start() if profile else None

    def written(name: str, seconds: float, err: str | None) -> None:
        s = summaries.pop(name, None)
        if err is None:
            predictor.written.append(name)
        if s is not None and err is None:
            s["write"] = round(seconds, 4)
            s["total"] = round(s["total"] + seconds, 4)
            predictor.profiles[name] = s
            if on_profile is not None:
                on_profile(name, s)

    writer = BackgroundWriter(on_done=written, background=predictor.overlap_io)
    try:
        for i, (case, item, io_s) in enumerate(prefetch(todo, prepare=predictor.prepare, background=predictor.overlap_io)):
            if isinstance(item, Exception):
                failures.append((case.path.name, str(item)))
                log.error("%s", item)
                continue
            arr, geom, prepared = item
            log.info("[%d/%d] %s %s", i + 1, len(todo), case.name, "x".join(map(str, arr.shape)))
            prof = CaseProfile(predictor.device, enabled=profile, sampler=sampler)
            for k, v in io_s.items():
                prof.add_time(k, v)
            try:
                labels, probs = predictor.predict_array_full(arr, geom.spacing, prof, case.path.name, prepared)
            except Exception as e:  # one bad case must not stop the others
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                failures.append((case.path.name, f"prediction failed: {reason}"))
                log.error("%s: prediction failed: %s", case.path, reason, exc_info=not isinstance(e, AutosegError))
                continue
            del arr, prepared
            summaries[case.name] = prof.summary()
            out_path = out_dir / case.output_name
            extra = (lambda p=probs, o=out_path: _write_probabilities(p, o)) if probs else None
            if output_format == "nifti":
                writer.write_mask(case.name, labels, geom, out_path, extra)
            else:
                writer.submit(case.name, outputs.job(case, labels, geom, extra))
    finally:
        writer.close()
        if sampler is not None:
            sampler.stop()
    return failures + writer.failures


def _write_probabilities(probs: dict, mask_path: Path) -> None:
    """``CASE.npz`` beside the mask: per stage its softmax (float16, inside its crop), bbox and label ids."""
    from autoseg.io import strip_suffix

    arrays = {}
    for stage, d in probs.items():
        arrays[f"{stage}_probabilities"] = d["probabilities"].numpy()
        arrays[f"{stage}_bbox"] = np.asarray(d["bbox"], dtype=np.int64)
        arrays[f"{stage}_classes"] = np.asarray(d["classes"], dtype=np.int64)
    save_npz(mask_path.parent / (strip_suffix(mask_path.name) + ".npz"), **arrays)
