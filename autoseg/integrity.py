"""Completeness checks for image files: a partial copy must fail, not read as zeros after the cut.

Measured with SimpleITK 2.x: a truncated NIfTI (``.nii`` or ``.nii.gz``) reads as a full-size volume
with zeros after the cut; a gzip-encoded NRRD missing only its gzip trailer reads without complaint;
a DICOM file cut inside its pixel data silently drops out of its series (one slice fewer). MetaImage
and raw NRRD truncation already raise, but with a message that does not say why. These checks close
those gaps cheaply: header fields are parsed, payload sizes compared with what the header promises,
and gzip streams decompressed to their end (CRC and length trailer verified) without keeping the
output.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from autoseg import AutosegError

_CHUNK = 1 << 22
_NRRD_TYPES = {
    "signed char": 1, "int8": 1, "int8_t": 1, "uchar": 1, "unsigned char": 1, "uint8": 1, "uint8_t": 1,
    "short": 2, "short int": 2, "signed short": 2, "signed short int": 2, "int16": 2, "int16_t": 2,
    "ushort": 2, "unsigned short": 2, "unsigned short int": 2, "uint16": 2, "uint16_t": 2,
    "int": 4, "signed int": 4, "int32": 4, "int32_t": 4, "uint": 4, "unsigned int": 4, "uint32": 4,
    "uint32_t": 4, "longlong": 8, "long long": 8, "long long int": 8, "signed long long": 8,
    "signed long long int": 8, "int64": 8, "int64_t": 8, "ulonglong": 8, "unsigned long long": 8,
    "unsigned long long int": 8, "uint64": 8, "uint64_t": 8, "float": 4, "double": 8,
}
_MET_TYPES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}


def _truncated(path: Path, got: int, want: int, what: str = "bytes of image data") -> AutosegError:
    return AutosegError(f"{path}: truncated file ({got} of the {want} {what} its header promises; "
                        "a partial copy?)")


def gzip_payload_size(path: Path, offset: int = 0) -> int:
    """Decompressed size of the gzip stream(s) from ``offset`` to the end of the file, verifying each
    member's CRC and length trailer; raises AutosegError if the stream is cut or damaged."""
    total = 0
    with open(path, "rb") as f:
        f.seek(offset)
        d = zlib.decompressobj(31)
        try:
            while chunk := f.read(_CHUNK):
                while chunk:
                    total += len(d.decompress(chunk))
                    if not d.eof:
                        break
                    chunk = d.unused_data  # another gzip member follows (concatenated streams)
                    if not chunk.strip(b"\0"):
                        break
                    d = zlib.decompressobj(31)
        except zlib.error as e:
            raise AutosegError(f"{path}: damaged compressed data ({e})") from None
    if not d.eof:
        raise AutosegError(f"{path}: truncated file (compressed stream ends early after {total} bytes; "
                           "a partial copy?)")
    return total


def _check_nifti(path: Path) -> None:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        proxy = img.dataobj  # its offset is where voxels start (a 0 vox_offset in the header means 352)
        want = int(proxy.offset) + int(np.prod(proxy.shape)) * img.get_data_dtype().itemsize
    except Exception:
        return  # not a NIfTI header at all: SimpleITK's read reports it
    got = gzip_payload_size(path) if path.name.endswith(".gz") else path.stat().st_size
    if got < want:
        raise _truncated(path, got, want, "bytes")


def _header_lines(path: Path, limit: int = 1 << 16) -> tuple[list[str], int]:
    """Text header lines up to the first blank line (NRRD) and the byte offset where data starts."""
    with open(path, "rb") as f:
        head = f.read(limit)
    end = head.find(b"\n\n")
    text = head if end < 0 else head[:end]
    return text.decode("latin-1").splitlines(), (len(head) if end < 0 else end + 2)


