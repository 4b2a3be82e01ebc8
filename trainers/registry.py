"""Find a trainer class by name in the ``trainers`` package and in user folders.

User folders come from ``--trainer-path`` and ``AUTOSEG_TRAINER_PATH`` (``os.pathsep``-separated).
A ``.py`` file there is imported only if its source (read, not run) defines a class with a base class
or registers a network: scripts and notes are never executed. A file that fails to import is skipped
with a warning naming it, unless it defines the trainer asked for, which is then a clear error. The
folder is put on ``sys.path`` first so files may import their neighbours, and each ``Trainer``
subclass *defined* in a file is registered under its class name. A name defined in two places is
refused, naming both files, rather than silently picking one. The same files extend the network
registry (``autoseg.networks``): a network defined beside a trainer is found at training and at
inference alike.
"""
from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import inspect
import logging
import os
import pkgutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterable

from autoseg import AutosegError

log = logging.getLogger(__name__)
ENV_VAR = "AUTOSEG_TRAINER_PATH"
_loaded_files: dict[tuple[str, float], ModuleType] = {}
_given_folders: list[str] = []  # --trainer-path folders seen in this process: network lookups reuse them


def trainer_folders(extra: Iterable[str | os.PathLike] | str | os.PathLike | None = None) -> list[Path]:
    """``extra`` folders first, then those in AUTOSEG_TRAINER_PATH; duplicates removed."""
    items: list[str] = []
    if extra is not None:
        for e in [extra] if isinstance(extra, (str, os.PathLike)) else extra:
            items += str(e).split(os.pathsep)
        _given_folders.extend(i for i in items if i.strip() and i not in _given_folders)
    items += os.environ.get(ENV_VAR, "").split(os.pathsep)
    out: list[Path] = []
    for item in items:
        if not item.strip():
            continue
        p = Path(item).expanduser()
        if not p.is_dir():
            raise AutosegError(f"{p}: trainer folder does not exist (from --trainer-path or {ENV_VAR})")
        if p.resolve() not in [q.resolve() for q in out]:
            out.append(p)
    return out


def _trainer_classes(module: ModuleType) -> list[type]:
    from autoseg.trainers.trainer import Trainer

    return [obj for _, obj in inspect.getmembers(module, inspect.isclass)
            if issubclass(obj, Trainer) and obj.__module__ == module.__name__]


def _import_file(path: Path) -> ModuleType:
    key = (str(path.resolve()), path.stat().st_mtime)
    if key in _loaded_files:
        return _loaded_files[key]
    digest = hashlib.sha1(key[0].encode()).hexdigest()[:10]
    name = f"autoseg_user_trainers_{digest}.{path.stem}"
    folder = str(path.parent.resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        raise AutosegError(f"{path}: cannot import trainer file ({type(e).__name__}: {e})") from e
    _loaded_files[key] = module
    from autoseg.networks.registry import register_module_networks

    register_module_networks(module)
    return module


def _declared_classes(path: Path) -> tuple[bool, set[str]]:
    """(worth importing, names of the classes it defines) from the source text alone. A file that
    does not parse is worth importing so the caller reports it; its class names come from the text."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True, set()
    try:
        tree = ast.parse(text, str(path))
    except (SyntaxError, ValueError):
        names = {line.split("class", 1)[1].split("(")[0].split(":")[0].strip()
                 for line in text.splitlines() if line.lstrip().startswith("class ")}
        return True, names
    classes = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    registers = any(isinstance(n, ast.Name) and n.id == "register_network"
                    or isinstance(n, ast.Attribute) and n.attr == "register_network" for n in ast.walk(tree))
    return registers or any(c.bases for c in classes), {c.name for c in classes}


def _folder_modules(folder: Path, wanted: str | None) -> list[tuple[Path, ModuleType]]:
    """Import the trainer/network files of ``folder``; skip (with a warning) those that fail, unless
    they define ``wanted``."""
    out = []
    for path in sorted(folder.rglob("*.py")):
        if "__pycache__" in path.parts or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        relevant, names = _declared_classes(path)
        if not relevant:
            log.debug("%s: defines no class with a base class; not imported", path)
            continue
        try:
            out.append((path, _import_file(path)))
        except AutosegError as e:
            if wanted is not None and wanted in names:
                raise
            log.warning("%s skipped: %s", path, str(e).split(": ", 1)[-1])
    return out


def load_user_modules(extra: Iterable[str | os.PathLike] | str | os.PathLike | None = None) -> list[ModuleType]:
    """Import the trainer/network files on the trainer path (``extra``, folders given earlier in this
    process, then AUTOSEG_TRAINER_PATH): their trainers become findable and their networks buildable."""
    given = [] if extra is None else [extra] if isinstance(extra, (str, os.PathLike)) else list(extra)
    folders = trainer_folders([*given, *(f for f in _given_folders if Path(f).expanduser().is_dir())])
    return [module for folder in folders for _, module in _folder_modules(folder, None)]


def _package_modules() -> list[ModuleType]:
    import autoseg.trainers as trainers

    return [importlib.import_module(f"autoseg.trainers.{m.name}") for m in pkgutil.iter_modules(trainers.__path__)]


def known_trainers(extra: Iterable[str | os.PathLike] | str | os.PathLike | None = None,
                   wanted: str | None = None) -> dict[str, list[tuple[type, str]]]:
    """Every trainer name -> [(class, where it is defined)], from the package and the user folders
    (a user file that fails to import is an error only if it defines ``wanted``)."""
    found: dict[str, list[tuple[type, str]]] = {}

    def add(cls: type, where: str) -> None:
        entries = found.setdefault(cls.__name__, [])
        if all(c is not cls for c, _ in entries):
            entries.append((cls, where))

    for module in _package_modules():
        for cls in _trainer_classes(module):
            add(cls, inspect.getsourcefile(cls) or module.__name__)
    for folder in trainer_folders(extra):
        for path, module in _folder_modules(folder, wanted):
            for cls in _trainer_classes(module):
                add(cls, str(path))
    return found


def find_trainer(name: str, extra: Iterable[str | os.PathLike] | str | os.PathLike | None = None) -> type:
    """The one ``Trainer`` subclass called ``name``; a clear error if it is missing or ambiguous."""
    found = known_trainers(extra, name)
    entries = found.get(name)
    if not entries:
        folders = ", ".join(str(f) for f in trainer_folders(extra)) or f"none (set {ENV_VAR} or --trainer-path)"
        raise AutosegError(f"trainer '{name}' not found; known trainers: {', '.join(sorted(found))}; "
                           f"user folders searched: {folders}")
    if len(entries) > 1:
        raise AutosegError(f"trainer '{name}' is defined twice: in {entries[0][1]} and in {entries[1][1]}; "
                           "rename one of them")
    return entries[0][0]
