"""Where raw datasets, preprocessed caches and results live.

CLI flags override environment variables, which override defaults under ./autoseg_data/.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from autoseg import AutosegError

_DEFAULT_ROOT = Path("autoseg_data")


def raw_root(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override)
    if os.environ.get("AUTOSEG_RAW"):
        return Path(os.environ["AUTOSEG_RAW"])
    if os.environ.get("nnUNet_raw"):
        return Path(os.environ["nnUNet_raw"])
    return _DEFAULT_ROOT / "raw"


def preprocessed_root(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override)
    return Path(os.environ.get("AUTOSEG_PREPROCESSED") or _DEFAULT_ROOT / "preprocessed")


def results_root(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override)
    return Path(os.environ.get("AUTOSEG_RESULTS") or _DEFAULT_ROOT / "results")


_NAME_RE = re.compile(r"^(Dataset|Task)(\d+)_(.+)$")


def check_dataset_name(name: object, where: str, folder: str | os.PathLike | None = None) -> str:
    """``name`` if it follows the dataset naming rule (``DatasetNNN_Name`` / ``TaskNNN_Name``, one path
    component) and, when ``folder`` is a dataset folder, equals its name: the name becomes a results
    path, so ``../x`` or an absolute path would write outside ``AUTOSEG_RESULTS``."""
    ok = (isinstance(name, str) and _NAME_RE.match(name) is not None and Path(name).name == name
          and not any(c in name for c in "/\\\0:") and ".." not in name)
    if not ok:
        raise AutosegError(f"{where}: plans key 'dataset_name' must be one folder name like Dataset501_Name "
                           f"or Task501_Name (no path separators or '..'), got {name!r}")
    if folder is not None and _NAME_RE.match(Path(folder).name) and Path(folder).name != name:
        raise AutosegError(f"{where}: plans key 'dataset_name' is {name!r} but the plans sit in dataset "
                           f"folder {Path(folder).name!r}; they must agree")
    return name


def list_datasets(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _NAME_RE.match(p.name))


def find_dataset_folder(task: str | int, root: str | os.PathLike | None = None) -> Path:
    """Resolve ``501``, ``Dataset501_X`` or ``Task501_X`` to exactly one folder under ``root``."""
    root = Path(root) if root is not None else raw_root()
    task = str(task)
    if (root / task).is_dir() and _NAME_RE.match(task):
        return root / task
    if not task.isdigit():
        raise AutosegError(f"dataset '{task}' not found in {root}; known: {', '.join(list_datasets(root)) or 'none'}")
    matches = [n for n in list_datasets(root) if int(_NAME_RE.match(n).group(2)) == int(task)]
    if not matches:
        known = ", ".join(list_datasets(root)) or "none"
        raise AutosegError(f"no dataset with id {task} in {root} (known datasets: {known})")
    if len(matches) > 1:
        raise AutosegError(f"dataset id {task} is ambiguous in {root}: {', '.join(matches)}")
    return root / matches[0]


def dataset_name(task: str | int, raw: str | os.PathLike | None = None,
                 preprocessed: str | os.PathLike | None = None) -> str:
    """The dataset's folder name, looked up in the raw root, else in the preprocessed root.

    Inference machines often have the results and plans but not the raw data.
    """
    try:
        return find_dataset_folder(task, raw_root(raw)).name
    except AutosegError:
        for root in (preprocessed_root(preprocessed), results_root()):
            try:
                return find_dataset_folder(task, root).name
            except AutosegError:
                pass
        raise
