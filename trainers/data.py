"""Patch sampling from the preprocessed cache and background loading that never hangs or orphans.

Reading: an uncompressed ``.npz`` stores each array verbatim, so we memory-map ``data``/``seg`` straight
out of the archive: a patch reads only its own pages, every worker shares the OS page cache, and no
second copy of the dataset is written. A compressed archive is unpacked once to ``<stage>/unpacked/``
(``.npy``, atomic) and memory-mapped from there.

Loading: batches are produced by an ``IterableDataset`` (patch sampling fused with the spatial
augmentation, then batchgeneratorsv2's intensity transforms and mirroring) run in
``torch.utils.data`` worker processes. We use torch's workers rather than batchgenerators' augmenters
because they watch their parent (a SIGKILLed trainer leaves no orphan), surface a crashed worker as
an error instead of a hang, time out, and hand batches over in shared memory. ``BatchLoader`` is a
context manager; it and an ``atexit`` hook terminate every worker on errors, Ctrl-C and normal ends.
``num_workers=0`` runs everything in-process (deterministic: used by the exact-resume test).
"""
from __future__ import annotations

import atexit
import logging
import os
import weakref
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from autoseg import AutosegError
from autoseg.augmentation import IGNORE_LABEL, SpatialAugmenter
from autoseg.utils import atomic_path, load_json

log = logging.getLogger(__name__)


