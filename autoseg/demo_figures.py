"""Pictures the demo leaves behind: an overlay of prediction vs truth, and the training curves."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _best_slice(gt: np.ndarray, tumour_values: list[int]) -> int:
    """The axial slice that shows the most tumour, else the most foreground."""
    for values in (tumour_values, None):
        mask = np.isin(gt, values) if values else gt > 0
        counts = mask.sum(axis=(1, 2))
        if counts.max() > 0:
            return int(counts.argmax())
    return gt.shape[0] // 2


def radiological(path: Path) -> tuple[np.ndarray, tuple[float, float, float], object]:
    """Array (z, y, x) reoriented to LPS, so an axial slice shown with row 0 at the top is the
    radiological view (anterior up, the patient's right on the viewer's left); spacing and image too."""
    import SimpleITK as sitk

    from autoseg.io import read_sitk

    img = sitk.DICOMOrient(read_sitk(path), "LPS")
    return sitk.GetArrayFromImage(img), tuple(float(s) for s in reversed(img.GetSpacing())), img


def save_overlay(ds_folder: Path, pred_folder: Path, out: Path, plans: dict) -> Path | None:
    """CT slice (abdominal window) in the radiological view with true contours solid and predicted
    contours dashed, L/R/A/P marks and the slice's position in mm."""
    from autoseg.plans import tumour_label_values

    preds = sorted(pred_folder.glob("*.nii.gz"))
    if not preds:
        return None
    case = preds[0].name[: -len(".nii.gz")]
    ct, spacing, img = radiological(ds_folder / "imagesTs" / f"{case}_0000.nii.gz")
    gt = radiological(ds_folder / "labelsTs" / f"{case}.nii.gz")[0]
    pr = radiological(preds[0])[0]
    z = _best_slice(gt, tumour_label_values(plans))
    z_mm = img.TransformIndexToPhysicalPoint((0, 0, z))[2]  # LPS: the third axis points superior
    names = {v: k for k, v in plans["labels"].items() if v}
    colours = plt.cm.tab10(np.linspace(0, 1, 10))
    fig, ax = plt.subplots(figsize=(7, 7))
    ax.imshow(np.clip(ct[z], -200, 300), cmap="gray", aspect=spacing[1] / spacing[2])
    handles = []
    for i, (v, name) in enumerate(sorted(names.items())):
        c = colours[i % 10]
        for seg, style in ((gt, "solid"), (pr, "dashed")):
            if (seg[z] == v).any():
                ax.contour(seg[z] == v, levels=[0.5], colors=[c], linestyles=style, linewidths=1.2)
        handles.append(plt.Line2D([], [], color=c, label=name))
    handles += [plt.Line2D([], [], color="w", ls="solid", label="truth (solid)"),
                plt.Line2D([], [], color="w", ls="dashed", label="prediction (dashed)")]
    ax.legend(handles=handles, loc="lower right", fontsize=7, facecolor="black", labelcolor="white")
    mark = dict(color="yellow", fontsize=14, fontweight="bold", transform=ax.transAxes, va="center", ha="center")
    for text, x, y in (("R", 0.03, 0.5), ("L", 0.97, 0.5), ("A", 0.5, 0.97), ("P", 0.5, 0.03)):
        ax.text(x, y, text, **mark)
    ax.set_title(f"{case}: axial slice {z + 1}/{ct.shape[0]} at z = {z_mm:.1f} mm (radiological view)")
    ax.axis("off")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def save_training_curves(results_dataset: Path, out: Path) -> Path | None:
    """Every stage's progress.png at its own size, one below the other in pipeline order."""
    from autoseg.plans import STAGES

    images = sorted(results_dataset.glob("*/*/fold_*/progress.png"),
                    key=lambda p: (STAGES.index(p.parts[-4]) if p.parts[-4] in STAGES else len(STAGES), str(p)))
    if not images:
        return None
    pictures = [plt.imread(p) for p in images]
    width = max(p.shape[1] for p in pictures) / 100
    heights = [p.shape[0] / 100 + 0.4 for p in pictures]
    fig, axes = plt.subplots(len(images), 1, figsize=(width, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, path, pic in zip(axes[:, 0], images, pictures):
        ax.imshow(pic)
        ax.set_title(f"stage {path.parts[-4]} ({path.parts[-3]}, {path.parts[-2]})", fontsize=14)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
