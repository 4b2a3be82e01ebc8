"""The distribution installs one top-level package, ``autoseg``; the stage folders live under it."""
from __future__ import annotations

import subprocess
import sys

STAGES = ("planners", "trainers", "inference", "evaluation")


def _run_outside_repo(tmp_path, code: str) -> str:
    # Run from an empty folder so the repository root is not on sys.path: only what pip installed counts.
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_no_generic_top_level_names_installed(tmp_path):
    code = ("import importlib.util, importlib.metadata as m\n"
            "names = [n for n in ('planners','trainers','inference','evaluation','benchmarks','tests')\n"
            "         if importlib.util.find_spec(n) is not None]\n"
            "ours = sorted(k for k, v in m.packages_distributions().items() if 'autoseg' in v)\n"
            "print(','.join(names) + '|' + ','.join(ours))")
    shadowed, ours = _run_outside_repo(tmp_path, code).split("|")
    assert shadowed == "", f"top-level names importable outside the repo: {shadowed}"
    assert ours == "autoseg"


def test_stage_packages_import_under_namespace(tmp_path):
    code = ("import autoseg.planners, autoseg.trainers, autoseg.inference, autoseg.evaluation\n"
            "from autoseg.trainers import Trainer, find_trainer\n"
            "print(Trainer.__module__, find_trainer('TrainerShort').__module__)")
    assert _run_outside_repo(tmp_path, code) == "autoseg.trainers.trainer autoseg.trainers.variants"


def test_no_module_imports_a_bare_stage_name():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    bare = re.compile(rf"^\s*(from|import) ({'|'.join(STAGES)})\b", re.M)
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if ".venv" not in p.parts and bare.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_source_checkout_without_install(tmp_path):
    """A copy of the repository that was never pip-installed still imports the stages under autoseg."""
    import pathlib
    import shutil

    root = pathlib.Path(__file__).resolve().parents[1]
    for name in ("autoseg", *STAGES):
        shutil.copytree(root / name, tmp_path / "repo" / name, ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import sys\n"
            "sys.meta_path = [f for f in sys.meta_path if 'editable' not in str(getattr(f, '__module__', '')).lower()]\n"
            "sys.path.insert(0, %r)\n"
            "import autoseg.evaluation, autoseg.planners\n"
            "print(autoseg.evaluation.__file__)" % str(tmp_path / "repo"))
    out = _run_outside_repo(tmp_path, code)
    assert out == str(tmp_path / "repo" / "evaluation" / "__init__.py")
