"""The benchmark's inputs: the phantom dataset (made once per seed/size/count) and the inference cases.

Inference reads copies of the raw test images. ``--quick`` may crop them around the labelled anatomy
to a maximum size (same crop for both tools, geometry kept), because a full-size phantom takes
minutes per case on two CPU cores for either tool.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

STAMP = ".autoseg-bench-phantoms.json"


def phantoms_ready(dataset: Path | None, spec: dict) -> bool:
    """True when ``dataset`` was made by the harness with exactly ``spec`` (seed, size, counts)."""
    if dataset is None or not (dataset / STAMP).is_file():
        return False
    try:
        return json.loads((dataset / STAMP).read_text()) == spec
    except ValueError:
        return False


def mark_phantoms(dataset: Path, spec: dict) -> None:
    (dataset / STAMP).write_text(json.dumps(spec, sort_keys=True))


def test_cases(dataset: Path) -> list[tuple[str, Path, Path | None]]:
    """(case id, image, label or None) for every ``imagesTs`` case, sorted by id."""
    ending = json.loads((dataset / "dataset.json").read_text()).get("file_ending", ".nii.gz")
    out = []
    for img in sorted((dataset / "imagesTs").glob(f"*_0000{ending}")):
        case = img.name[: -len(f"_0000{ending}")]
        lab = dataset / "labelsTs" / f"{case}{ending}"
        out.append((case, img, lab if lab.is_file() else None))
    return out


def crop_window(shape_zyx: tuple[int, ...], center_zyx: np.ndarray, max_zyx: list[int]) -> list[tuple[int, int]]:
    """A window of at most ``max_zyx`` voxels centred on ``center_zyx`` and kept inside the volume."""
    out = []
    for n, c, m in zip(shape_zyx, center_zyx, max_zyx):
        size = min(n, int(m))
        start = int(round(c - size / 2))
        start = max(0, min(start, n - size))
        out.append((start, start + size))
    return out


def _crop(img: sitk.Image, win: list[tuple[int, int]]) -> sitk.Image:
    (z0, z1), (y0, y1), (x0, x1) = win
    return img[x0:x1, y0:y1, z0:z1]  # SimpleITK indexes (x, y, z) and keeps the physical geometry


def prepare_inference_input(dataset: Path, images_dir: Path, labels_dir: Path, num_cases: int,
                            max_shape: list[int] | None) -> list[str]:
    """Copy (or crop) the first ``num_cases`` test cases to ``images_dir``/``labels_dir``; returns ids.

    Labels are copied when the dataset has ``labelsTs``; the crop is centred on the label's foreground
    (else the volume centre) so the organs stay in view.
    """
    for d in (images_dir, labels_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    ending = json.loads((dataset / "dataset.json").read_text()).get("file_ending", ".nii.gz")
    ids = []
    for case, img_path, lab_path in test_cases(dataset)[:num_cases]:
        ids.append(case)
        if not max_shape:
            shutil.copyfile(img_path, images_dir / img_path.name)
            if lab_path is not None:
                shutil.copyfile(lab_path, labels_dir / lab_path.name)
            continue
        img = sitk.ReadImage(str(img_path))
        lab = sitk.ReadImage(str(lab_path)) if lab_path is not None else None
        shape = sitk.GetArrayViewFromImage(img).shape
        if lab is not None and sitk.GetArrayViewFromImage(lab).any():
            center = np.argwhere(sitk.GetArrayViewFromImage(lab) > 0).mean(axis=0)
        else:
            center = np.asarray(shape, dtype=float) / 2
        win = crop_window(shape, center, max_shape)
        sitk.WriteImage(_crop(img, win), str(images_dir / img_path.name), useCompression=True)
        if lab is not None:
            sitk.WriteImage(_crop(lab, win), str(labels_dir / f"{case}{ending}"), useCompression=True)
    return ids


def body_cropped_copy(images_dir: Path, labels_dir: Path, out_images: Path, out_labels: Path) -> None:
    """Every image (and its label) cropped to the box autoseg's predictor crops to before its sliding
    window (``crop_to_body``), geometry kept: nnU-Net given this input sees what autoseg's network sees."""
    from autoseg.preprocessing.crop import crop_to_body

    for d in (out_images, out_labels):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    for img_path in sorted(images_dir.iterdir()):
        img = sitk.ReadImage(str(img_path))
        win = [tuple(b) for b in crop_to_body(sitk.GetArrayViewFromImage(img))]
        sitk.WriteImage(_crop(img, win), str(out_images / img_path.name), useCompression=True)
        lab_path = labels_dir / img_path.name.replace("_0000", "", 1)
        if lab_path.is_file():
            sitk.WriteImage(_crop(sitk.ReadImage(str(lab_path)), win), str(out_labels / lab_path.name),
                            useCompression=True)


def image_shapes(images_dir: Path) -> list[tuple[int, ...]]:
    """(z, y, x) voxel shape of every image in ``images_dir`` (for the report)."""
    out = []
    for p in sorted(images_dir.iterdir()):
        r = sitk.ImageFileReader()
        r.SetFileName(str(p))
        r.ReadImageInformation()
        out.append(tuple(int(s) for s in reversed(r.GetSize())))
    return out
