"""What one case writes: a NIfTI mask, a DICOM SEG beside it (DICOM series inputs), or both."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from autoseg import AutosegError
from autoseg.io import Geometry, write_image
from autoseg.inference.dicom_seg import OUTPUT_FORMATS, SEG_SUFFIX, require_highdicom, write_dicom_seg
from autoseg.inference.io_threads import CaseInput

log = logging.getLogger(__name__)


class CaseOutputs:
    """Output files per case for ``--output-format``; a DICOM SEG needs a DICOM series to reference, so
    an input file (NIfTI, NRRD, ...) gets its NIfTI mask whatever the format."""

    def __init__(self, out_dir: str | os.PathLike, output_format: str, label_names: dict[str, int]):
        if output_format not in OUTPUT_FORMATS:
            raise AutosegError(f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
        if output_format != "nifti":
            require_highdicom()  # fail before any case is predicted
        self.out_dir = Path(out_dir)
        self.format = output_format
        self.label_names = label_names
        self._warned = False

    def paths(self, case: CaseInput) -> list[Path]:
        nifti, seg = self.out_dir / case.output_name, self.out_dir / (case.name + SEG_SUFFIX)
        if self.format == "nifti" or not case.path.is_dir():
            return [nifti]
        return [seg] if self.format == "dicom-seg" else [nifti, seg]

    def done(self, case: CaseInput) -> bool:
        return all(p.is_file() for p in self.paths(case))

    def job(self, case: CaseInput, labels: np.ndarray, geometry: Geometry,
            extra: Callable[[], None] | None = None) -> Callable[[], None]:
        """The writes of one case, to run in the background writer."""
        if self.format != "nifti" and not case.path.is_dir() and not self._warned:
            log.warning("--output-format %s: DICOM SEG is written for DICOM series inputs only; "
                        "%s and other files get NIfTI masks", self.format, case.path.name)
            self._warned = True

        def run() -> None:
            for path in self.paths(case):
                if path.name.endswith(SEG_SUFFIX):
                    write_dicom_seg(labels, case.path, self.label_names, path)
                else:
                    write_image(labels, geometry, path)
            if extra is not None:
                extra()
        return run
