"""``run_training``: resolve dataset, plans and trainer class, then train one stage/fold.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the same entry point joins the process group, so
``torchrun --nproc_per_node=4 -m autoseg run_training organ Trainer 501 0`` is all a cluster job needs.
SIGTERM (what schedulers send before killing a job) is turned into a normal exit so data-loading
workers are shut down and the last checkpoint stays valid.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Iterator

from autoseg import AutosegError
from autoseg.paths import find_dataset_folder, preprocessed_root, results_root
from autoseg.plans import load_plans, plans_file_name, plans_subdir
from autoseg.utils import atomic_path
from autoseg.trainers import distributed as ddp
from autoseg.trainers.registry import find_trainer
from autoseg.trainers.splits import parse_fold
from autoseg.devices import resolve_device


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_training(stage: str, trainer: str, task: str | int, fold: str | int, epochs: int | None = None,
                 iters_per_epoch: int | None = None, device: str = "auto", continue_training: bool = False,
                 pretrained: str | os.PathLike | None = None, trainer_path: str | os.PathLike | None = None,
                 num_workers: int | None = None, compile: bool = False,
                 preprocessed: str | os.PathLike | None = None, results: str | os.PathLike | None = None,
                 amp: bool | None = None, plans_name: str | None = None, seed: int | None = None) -> Path:
    """Train one stage/fold with the named trainer class; returns the fold's results folder.
    ``plans_name``: train on ``plans_NAME.json`` (its caches and results live in ``plans_NAME/``)."""
    cls = find_trainer(trainer, trainer_path)  # first: a typo should not wait for the dataset lookup
    dataset_folder = find_dataset_folder(task, preprocessed_root(preprocessed))
    plans_path = dataset_folder / plans_file_name(plans_name)
    plans = load_plans(plans_path)
    if stage not in plans["stages"]:
        raise AutosegError(f"{plans_path}: no stage '{stage}' (planned stages: {', '.join(plans['stages'])})")
    sub = plans_subdir(plans_name)
    cache_folder = dataset_folder / sub
    if sub and cache_folder.is_dir() and (dataset_folder / "splits.json").is_file() \
            and not (cache_folder / "splits.json").is_file():
        with atomic_path(cache_folder / "splits.json", ".json") as tmp:  # compare plans on the same folds
            shutil.copyfile(dataset_folder / "splits.json", tmp)
    fold = parse_fold(fold)
    for name, value in (("--epochs", epochs), ("--iters-per-epoch", iters_per_epoch)):
        if value is not None and value < 1:
            raise AutosegError(f"{name} must be at least 1, got {value}")
    dev = resolve_device(device)
    created = ddp.init_from_env(dev)
    try:
        output = results_root(results) / plans["dataset_name"] / sub / stage / cls.__name__ / f"fold_{fold}"
        t = cls(plans, stage, fold, cache_folder, dev, output, num_epochs=epochs,
                iters_per_epoch=iters_per_epoch, num_workers=num_workers, compile=compile, amp=amp,
                pretrained=pretrained, seed=seed)
        with _sigterm_as_exit():
            folder = t.fit(continue_training)
        if t.is_main:
            after_fold(t, task, device, preprocessed, results)
        return folder
    finally:
        if created:
            ddp.destroy()


def after_fold(t: object, task: str | int, device: str, preprocessed: str | os.PathLike | None,
               results: str | os.PathLike | None) -> None:
    """Fold ``all``: write the conservative default postprocessing (unless one is there). Folds 0-4: when
    this was the last missing fold of every stage, run the end-to-end cross-validation."""
    from autoseg.plans import organ_label_values

    if str(t.fold) == "all":
        from autoseg.inference.rule_sources import write_default_rules

        out = t.output_folder / "postprocessing.json"
        if t.stage != "roi" and not out.is_file():
            write_default_rules(t.dataset_folder / t.stage, t.train_cases, t.class_values,
                                organ_label_values(t.plans), out)
        return
    from autoseg.evaluation.crossval import maybe_evaluate_cv

    maybe_evaluate_cv(task, type(t).__name__, preprocessed=preprocessed, results=results, device=device)
