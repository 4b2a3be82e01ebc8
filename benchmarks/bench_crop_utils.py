"""Our bbox and crop-with-padding helpers vs acvl-utils' (nnU-Net v2's), on CT-sized arrays.

* bbox of a mask: ``autoseg.preprocessing.crop.bbox_of_mask`` vs ``acvl_utils ... get_bbox_from_mask``
  on a (200, 512, 512) bool mask holding a liver-sized box and on one holding a body-sized box.
* patch cut with padding and a dtype cast, from a float16 case (the trainer's hot path):
  ``autoseg.trainers.data.crop_padded`` vs ``acvl_utils ... crop_and_pad_nd(..., cast_cropped_to=)``,
  patches inside the case and patches reaching 16 voxels past its border.

Median of ``--repeats`` timings, one thread. Run: ``python -m benchmarks.bench_crop_utils``.
"""
from __future__ import annotations

import argparse

import numpy as np

from benchmarks.measure import median_seconds


def _median_ms(fn, repeats: int) -> float:
    return 1000 * median_seconds(fn, repeats)


def main(argv: list[str] | None = None) -> int:
    from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd, get_bbox_from_mask

    from autoseg.preprocessing.crop import bbox_of_mask
    from autoseg.trainers.data import crop_padded

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args(argv)
    r = args.repeats
    rows = []
    for label, box in (("liver-sized box", (slice(60, 140), slice(150, 350), slice(100, 300))),
                       ("body-sized box", (slice(5, 195), slice(40, 470), slice(30, 480)))):
        mask = np.zeros((200, 512, 512), bool)
        mask[box] = True
        assert bbox_of_mask(mask) == [[int(i) for i in b] for b in get_bbox_from_mask(mask)]
        rows.append((f"bbox of mask, {label}", _median_ms(lambda: bbox_of_mask(mask), r),
                     _median_ms(lambda: get_bbox_from_mask(mask), r)))
    case = np.random.default_rng(0).normal(size=(1, 100, 220, 220)).astype(np.float16)
    for patch in ([32, 64, 64], [64, 128, 128], [80, 160, 160]):
        for where, start in (("inside", [10, 20, 30]), ("past border", [-16, 220 - patch[1] + 16, -16])):
            bbox = [[s, s + n] for s, n in zip(start, patch)]
            a = crop_padded(case, start, patch, 0.0, np.float32)
            b = crop_and_pad_nd(case, bbox, 0.0, cast_cropped_to=np.float32)
            assert a.dtype == b.dtype and np.array_equal(a, b)
            rows.append((f"crop+pad {patch} {where}", _median_ms(lambda: crop_padded(case, start, patch, 0.0, np.float32), r),
                         _median_ms(lambda: crop_and_pad_nd(case, bbox, 0.0, cast_cropped_to=np.float32), r)))
    print(f"{'operation':40s} {'ours ms':>9s} {'acvl ms':>9s}")
    for name, ours, acvl in rows:
        print(f"{name:40s} {ours:9.2f} {acvl:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
