"""Which saliency a refinement stage trains on, and when (RSTN's training modes as a schedule).

RSTN trains its fine stage first on ground-truth saliency, then on the coarse stage's own predictions,
which is what it meets at test time. Every ``Trainer`` mixes this class in; for a stage whose plans
input reads saliency it samples:

- training iterations ``< gt_saliency_until x (epochs x iterations per epoch)``: the cache's
  ground-truth masks, degraded per sample like a coarse model errs (``autoseg.trainers.saliency``);
- from then on: ``coarse_saliency_share`` of the samples read the source stage's cached prediction
  (``autoseg.preprocessing.coarse_saliency``, made by ``autoseg refine_saliency``), undegraded; the
  rest keep degraded ground truth.

``gt_saliency_until = 1.0`` trains on ground truth only and needs no predictions. Once the schedule
uses predictions, the per-epoch validation patches and the final validation read them too (that is
what inference feeds). The switch is by global iteration index, so loader workers, in-process
loading and resumed runs agree on it. Subclasses change the class attributes below.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import get_worker_info

from autoseg import AutosegError
from autoseg.preprocessing.coarse_saliency import coarse_folder, missing_cases
from autoseg.stage_graph import stage_in_channels, stage_input
from autoseg.trainers.data import CaseStore, PatchSampler, _memmap_npz_member


class ChannelStack:
    """(C, Z, Y, X) view read like an array: the cached image channels, then other saliency channels."""

    def __init__(self, image: np.ndarray, first: int, saliency: np.ndarray) -> None:
        if tuple(saliency.shape[1:]) != tuple(image.shape[1:]):
            raise AutosegError(f"coarse saliency shape {saliency.shape[1:]} differs from the cache's {image.shape[1:]}")
        self.image, self.first, self.saliency = image, first, saliency
        self.shape = (first + saliency.shape[0], *image.shape[1:])
        self.ndim, self.dtype = 4, image.dtype

    def __getitem__(self, idx: Any) -> np.ndarray:
        idx = idx if isinstance(idx, tuple) else (idx,)
        if idx[0] != slice(None):
            raise IndexError("ChannelStack is indexed with every channel (':') first")
        rest = idx[1:]
        return np.concatenate([np.asarray(self.image[(slice(0, self.first), *rest)]),
                               np.asarray(self.saliency[(slice(None), *rest)], dtype=self.image.dtype)])


class CoarseSaliencySampler(PatchSampler):
    """A ``PatchSampler`` whose samples read the coarse saliency from batch ``switch_iteration`` on
    (each with probability ``share``); batches say which samples did (``coarse``, (B,) bool)."""

    def __init__(self, *args: Any, first_channel: int, coarse_dir: Path, switch_iteration: int, share: float,
                 start: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first, self.coarse_dir, self.switch, self.share = first_channel, Path(coarse_dir), switch_iteration, share
        self.start, self._count, self._coarse_mode, self._use = start, 0, False, False
        self._flags: list[bool] = []
        self._maps: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = {}  # memory maps are reopened in each worker, not pickled as copies
        return state

    def iteration(self) -> int:
        """Global index of the batch being made (as ``BatchStream`` numbers them across workers)."""
        info = get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.start + w + self._count * n

    def coarse(self, case_id: str) -> np.ndarray:
        if case_id not in self._maps:
            path = self.coarse_dir / f"{case_id}.npz"
            arr = _memmap_npz_member(path, "saliency.npy")
            if arr is None:
                with np.load(path) as z:
                    arr = z["saliency"]
            self._maps[case_id] = arr
        return self._maps[case_id]

    def case_arrays(self, case_id: str) -> tuple[Any, np.ndarray]:
        img, lbl = super().case_arrays(case_id)
        return (ChannelStack(img, self.first, self.coarse(case_id)), lbl) if self._use else (img, lbl)

    def sample(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        self._use = self._coarse_mode and (self.share >= 1.0 or np.random.uniform() < self.share)
        self._flags.append(self._use)
        return super().sample(case_id)

    def sample_batch(self) -> dict[str, Any]:
        self._coarse_mode = self.iteration() >= self.switch
        self._count += 1
        self._flags = []
        batch = super().sample_batch()
        batch["coarse"] = np.asarray(self._flags, dtype=bool)
        return batch


class SaliencySchedule:
    """Mixed into ``Trainer``: the saliency schedule of refinement stages (no effect on other stages)."""

    gt_saliency_until: float = 0.5      # share of the training iterations on (degraded) ground-truth saliency
    coarse_saliency_share: float = 1.0  # after the switch: share of samples reading the coarse prediction
    coarse_saliency_fold: str | None = None  # whose predictions: None = this fold's folder, else fold 'all'

    def saliency_switch_iteration(self) -> int | None:
        """Training iteration from which coarse saliency is read; None: never (GT only, or no saliency)."""
        if not stage_input(self.plans, self.stage).saliency_classes:
            return None
        if not 0.0 <= self.gt_saliency_until <= 1.0 or not 0.0 <= self.coarse_saliency_share <= 1.0:
            raise AutosegError(f"{type(self).__name__}: gt_saliency_until and coarse_saliency_share must lie in "
                               f"[0, 1] (got {self.gt_saliency_until}, {self.coarse_saliency_share})")
        total = self.num_epochs * self.iters_per_epoch
        switch = int(round(self.gt_saliency_until * total))
        return None if switch >= total or self.coarse_saliency_share == 0.0 else switch

    def coarse_saliency_dir(self) -> Path | None:
        """The folder of coarse predictions this run reads (None when the schedule needs none); a one-line
        error when a training or validation case has none."""
        if self.saliency_switch_iteration() is None:
            return None
        if getattr(self, "_coarse_dir", None) is None:
            own = coarse_folder(self.dataset_folder, self.stage, self.fold)
            fold = self.coarse_saliency_fold or (self.fold if own.is_dir() else "all")
            cases = sorted(set(self.train_cases + self.val_cases))
            missing = missing_cases(self.dataset_folder, self.plans, self.stage, fold, cases)
            if missing:
                src = stage_input(self.plans, self.stage).saliency_stage
                raise AutosegError(
                    f"{coarse_folder(self.dataset_folder, self.stage, fold)}: no current coarse saliency for "
                    f"{len(missing)} of {len(cases)} case(s) (e.g. {missing[0]}); run 'autoseg refine_saliency "
                    f"{self.stage} {self.plans['dataset_name']} {fold}' (predicts them with stage '{src}''s "
                    "checkpoint) or train with gt_saliency_until = 1.0")
            self._coarse_dir = coarse_folder(self.dataset_folder, self.stage, fold)
        return self._coarse_dir

    def _sampler(self, store: CaseStore, cases: list[str], switch: int, start: int, share: float,
                 spatial: Any) -> PatchSampler:
        args = (store, cases, self.batch_size, self.patch_size, self.oversample_foreground, spatial, self.num_classes)
        folder = self.coarse_saliency_dir()
        if folder is None:
            return PatchSampler(*args)
        n_sal = len(stage_input(self.plans, self.stage).saliency_classes)
        return CoarseSaliencySampler(*args, first_channel=stage_in_channels(self.plans, self.stage) - n_sal,
                                     coarse_dir=folder, switch_iteration=switch, share=share, start=start)

    def training_sampler(self, store: CaseStore) -> PatchSampler:
        switch = self.saliency_switch_iteration()
        if switch is not None:
            self.write_log(f"saliency schedule: degraded ground truth for iterations < {switch}, then the "
                           f"'{stage_input(self.plans, self.stage).saliency_stage}' stage's predictions "
                           f"({self.coarse_saliency_dir()}) for {self.coarse_saliency_share:.0%} of samples")
        return self._sampler(store, self.train_cases, switch or 0, self.current_epoch * self.iters_per_epoch,
                             self.coarse_saliency_share, self.spatial_augmenter())

    def validation_sampler(self, store: CaseStore) -> PatchSampler:
        return self._sampler(store, self.val_cases, 0, 0, 1.0, None)

    def validation_input(self, case_id: str, data: np.ndarray) -> np.ndarray:
        """The cached volume the final validation predicts: saliency channels from the coarse stage's
        prediction when the schedule uses predictions."""
        folder = self.coarse_saliency_dir()
        if folder is None:
            return data
        n_sal = len(stage_input(self.plans, self.stage).saliency_classes)
        first = stage_in_channels(self.plans, self.stage) - n_sal
        with np.load(folder / f"{case_id}.npz") as z:
            sal = z["saliency"]
        return ChannelStack(data, first, sal)[:]