def _check_nrrd(path: Path) -> None:
    lines, offset = _header_lines(path)
    fields = {}
    for ln in lines[1:]:
        if ":" in ln and not ln.startswith("#"):
            k, _, v = ln.partition(":")
            fields[k.strip().lower()] = v.lstrip("=").strip()
    data_file = fields.get("data file") or fields.get("datafile")
    if data_file and (data_file.startswith("LIST") or " " in data_file):
        return  # multi-file NRRD: SimpleITK checks the pieces it reads
    target, start = (path.parent / data_file, 0) if data_file else (path, offset)
    if int(fields.get("byte skip", "0")) != 0 or int(fields.get("line skip", "0")) != 0:
        return
    try:
        n = int(np.prod([int(s) for s in fields["sizes"].split()]))
        want = n * _NRRD_TYPES[fields["type"].lower()]
    except (KeyError, ValueError):
        return  # SimpleITK reports malformed headers itself
    encoding = fields.get("encoding", "raw").lower()
    if encoding in ("gzip", "gz"):
        got = gzip_payload_size(target, start)
    elif encoding == "raw":
        got = target.stat().st_size - start
    else:
        return
    if got < want:
        raise _truncated(path, got, want)


def _check_meta(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    fields, offset = {}, 0
    for raw in head.splitlines(keepends=True):
        offset += len(raw)
        k, sep, v = raw.decode("latin-1").partition("=")
        if sep:
            fields[k.strip()] = v.strip()
        if k.strip() == "ElementDataFile":
            break
    data_file = fields.get("ElementDataFile", "")
    if not data_file or data_file.startswith("LIST") or "%" in data_file:
        return
    target, start = (path, offset) if data_file == "LOCAL" else (path.parent / data_file, 0)
    if not target.exists():
        raise AutosegError(f"{path}: its data file {target.name} is missing")
    got = target.stat().st_size - start
    compressed = fields.get("CompressedData", "False").lower() == "true"
    try:
        if compressed:
            want = int(fields["CompressedDataSize"])
        else:
            channels = int(fields.get("ElementNumberOfChannels", "1"))
            want = int(np.prod([int(s) for s in fields["DimSize"].split()])) * channels * _MET_TYPES[fields["ElementType"]]
    except (KeyError, ValueError):
        return
    if got < want:
        raise _truncated(path, got, want, "compressed bytes" if compressed else "bytes of image data")


def check_file_complete(path: Path) -> None:
    """Raise AutosegError naming ``path`` if its voxel data is shorter than its header promises."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti(path)
    elif name.endswith((".nrrd", ".nhdr")):
        _check_nrrd(path)
    elif name.endswith((".mha", ".mhd")):
        _check_meta(path)


def is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble (reading 132 bytes is cheap)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def check_dicom_series(folder: Path, series_files: set[str], positions: list[float]) -> None:
    """A DICOM folder is complete when every DICOM file in it belongs to a series GDCM could parse (a
    file cut inside its pixel data is dropped silently; an empty file is what an interrupted copy
    leaves) and the read series has no gap in its slice positions (a missing file)."""
    orphans = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                     and str(p) not in series_files and (p.stat().st_size == 0 or is_dicom_file(p)))
    if orphans:
        more = f" and {len(orphans) - 3} more" if len(orphans) > 3 else ""
        raise AutosegError(f"{folder}: unreadable (truncated or damaged) DICOM file(s) "
                           f"{', '.join(orphans[:3])}{more}")
    if len(positions) > 2:
        gaps = np.diff(np.sort(np.asarray(positions)))
        step = float(np.median(gaps))
        if step > 0 and (gaps.max() > 1.5 * step or gaps.min() < 0.5 * step):
            raise AutosegError(f"{folder}: DICOM slice positions are not evenly spaced (gaps from "
                               f"{gaps.min():.3g} to {gaps.max():.3g} mm): missing or duplicate slices")



def has_nonfinite(path: Path, arr: np.ndarray) -> bool:
    """NaN/inf among the stored values. SimpleITK's NIfTI reader turns NaN into 0, so NIfTI files are
    checked on what nibabel reads from disk (only when the stored type is floating point)."""
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(str(path))
        if np.issubdtype(img.get_data_dtype(), np.floating):
            return not np.isfinite(np.asanyarray(img.dataobj)).all()
        return False
    return not np.issubdtype(arr.dtype, np.integer) and not np.isfinite(arr).all()
