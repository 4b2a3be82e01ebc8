"""Find a planner class by name, like trainers: in the ``planners`` package and in user folders.

A user writes ``class MyPlanner(ExperimentPlanner)`` in a .py file, puts its folder in
``AUTOSEG_PLANNER_PATH`` (or passes ``--planner-path``) and runs ``--planner MyPlanner``.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import os
import pkgutil
import sys
from pathlib import Path

from autoseg import AutosegError
from autoseg.planners.experiment_planner import ExperimentPlanner

log = logging.getLogger(__name__)
ENV_VAR = "AUTOSEG_PLANNER_PATH"


def _package_modules() -> list:
    import autoseg.planners as planners

    mods = []
    for info in pkgutil.walk_packages(planners.__path__, prefix="autoseg.planners."):
        try:
            mods.append(importlib.import_module(info.name))
        except Exception as e:  # a broken optional module must not hide the working planners
            log.warning("could not import %s: %s", info.name, e)
    return mods


def _folder_modules(folder: Path) -> list:
    mods = []
    if not folder.is_dir():
        raise AutosegError(f"{folder}: planner path is not a folder")
    for py in sorted(folder.rglob("*.py")):
        name = "autoseg_user_planners." + "_".join(py.relative_to(folder).with_suffix("").parts)
        if name in sys.modules:
            mods.append(sys.modules[name])
            continue
        spec = importlib.util.spec_from_file_location(name, py)
        if spec is None or spec.loader is None:
            continue
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception as e:
            del sys.modules[name]
            raise AutosegError(f"{py}: cannot import planner module ({type(e).__name__}: {e})") from None
        mods.append(mod)
    return mods


def search_paths(extra: list[str] | str | None = None) -> list[Path]:
    paths: list[str] = []
    if extra:
        paths += [extra] if isinstance(extra, str) else list(extra)
    if os.environ.get(ENV_VAR):
        paths += [p for p in os.environ[ENV_VAR].split(os.pathsep) if p]
    return [Path(p) for p in paths]


def known_planners(extra: list[str] | str | None = None) -> dict[str, type]:
    found: dict[str, type] = {}
    mods = _package_modules()
    for folder in search_paths(extra):
        mods += _folder_modules(folder)
    for mod in mods:
        for _, obj in inspect.getmembers(mod, inspect.isclass):
            if issubclass(obj, ExperimentPlanner):
                found.setdefault(obj.__name__, obj)
    return found


def find_planner(name: str, extra: list[str] | str | None = None) -> type:
    """The ExperimentPlanner subclass called ``name``; lists the known names when there is none."""
    found = known_planners(extra)
    if name not in found:
        raise AutosegError(f"planner '{name}' not found in the planners package or {ENV_VAR}; "
                           f"known: {', '.join(sorted(found))}")
    return found[name]
