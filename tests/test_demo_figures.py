"""The demo's pictures: radiological orientation whatever the file's direction; curves in pipeline order."""
import numpy as np
import pytest

from autoseg.demo_figures import radiological, save_training_curves
from autoseg.io import Geometry, write_image

# LPS direction cosines (identity) and RAS (x and y flipped), as ITK stores them
LPS = (1, 0, 0, 0, 1, 0, 0, 0, 1)
RAS = (-1, 0, 0, 0, -1, 0, 0, 0, 1)


@pytest.mark.parametrize("direction", [LPS, RAS])
def test_radiological_view_puts_patient_left_on_the_right(tmp_path, direction):
    arr = np.zeros((4, 10, 12), np.int16)
    # a marker on the patient's left and anterior: in LPS index space that is high x, low y
    lps_left_anterior = (slice(None), slice(0, 2), slice(10, 12))
    if direction == RAS:  # the same physical place in a RAS file: low x, high y
        arr[:, 8:10, 0:2] = 1
    else:
        arr[lps_left_anterior] = 1
    write_image(arr, Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), direction, arr.shape), tmp_path / "m.nii.gz")
    view, spacing, _ = radiological(tmp_path / "m.nii.gz")
    ys, xs = np.nonzero(view[0])
    assert xs.min() >= 10 and ys.max() <= 1  # right of the picture (patient's left), top (anterior)
    assert spacing == (2.0, 1.0, 1.0)


def test_training_curves_in_pipeline_order(tmp_path):
    import matplotlib.pyplot as plt

    for i, stage in enumerate(("tumour", "organ", "roi")):  # alphabetical order is the wrong one
        pic = np.zeros((50, 60, 3))
        pic[..., i] = 1.0
        d = tmp_path / stage / "TrainerFast" / "fold_all"
        d.mkdir(parents=True)
        plt.imsave(d / "progress.png", pic)
    out = save_training_curves(tmp_path, tmp_path / "curves.png")
    img = plt.imread(out)
    rows = [r for r in range(img.shape[0]) if img[r, img.shape[1] // 2, :3].max() > 0.9
            and img[r, img.shape[1] // 2, :3].min() < 0.1]
    colours = [int(np.argmax(img[r, img.shape[1] // 2, :3])) for r in rows]
    order = [c for j, c in enumerate(colours) if j == 0 or c != colours[j - 1]]
    assert order == [2, 1, 0]  # roi (blue), organ (green), tumour (red), top to bottom
