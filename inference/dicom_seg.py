"""Masks as DICOM Segmentation objects (highdicom) that reference the source CT series, for PACS.

One segment per label of the plans, named as the dataset names it and coded in SNOMED CT where the
name is a known abdominal structure (``SCT_CODES``). The mask's slice ``z`` is the ``z``-th file of the
series in SimpleITK's order (the order ``autoseg.io`` reads it in), so frames reference exactly the
instances the voxels came from; rows and columns are the DICOM's own.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from autoseg import AutosegError, __version__
from autoseg.io import dicom_series_files
from autoseg.utils import atomic_path

log = logging.getLogger(__name__)
OUTPUT_FORMATS = ("nifti", "dicom-seg", "both")
SEG_SUFFIX = ".seg.dcm"

# label name (lower case, words joined by "_") -> (SNOMED CT code, meaning); category from the word kind
SCT_CODES: dict[str, tuple[str, str]] = {
    "liver": ("10200004", "Liver"), "spleen": ("78961009", "Spleen"), "pancreas": ("15776009", "Pancreas"),
    "kidney": ("64033007", "Kidney"), "right_kidney": ("9846003", "Right kidney"),
    "left_kidney": ("18639004", "Left kidney"), "stomach": ("69695003", "Stomach"),
    "gallbladder": ("28231008", "Gallbladder"), "esophagus": ("32849002", "Esophagus"),
    "aorta": ("15825003", "Aorta"), "inferior_vena_cava": ("64131007", "Inferior vena cava"),
    "adrenal_gland": ("23451007", "Adrenal gland"), "right_adrenal_gland": ("281625003", "Right adrenal gland"),
    "left_adrenal_gland": ("281626002", "Left adrenal gland"), "duodenum": ("38848004", "Duodenum"),
    "urinary_bladder": ("89837001", "Urinary bladder"), "colon": ("71854001", "Colon"),
    "small_intestine": ("30315005", "Small intestine"), "portal_vein": ("32764006", "Portal vein"),
    "tumour": ("108369006", "Neoplasm"), "lesion": ("52988006", "Lesion"),
}
_ALIASES = {"tumor": "tumour", "cancer": "tumour", "ivc": "inferior_vena_cava", "postcava": "inferior_vena_cava",
            "bladder": "urinary_bladder", "small_bowel": "small_intestine", "gall_bladder": "gallbladder", "oesophagus": "esophagus",
            "kidney_right": "right_kidney", "kidney_left": "left_kidney", "rk": "right_kidney", "lk": "left_kidney",
            "adrenal_gland_right": "right_adrenal_gland", "adrenal_gland_left": "left_adrenal_gland",
            "rag": "right_adrenal_gland", "lag": "left_adrenal_gland"}
_ABNORMAL = ("tumour", "lesion")
ANATOMY = ("91723000", "Anatomical Structure")
ABNORMAL = ("49755003", "Morphologically Abnormal Structure")
TISSUE = ("85756007", "Tissue")


def segment_codes(name: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """``(category, type)`` SNOMED CT codes of a label name; unknown names are coded as Tissue."""
    key = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    key = _ALIASES.get(key, key)
    if key not in SCT_CODES:
        key = next((k for k in _ABNORMAL if k in key.split("_") or any(w in key for w in ("tumor", "cancer"))),
                   key)
    if key in SCT_CODES:
        return (ABNORMAL if key in _ABNORMAL else ANATOMY), SCT_CODES[key]
    return TISSUE, TISSUE


def require_highdicom():
    try:
        import highdicom
        import pydicom
    except ImportError:
        raise AutosegError("--output-format dicom-seg needs highdicom: pip install 'autoseg[dicom]'") from None
    return highdicom, pydicom


def _source_datasets(files: Sequence[str]) -> list:
    """Headers of the series; anonymised files often blank the UIDs, which SEG references need: the SOP
    ones come back from the file meta, the study and series ones are generated (stable per series)."""
    _, pydicom = require_highdicom()
    from pydicom.uid import generate_uid

    dss = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    seed = [str(dss[0].get("FrameOfReferenceUID", "")), str(files[0])]
    for key in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not all(str(ds.get(key, "")) for ds in dss):
            log.warning("%s: source series lacks %s (anonymised?); the SEG uses a generated one",
                        Path(files[0]).parent, key)
            uid = generate_uid(entropy_srcs=seed + [key])
            for ds in dss:
                setattr(ds, key, uid)
    for ds in dss:
        if not str(ds.get("SOPClassUID", "")):
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        if not str(ds.get("SOPInstanceUID", "")):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        for key in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber",
                    "ReferringPhysicianName", "StudyDate", "StudyTime"):
            if key not in ds:
                setattr(ds, key, "")
    return dss


def write_dicom_seg(labels: np.ndarray, series_folder: str | os.PathLike, label_names: dict[str, int],
                    output: str | os.PathLike, series_description: str = "autoseg") -> Path:
    """Write ``labels`` (z, y, x, on the series' grid as ``autoseg.io`` read it) as a DICOM SEG."""
    hd, _ = require_highdicom()
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    files = dicom_series_files(Path(series_folder))
    if tuple(labels.shape) != (len(files), *labels.shape[1:]):
        raise AutosegError(f"{series_folder}: mask has {labels.shape[0]} slices, the series {len(files)}")
    sources = _source_datasets(files)
    if labels.shape[1:] != (int(sources[0].Rows), int(sources[0].Columns)):
        raise AutosegError(f"{series_folder}: mask slices {labels.shape[1:]} differ from the series' "
                           f"{int(sources[0].Rows)}x{int(sources[0].Columns)}")
    named = sorted((v, n) for n, v in label_names.items() if int(v) > 0)
    segmap = np.zeros(int(max(labels.max(), max((v for v, _ in named), default=0))) + 1, np.uint16)
    algo = hd.AlgorithmIdentificationSequence(name="autoseg", version=__version__,
                                              family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for number, (value, name) in enumerate(named, 1):
        segmap[value] = number
        (cat, catm), (typ, typm) = segment_codes(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name,
            segmented_property_category=Code(cat, "SCT", catm), segmented_property_type=Code(typ, "SCT", typm),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo))
    if not descriptions:
        raise AutosegError("no labels to write as DICOM SEG segments")
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=segmap[labels], segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9000,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="autoseg", manufacturer_model_name="autoseg",
        software_versions=__version__, device_serial_number="none", series_description=series_description)
    output = Path(output)
    with atomic_path(output, ".dcm") as tmp:
        seg.save_as(tmp)
    return output