def _memmap_npz_member(path: Path, name: str) -> np.ndarray | None:
    """Memory-map ``name`` (e.g. ``data.npy``) inside an uncompressed .npz; None if it is compressed."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            raise AutosegError(f"{path}: corrupt zip header for {name}")
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
        offset = f.tell()
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _unpacked(path: Path, key: str) -> np.ndarray:
    """Unpack a compressed member once to ``unpacked/<case>_<key>.npy`` and memory-map it."""
    out = path.parent / "unpacked" / f"{path.stem}_{key}.npy"
    if not out.is_file() or out.stat().st_mtime < path.stat().st_mtime:
        with np.load(path) as z:
            arr = z[key]
        with atomic_path(out, ".npy") as tmp:
            np.save(tmp, arr)
    return np.load(out, mmap_mode="r")


def open_case_arrays(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(data (C,Z,Y,X), seg (1,Z,Y,X)) of one cached case, memory-mapped where possible."""
    path = Path(path)
    try:
        out = []
        for key in ("data", "seg"):
            arr = _memmap_npz_member(path, f"{key}.npy")
            out.append(arr if arr is not None else _unpacked(path, key))
    except (KeyError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise AutosegError(f"{path}: not a readable cache archive with 'data' and 'seg' ({e})") from None
    data, seg = out
    if data.ndim != 4 or seg.ndim != 4 or data.shape[1:] != seg.shape[1:]:
        raise AutosegError(f"{path}: data {data.shape} and seg {seg.shape} must be (C,Z,Y,X) and (1,Z,Y,X)")
    return data, seg


class CaseStore:
    """Cached cases of one stage: properties JSON and memory-mapped arrays, opened lazily per process."""

    def __init__(self, folder: str | os.PathLike, case_ids: Sequence[str], max_open: int = 64) -> None:
        self.folder = Path(folder)
        self.case_ids = list(case_ids)
        missing = [c for c in self.case_ids if not (self.folder / f"{c}.npz").is_file()]
        if missing:
            raise AutosegError(f"{self.folder}: cached cases missing: {', '.join(missing[:5])}"
                               f"{' ...' if len(missing) > 5 else ''}")
        self.max_open = max_open
        self._props: dict[str, dict] = {}
        self._arrays: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = OrderedDict()  # memmaps are reopened in each worker
        return state

    def properties(self, case_id: str) -> dict:
        if case_id not in self._props:
            props = load_json(self.folder / f"{case_id}.json")
            locs = props.get("class_locations") or {}
            props["_locations"] = {int(k): np.asarray(v, dtype=np.int64).reshape(-1, 3)
                                   for k, v in locs.items() if len(v)}
            props["_annotated"] = None if props.get("unlabelled") else props.get("annotated_classes")
            self._props[case_id] = props
        return self._props[case_id]

    def arrays(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        if case_id in self._arrays:
            self._arrays.move_to_end(case_id)
            return self._arrays[case_id]
        arrs = open_case_arrays(self.folder / f"{case_id}.npz")
        self._arrays[case_id] = arrs
        while len(self._arrays) > self.max_open:
            self._arrays.popitem(last=False)
        return arrs


def crop_padded(arr: np.ndarray, start: Sequence[int], size: Sequence[int], pad_value: float,
                dtype: Any) -> np.ndarray:
    """arr[:, start:start+size] as ``dtype``, regions outside the array filled with ``pad_value``."""
    out = np.full((arr.shape[0], *size), pad_value, dtype=dtype)
    src, dst = [slice(None)], [slice(None)]
    for s, n, dim in zip(start, size, arr.shape[1:]):
        a, b = max(s, 0), min(s + n, dim)
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    out[tuple(dst)] = arr[tuple(src)]
    return out


class PatchSampler:
    """Random patches, a share of them centred on a random voxel of a random class present in the case.

    A patch lies inside the case wherever the case is at least as large (like nnU-Net's sampling);
    smaller axes are padded (image 0, labels -1 = unknown). With a ``SpatialAugmenter`` each sample's
    rotation/scale is drawn first and only the region it reads is cut from the (memory-mapped) case.
    Randomness comes from numpy's global RNG, which workers seed and checkpoints save.
    """

    def __init__(self, store: CaseStore, case_ids: Sequence[str], batch_size: int, patch_size: Sequence[int],
                 oversample_foreground: float = 0.33, spatial: SpatialAugmenter | None = None,
                 num_classes: int | None = None) -> None:
        if not case_ids:
            raise AutosegError(f"{store.folder}: no cases to sample patches from")
        self.store, self.case_ids, self.batch_size = store, list(case_ids), int(batch_size)
        self.num_classes = num_classes
        self.patch = [int(s) for s in patch_size]
        self.oversample_foreground = oversample_foreground
        self.spatial = spatial

    def _start(self, case_id: str, shape: Sequence[int], foreground: bool) -> list[int]:
        lbs = [min(0, dim - p) for dim, p in zip(shape, self.patch)]
        ubs = [max(0, dim - p) for dim, p in zip(shape, self.patch)]
        locs = self.store.properties(case_id)["_locations"] if foreground else {}
        if locs:
            cls = list(locs)[np.random.randint(len(locs))]
            loc = locs[cls][np.random.randint(len(locs[cls]))]
            return [int(np.clip(c - p // 2, lb, ub)) for c, p, lb, ub in zip(loc, self.patch, lbs, ubs)]
        return [np.random.randint(lb, ub + 1) for lb, ub in zip(lbs, ubs)]

    def case_arrays(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """The (data, seg) arrays patches are cut from (a subclass may swap channels)."""
        return self.store.arrays(case_id)

    def sample(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """One (data (C,*P) float32, seg (1,*P) int8) patch of ``case_id``."""
        img, lbl = self.case_arrays(case_id)
        params = self.spatial.draw() if self.spatial is not None else None
        start = self._start(case_id, img.shape[1:], np.random.uniform() < self.oversample_foreground)
        if params is None:
            return (crop_padded(img, start, self.patch, 0.0, np.float32),
                    crop_padded(lbl, start, self.patch, IGNORE_LABEL, np.int8))
        center = [s + (p - 1) / 2 for s, p in zip(start, self.patch)]
        lo, size = self.spatial.input_box(center, params)
        data = crop_padded(img, lo, size, 0.0, np.float32)
        seg = crop_padded(lbl, lo, size, IGNORE_LABEL, np.int8)
        return self.spatial.apply(data, seg, params, [c - o for c, o in zip(center, lo)])

    def annotated(self, case_id: str) -> np.ndarray:
        """(K,) bool over output channels (0 = background): which classes the case annotates. A partially
        labelled case lists its stage-local classes in ``annotated_classes``; unlabelled caches none."""
        props = self.store.properties(case_id)
        out = np.zeros(self.num_classes or 0, dtype=bool)
        if props.get("unlabelled"):
            return out
        listed = props["_annotated"]
        out[:] = listed is None
        if listed is not None:
            out[0] = True
            out[[int(c) for c in listed if 0 < int(c) < out.size]] = True
        return out

    def sample_batch(self) -> dict[str, Any]:
        data, seg, keys = [], [], []
        for _ in range(self.batch_size):
            case_id = self.case_ids[np.random.randint(len(self.case_ids))]
            d, s = self.sample(case_id)
            data.append(d)
            seg.append(s)
            keys.append(case_id)
        batch = {"data": np.stack(data), "seg": np.stack(seg), "keys": keys}
        if self.num_classes:
            batch["annotated"] = np.stack([self.annotated(k) for k in keys])
        return batch


def seed_process(seed: int) -> None:
    """Seed every RNG the data path uses (sampling draws from numpy's, batchgeneratorsv2 from torch's)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class BatchStream(IterableDataset):
    """Endless stream of augmented batches as tensors: data float32 (B,C,*P), seg int8 (B,1,*P)."""

    def __init__(self, sampler: PatchSampler, transforms: Callable | None, seed: int, start: int = 0) -> None:
        self.sampler, self.transforms, self.seed, self.start = sampler, transforms, seed, start

    def next_batch(self) -> dict[str, Any]:
        """data, seg, the case ids (``keys``) and, when the sampler knows the class count,
        ``annotated`` (B, K) bool and ``labelled`` (B,) bool (False: an unlabelled case)."""
        batch = self.sampler.sample_batch()
        keys, annotated = batch["keys"], batch.get("annotated")
        if self.transforms is not None:
            batch = self.transforms(**batch)
        out = {"data": torch.from_numpy(np.ascontiguousarray(batch["data"], dtype=np.float32)),
               "seg": torch.from_numpy(np.ascontiguousarray(batch["seg"], dtype=np.int8)), "keys": list(keys)}
        if annotated is not None:
            out["annotated"] = torch.from_numpy(annotated)
            out["labelled"] = out["annotated"].any(1)
        return out

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        if info is None:  # in-process: the global RNGs, which checkpoints save and restore
            while True:
                yield self.next_batch()
        torch.set_num_threads(1)
        # Workers are read round-robin, so worker w makes batches start+w, start+w+n, ...; seeding each
        # batch by its index makes the stream independent of where workers were started: a run resumed
        # at epoch e (start = e * iterations) sees exactly the batches an uninterrupted run saw.
        index = self.start + info.id
        while True:
            seed_process(int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0]))
            yield self.next_batch()
            index += info.num_workers


_OPEN_LOADERS: "weakref.WeakSet[BatchLoader]" = weakref.WeakSet()


@atexit.register
def _close_all_loaders() -> None:
    for loader in list(_OPEN_LOADERS):
        loader.close()


class BatchLoader:
    """Iterator over a ``BatchStream`` in ``num_workers`` processes (0: in this process).

    Use as a context manager (or call ``close``): every worker is terminated and reaped on exit,
    whatever ended the block. A batch not ready within ``timeout`` seconds raises instead of hanging.
    """

    def __init__(self, stream: BatchStream, num_workers: int = 0, pin_memory: bool = False,
                 timeout: float = 600.0, prefetch_factor: int = 2) -> None:
        self.stream, self.num_workers = stream, int(num_workers)
        self.pin_memory, self.timeout, self.prefetch_factor = pin_memory, timeout, prefetch_factor
        self._it: Iterator | None = None
        _OPEN_LOADERS.add(self)

    def _start(self) -> Iterator:
        if self.num_workers == 0:
            return iter(self.stream)
        loader = DataLoader(self.stream, batch_size=None, num_workers=self.num_workers,
                            pin_memory=self.pin_memory, timeout=self.timeout,
                            prefetch_factor=self.prefetch_factor, persistent_workers=False)
        return iter(loader)

    def __iter__(self) -> "BatchLoader":
        return self

    def __next__(self) -> dict[str, Any]:
        if self._it is None:
            self._it = self._start()
        return next(self._it)

    def worker_pids(self) -> list[int]:
        return [w.pid for w in getattr(self._it, "_workers", [])]

    def close(self) -> None:
        it, self._it = self._it, None
        if it is None:
            return
        workers = list(getattr(it, "_workers", []))
        shutdown = getattr(it, "_shutdown_workers", None)
        try:
            if shutdown is not None:
                shutdown()
        finally:
            for w in workers:
                if w.is_alive():
                    w.terminate()
                w.join(timeout=5)
                if w.is_alive():
                    w.kill()
                    w.join(timeout=5)

    def __enter__(self) -> "BatchLoader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to report to
            pass
