"""Pictures the demo leaves behind: an overlay of prediction vs truth, and the training curves."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from autoseg.io import read_image  # noqa: E402


def _best_slice(gt: np.ndarray, tumour_values: list[int]) -> int:
    """The axial slice that shows the most tumour, else the most foreground."""
    for values in (tumour_values, None):
        mask = np.isin(gt, values) if values else gt > 0
        counts = mask.sum(axis=(1, 2))
        if counts.max() > 0:
            return int(counts.argmax())
    return gt.shape[0] // 2


def save_overlay(ds_folder: Path, pred_folder: Path, out: Path, plans: dict) -> Path | None:
    """CT slice (abdominal window) with true contours solid and predicted contours dashed."""
    from autoseg.plans import tumour_label_values

    preds = sorted(pred_folder.glob("*.nii.gz"))
    if not preds:
        return None
    case = preds[0].name[: -len(".nii.gz")]
    ct, _ = read_image(ds_folder / "imagesTs" / f"{case}_0000.nii.gz")
    gt, _ = read_image(ds_folder / "labelsTs" / f"{case}.nii.gz")
    pr, _ = read_image(preds[0])
    z = _best_slice(gt, tumour_label_values(plans))
    names = {v: k for k, v in plans["labels"].items() if v}
    colours = plt.cm.tab10(np.linspace(0, 1, 10))
    fig, ax = plt.subplots(figsize=(7, 7))
    ax.imshow(np.clip(ct[z], -200, 300), cmap="gray")
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
    ax.set_title(f"{case}, slice {z}")
    ax.axis("off")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def save_training_curves(results_dataset: Path, out: Path) -> Path | None:
    """Every stage's progress.png side by side in one picture."""
    images = sorted(results_dataset.glob("*/*/fold_*/progress.png"))
    if not images:
        return None
    fig, axes = plt.subplots(1, len(images), figsize=(6 * len(images), 5), squeeze=False)
    for ax, path in zip(axes[0], images):
        ax.imshow(plt.imread(path))
        ax.set_title(f"{path.parts[-4]} ({path.parts[-3]}, {path.parts[-2]})")
        ax.axis("off")
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out
