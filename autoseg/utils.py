"""Small shared helpers: atomic writes, JSON, seeding.

Every file a stage produces goes through these writers so that an interrupted run never leaves a
file that a rerun would mistake for a complete one.
"""
from __future__ import annotations

import errno
import json
import os
import re
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np

T = TypeVar("T")


# mkstemp makes 0600 files; finished files get the usual mode (masks written by a root container must
# stay readable on the host). Read once here: os.umask cannot be queried without setting it.


# Temp files are named .NAME.autoseg-tmp.HOST.PID.RANDOM so a later run can tell its own leftovers
# (a killed writer's) from anything else, and never removes a file a live process is still writing.
_TMP_MARK = ".autoseg-tmp."
_TMP_RE = re.compile(r"^\..+\.autoseg-tmp\.(?P<host>[A-Za-z0-9-]*)\.(?P<pid>\d+)\.")


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40]


def current_umask() -> int:
    """The process umask, read without changing it (os.umask would race with writer threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def os_error_message(e: OSError, path: str | os.PathLike | None = None) -> str:
    """One line naming the path and the problem, in words a user acts on."""
    where = path if path is not None else (e.filename if e.filename is not None else "")
    problem = {errno.EACCES: "permission denied (not readable or writable by this user)",
               errno.EPERM: "operation not permitted", errno.ENOENT: "does not exist",
               errno.ENOTDIR: "a path component is a file, not a folder",
               errno.EEXIST: "already exists and is not a folder", errno.EISDIR: "is a folder, not a file",
               errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on device",
               }.get(e.errno, e.strerror or type(e).__name__)
    return f"{where}: {problem}"


def ensure_dir(path: str | os.PathLike, writable: bool = False) -> Path:
    """Create ``path`` (and parents) or fail with one line saying why (a file in the way, permissions).
    ``writable``: also prove a file can be created there, before any work is done for it."""
    from autoseg import AutosegError

    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise AutosegError(f"{path}: is a file, expected a folder")
        path.mkdir(parents=True, exist_ok=True)
        if writable:
            fd, probe = tempfile.mkstemp(prefix=f".probe{_TMP_MARK}{_host_tag()}.{os.getpid()}.", dir=path)
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise AutosegError(os_error_message(e, path if writable else None)) from None
    return path


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the destination folder; rename it onto ``path`` on success.

    The file gets the mode a plain ``open`` would give (0666 less the umask), not mkstemp's 0600, so
    masks, checkpoints, plans and metrics are as readable to colleagues as the user's other files.
    """
    from autoseg import AutosegError

    path = Path(path)
    ensure_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{_TMP_MARK}{_host_tag()}.{os.getpid()}.",
                                   suffix=suffix or ".tmp", dir=path.parent)
    except OSError as e:
        raise AutosegError(os_error_message(e, path.parent)) from None
    os.fchmod(fd, 0o666 & ~current_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def clean_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove temp files that an earlier, killed autoseg process left in ``folder``: ours by name, from
    this machine, and whose process is gone. Returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    host = _host_tag()
    for p in folder.iterdir():
        m = _TMP_RE.match(p.name)
        if not m or m["host"] != host or not p.is_file() or _pid_alive(int(m["pid"])):
            continue
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            continue
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_json(obj: Any, path: str | os.PathLike, indent: int = 2) -> None:
    """Write JSON atomically (temp file + rename)."""
    with atomic_path(path, ".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, default=_json_default) + "\n", encoding="utf-8")


def load_json(path: str | os.PathLike) -> Any:
    """Read JSON, turning a syntax error into a one-line message naming the file."""
    from autoseg import AutosegError

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AutosegError(f"{path}: file not found") from None
    except OSError as e:
        raise AutosegError(os_error_message(e, path)) from None
    except json.JSONDecodeError as e:
        raise AutosegError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None


def save_npz(path: str | os.PathLike, compress: bool = False, **arrays: np.ndarray) -> None:
    """Write an .npz atomically; a reader never sees a half-written archive under the final name."""
    with atomic_path(path, ".npz") as tmp:
        with open(tmp, "wb") as f:
            (np.savez_compressed if compress else np.savez)(f, **arrays)


def shard(items: Sequence[T], num_parts: int, part_id: int, key: Callable[[T], Any] = lambda x: x) -> list[T]:
    """Part ``part_id`` of ``num_parts`` (scheduler arrays, torchrun ranks): every ``num_parts``-th item
    of the items sorted by ``key``, so every machine and every rerun cuts the same parts."""
    from autoseg import AutosegError

    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise AutosegError(f"--part-id must be in [0, --num-parts) with --num-parts >= 1, got part {part_id} of {num_parts}")
    return sorted(items, key=key)[part_id::num_parts]


def seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]) -> tuple[list[str], Any, Any]:
    """``(__all__, __getattr__, __dir__)`` for a package whose names load on first use.

    Packages re-export their public API this way so that importing one light submodule (in a worker
    process, or on a GPU machine without the imaging stack) does not import everything else.
    """
    import importlib
    import sys

    where = {name: mod for mod, names in exports.items() for name in names}
    names = sorted(where)

    def __getattr__(name: str) -> Any:
        if name in where:
            value = getattr(importlib.import_module(where[name]), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module '{package}' has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return names, __getattr__, __dir__


def parallel_map(fn: Any, jobs: list, num_workers: int, desc: str, progress: bool = True, ordered: bool = True,
                 initializer: Any = None, initargs: tuple = ()) -> Iterator[Any]:
    """Yield ``fn(job)`` for every job, in ``num_workers`` spawned processes, with a progress bar.

    Spawned (not forked) workers do not inherit the parent's torch/OpenMP thread pools; the pool is
    torn down whatever happens, so an exception or Ctrl-C leaves no worker behind.
    """
    import multiprocessing as mp

    from tqdm import tqdm

    pool = None
    if num_workers > 1 and len(jobs) > 1:
        pool = mp.get_context("spawn").Pool(min(num_workers, len(jobs)), initializer=initializer, initargs=initargs)
        results = (pool.imap if ordered else pool.imap_unordered)(fn, jobs, chunksize=1)
    else:
        results = map(fn, jobs)
    with tqdm(total=len(jobs), desc=desc, unit="case", disable=not progress) as bar:
        try:
            for r in results:
                bar.update(1)
                yield r
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, read in 1 MiB blocks (checkpoints can be large)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
