"""``make_phantom_dataset`` and the ``autoseg make_phantoms`` command: a raw nnU-Net v2 dataset.

Each case's seed is derived from (dataset seed, case number), and test cases are numbered from
TEST_OFFSET, so changing --num-train never renames or regenerates another case. Files are written
atomically and complete cases are skipped, so an interrupted run is resumed by running it again.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from autoseg import AutosegError
from autoseg.io import read_header, write_image
from autoseg.synthetic.anatomy import LABELS
from autoseg.synthetic.params import SIZES
from autoseg.utils import load_json, save_json

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
TEST_OFFSET = 5000
UNLABELLED_OFFSET = 8000
ORGANS = [v for n, v in LABELS.items() if v and "tumour" not in n]
TUMOUR_HOST = {LABELS["liver_tumour"]: LABELS["liver"]}
FILE_ENDING = ".nii.gz"


def case_seed(seed: int, number: int) -> int:
    """A well-mixed 31-bit seed per case, so neighbouring dataset seeds share no cases."""
    return int(np.random.SeedSequence([int(seed), int(number), GENERATOR_VERSION]).generate_state(1)[0] >> 1)


def case_plan(name: str, num_train: int, num_test: int, num_unlabelled: int = 0) -> list[tuple[str, int, str]]:
    """(case id, case number, split) for every case of the dataset (split "Unlabeled": image only)."""
    if num_train < 0 or num_test < 0 or num_unlabelled < 0:
        raise AutosegError(f"phantom dataset '{name}': case counts must be >= 0 "
                           f"(got {num_train}, {num_test}, {num_unlabelled})")
    if num_train > TEST_OFFSET or num_test > UNLABELLED_OFFSET - TEST_OFFSET:
        raise AutosegError(f"phantom dataset '{name}': at most {TEST_OFFSET} training and "
                           f"{UNLABELLED_OFFSET - TEST_OFFSET} test cases")
    train = [(f"{name}_{i:04d}", i, "Tr") for i in range(num_train)]
    test = [(f"{name}_{TEST_OFFSET + i:04d}", TEST_OFFSET + i, "Ts") for i in range(num_test)]
    return train + test + [(f"{name}_{UNLABELLED_OFFSET + i:04d}", UNLABELLED_OFFSET + i, "Unlabeled")
                           for i in range(num_unlabelled)]


def annotated_classes(seed: int, number: int, partial_organs: int) -> list[int] | None:
    """The label ids a partially labelled phantom annotates: ``partial_organs`` random organs (seeded
    per case), plus each tumour whose host organ is among them. None: fully labelled."""
    if not partial_organs or partial_organs >= len(ORGANS):
        return None
    rng = np.random.default_rng([case_seed(seed, number), 17])
    chosen = sorted(int(v) for v in rng.choice(ORGANS, partial_organs, replace=False))
    return sorted(chosen + [t for t, host in TUMOUR_HOST.items() if host in chosen])


def _case_paths(folder: Path, case_id: str, split: str) -> tuple[Path, Path]:
    return (folder / f"images{split}" / f"{case_id}_0000{FILE_ENDING}", folder / f"labels{split}" / f"{case_id}{FILE_ENDING}")


def _complete(image: Path, label: Path, split: str = "Tr") -> bool:
    if split == "Unlabeled":
        return image.exists()
    if not (image.exists() and label.exists()):
        return False
    try:
        return read_header(image).same_grid(read_header(label))
    except AutosegError:
        return False


def _write_case(folder: str, case_id: str, number: int, split: str, seed: int, size: str,
                partial_organs: int = 0) -> tuple[str, float]:
    """Worker: generate and write one case (skipped when already complete). Returns (id, seconds)."""
    from autoseg.synthetic.phantom import make_phantom

    image_path, label_path = _case_paths(Path(folder), case_id, split)
    if _complete(image_path, label_path, split):
        return case_id, 0.0
    t0 = time.perf_counter()
    image, label, geo = make_phantom(case_seed(seed, number), size)
    if split != "Unlabeled":
        keep = annotated_classes(seed, number, partial_organs) if split == "Tr" else None
        if keep is not None:
            label = np.where(np.isin(label, keep), label, 0).astype(label.dtype)
        write_image(label, geo, label_path)
    write_image(image, geo, image_path)
    return case_id, time.perf_counter() - t0


def dataset_json(name: str, num_train: int, seed: int, size: str, partial_organs: int = 0) -> dict:
    out = {
        "name": name,
        "description": f"Seeded synthetic abdominal CT phantoms (autoseg.synthetic, size '{size}')",
        "channel_names": {"0": "CT"},
        "labels": dict(LABELS),
        "numTraining": int(num_train),
        "file_ending": FILE_ENDING,
        "tumour_labels": ["liver_tumour"],
        "phantom": {"seed": int(seed), "size": size, "generator_version": GENERATOR_VERSION},
    }
    if partial_organs:
        out["phantom"]["partial_organs"] = int(partial_organs)
        partial = {f"{name}_{i:04d}": annotated_classes(seed, i, partial_organs) for i in range(num_train)}
        out["labelled_classes"] = {k: v for k, v in partial.items() if v is not None}
    return out


def _check_existing(folder: Path, meta: dict) -> None:
    path = folder / "dataset.json"
    if not path.exists():
        return
    old = load_json(path).get("phantom")
    if old != meta:
        raise AutosegError(f"{path}: existing dataset was made with {old}, not {meta}; "
                           "delete the folder or choose another --id")


def make_phantom_dataset(out_root: Path, dataset_id: int = 501, name: str = "Phantom", num_train: int = 20,
                         num_test: int = 4, seed: int = 0, size: str = "small", num_workers: int = 1,
                         progress: bool = True, num_unlabelled: int = 0, partial_organs: int = 0) -> Path:
    """Write ``out_root/Dataset{id}_{name}`` (imagesTr/labelsTr/imagesTs/labelsTs, dataset.json).

    labelsTs holds the test ground truth for evaluation. ``num_unlabelled`` images go to
    imagesUnlabeled/ (no labels); with ``partial_organs`` K every training case annotates only K random
    organs (the others are 0 in its label map; dataset.json's ``labelled_classes`` lists what it has). Rerunning with the same arguments only
    writes what is missing; a different seed or size for an existing folder is an error.
    """
    if size not in SIZES:
        raise AutosegError(f"unknown phantom size '{size}' (choose from {', '.join(SIZES)})")
    if not (name.isascii() and name.isalnum()):
        raise AutosegError(f"phantom dataset name '{name}' must be letters and digits only")
    folder = Path(out_root) / f"Dataset{int(dataset_id):03d}_{name}"
    if not 0 <= partial_organs <= len(ORGANS):
        raise AutosegError(f"--partial-organs must be between 0 and {len(ORGANS)}, got {partial_organs}")
    meta = dataset_json(name, num_train, seed, size, partial_organs)
    _check_existing(folder, meta["phantom"])
    plan = case_plan(name, num_train, num_test, num_unlabelled)
    for split in ("Tr", "Ts"):
        for kind in ("images", "labels"):
            (folder / f"{kind}{split}").mkdir(parents=True, exist_ok=True)
    if num_unlabelled:
        (folder / "imagesUnlabeled").mkdir(exist_ok=True)
    save_json(meta, folder / "dataset.json")
    todo = [c for c in plan if not _complete(*_case_paths(folder, c[0], c[2]), c[2])]
    log.info("%s: %d of %d phantom cases to generate (size %s)", folder, len(todo), len(plan), size)
    _run(folder, todo, seed, size, num_workers, progress, partial_organs)
    extra = sorted(p.name for p in (folder / "imagesTr").glob(f"*{FILE_ENDING}")
                   if p.name[: -len("_0000" + FILE_ENDING)] not in {c[0] for c in plan})
    if extra:
        log.warning("%s: %d training image(s) not in this run's plan were left in place: %s", folder, len(extra),
                    ", ".join(extra[:5]))
    return folder


def _run(folder: Path, todo: list[tuple[str, int, str]], seed: int, size: str, num_workers: int,
         progress: bool, partial_organs: int = 0) -> None:
    bar = None
    if progress and todo:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc="phantoms", unit="case")
    times: list[float] = []
    try:
        if num_workers <= 1 or len(todo) <= 1:
            for cid, number, split in todo:
                times.append(_write_case(str(folder), cid, number, split, seed, size, partial_organs)[1])
                if bar is not None:
                    bar.update()
        else:
            # spawn: safe even when the caller has torch threads or CUDA initialised
            with ProcessPoolExecutor(min(num_workers, len(todo)), mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(_write_case, str(folder), c, n, s, seed, size, partial_organs)
                           for c, n, s in todo]
                for fut in futures:
                    times.append(fut.result()[1])
                    if bar is not None:
                        bar.update()
    finally:
        if bar is not None:
            bar.close()
    if times:
        log.info("generated %d phantom case(s), %.2f s each on average", len(times), float(np.mean(times)))


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    from autoseg.paths import raw_root

    parser.add_argument("-o", "--output", default=None,
                        help=f"raw data root to create DatasetNNN_NAME in (default: AUTOSEG_RAW or {raw_root()})")
    parser.add_argument("--id", type=int, default=501, help="dataset id (default 501)")
    parser.add_argument("--name", default="Phantom", help="dataset name (default Phantom)")
    parser.add_argument("--num-train", type=int, default=20, help="labelled training cases (default 20)")
    parser.add_argument("--num-test", type=int, default=4, help="test cases with ground truth in labelsTs (default 4)")
    parser.add_argument("--num-unlabelled", type=int, default=0, dest="num_unlabelled",
                        help="images without labels written to imagesUnlabeled/ (semi-supervised training)")
    parser.add_argument("--partial-organs", type=int, default=0, metavar="K", dest="partial_organs",
                        help=f"each training case annotates only K random organs of {len(ORGANS)} "
                             "(dataset.json labelled_classes; 0: fully labelled)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--size", choices=sorted(SIZES), default="small",
                        help="small: child-sized, fast (demo/tests); medium: adult 384px; real: adult 512x512")
    parser.add_argument("-np", "--num-workers", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                        help="parallel processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_from_args(args: argparse.Namespace) -> int:
    from autoseg.paths import raw_root

    folder = make_phantom_dataset(raw_root(args.output), args.id, args.name, args.num_train, args.num_test,
                                  args.seed, args.size, args.num_workers, progress=not args.no_progress,
                                  num_unlabelled=args.num_unlabelled, partial_organs=args.partial_organs)
    print(folder)
    return 0
