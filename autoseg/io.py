"""Image reading and writing with exact geometry.

Arrays are (z, y, x). Geometry keeps SimpleITK's physical description verbatim (origin and direction
in ITK's x, y, z convention) so a mask written back lands exactly on the input's voxels, whatever
the orientation (RAS, LPS, flipped or oblique).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoseg import AutosegError
from autoseg.integrity import check_dicom_series, check_file_complete
from autoseg.utils import atomic_path, os_error_message

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Geometry:
    """Physical placement of a (z, y, x) array; spacing in (z, y, x), origin/direction as ITK stores them."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    shape: tuple[int, int, int]

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(tuple(float(v) for v in d["spacing"]), tuple(float(v) for v in d["origin"]),
                   tuple(float(v) for v in d["direction"]), tuple(int(v) for v in d["shape"]))

    def same_grid(self, other: "Geometry", tol: float = 1e-4) -> bool:
        return (self.shape == other.shape
                and np.allclose(self.spacing, other.spacing, rtol=tol, atol=tol)
                and np.allclose(self.origin, other.origin, rtol=tol, atol=max(tol, 1e-3))
                and np.allclose(self.direction, other.direction, atol=tol))


def strip_suffix(name: str) -> str:
    for s in IMAGE_SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def is_image_path(path: Path) -> bool:
    if path.is_dir():
        return any(path.glob("*.dcm")) or bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))
    return path.name.endswith(IMAGE_SUFFIXES) or path.suffix.lower() == ".dcm"


def geometry_of(img: sitk.Image) -> Geometry:
    sx, sy, sz = img.GetSpacing()
    x, y, z = img.GetSize()
    return Geometry((sz, sy, sx), tuple(img.GetOrigin()), tuple(img.GetDirection()), (z, y, x))


def _dicom_series(folder: Path) -> dict[str, tuple[str, ...]]:
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise AutosegError(f"{folder}: no DICOM series found in folder")
    return {i: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), i) for i in ids}


def dicom_series_files(folder: Path, series: dict[str, tuple[str, ...]] | None = None) -> tuple[str, ...]:
    """The files of the folder's CT series in slice order (array index z is file z)."""
    # The largest series is the CT; scouts and dose reports are small.
    return max((series or _dicom_series(folder)).values(), key=len)


def _read_dicom_series(folder: Path) -> sitk.Image:
    series = _dicom_series(folder)
    files = dicom_series_files(folder, series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    img = reader.Execute()
    listed = {f for names in series.values() for f in names}
    check_dicom_series(folder, listed, _slice_positions(reader, img, len(files)))
    return img


def _slice_positions(reader: sitk.ImageSeriesReader, img: sitk.Image, n: int) -> list[float]:
    """Each slice's position along the slice normal (mm), from its ImagePositionPatient."""
    normal = np.asarray(img.GetDirection()).reshape(3, 3)[:, 2]
    out = []
    for i in range(n):
        if not reader.HasMetaDataKey(i, "0020|0032"):
            return []
        try:
            pos = [float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")]
        except ValueError:
            return []
        out.append(float(np.dot(pos, normal)))
    return out


def check_readable(path: Path) -> None:
    """Tell "does not exist" from "cannot be read" (permissions): SimpleITK says the same for both."""
    try:
        if path.is_dir():
            os.scandir(path).close()
        else:
            os.close(os.open(path, os.O_RDONLY))
    except FileNotFoundError:
        raise AutosegError(f"{path}: file not found") from None
    except OSError as e:
        raise AutosegError(os_error_message(e, path)) from None


def read_sitk(path: str | os.PathLike) -> sitk.Image:
    path = Path(path)
    check_readable(path)
    try:
        if not path.is_dir():
            check_file_complete(path)
        img = _read_dicom_series(path) if path.is_dir() else sitk.ReadImage(str(path))
    except AutosegError:
        raise
    except OSError as e:
        raise AutosegError(os_error_message(e, path)) from None
    except Exception as e:  # SimpleITK raises RuntimeError with a multi-line C++ trace
        lines = [ln.strip() for ln in str(e).strip().splitlines()]
        msg = next((ln.split("ERROR:", 1)[1].strip() for ln in lines if "ERROR:" in ln), lines[-1] if lines else "")
        raise AutosegError(f"{path}: unreadable image ({msg.replace(str(path), 'file')[:160]})") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise AutosegError(f"{path}: {img.GetNumberOfComponentsPerPixel()} components per voxel, expected a scalar image")
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
    if img.GetDimension() != 3:
        raise AutosegError(f"{path}: {img.GetDimension()}D image of size {img.GetSize()}, expected 3D")
    return img


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """Read a NIfTI/NRRD/MHA file or DICOM series folder as a (z, y, x) array plus its geometry."""
    img = read_sitk(path)
    return sitk.GetArrayFromImage(img), geometry_of(img)


def read_header(path: str | os.PathLike) -> Geometry:
    """Geometry without reading voxels (falls back to a full read for DICOM folders)."""
    path = Path(path)
    if path.is_dir():
        return geometry_of(read_sitk(path))
    check_readable(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except Exception:
        raise AutosegError(f"{path}: unreadable image header") from None
    if reader.GetDimension() != 3:
        raise AutosegError(f"{path}: {reader.GetDimension()}D image of size {reader.GetSize()}, expected 3D")
    sx, sy, sz = reader.GetSpacing()
    x, y, z = reader.GetSize()
    return Geometry((sz, sy, sx), tuple(reader.GetOrigin()), tuple(reader.GetDirection()), (z, y, x))


def to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    if tuple(array.shape) != tuple(geometry.shape):
        raise AutosegError(f"array shape {array.shape} does not match geometry shape {geometry.shape}")
    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    sz, sy, sx = geometry.spacing
    img.SetSpacing((sx, sy, sz))
    img.SetOrigin(geometry.origin)
    img.SetDirection(geometry.direction)
    return img


def output_path_for(path: str | os.PathLike) -> str:
    """Name a written file so DICOM folders and exotic formats become NIfTI next to them."""
    name = strip_suffix(Path(path).name)
    return name + ".nii.gz"


def write_image(array: np.ndarray, geometry: Geometry, path: str | os.PathLike, compress: bool = True) -> None:
    """Write atomically in the format given by the suffix, with exactly ``geometry``."""
    path = Path(path)
    suffix = next((s for s in IMAGE_SUFFIXES if path.name.endswith(s)), None)
    if suffix is None:
        raise AutosegError(f"{path}: unsupported output format (use one of {', '.join(IMAGE_SUFFIXES)})")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.int64:
        array = array.astype(np.int32)
    with atomic_path(path, suffix) as tmp:
        sitk.WriteImage(to_sitk(array, geometry), str(tmp), compress)
