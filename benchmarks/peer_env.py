"""An isolated virtual environment for the benchmark peer, nnU-Net v2.8.1.

The peer lives in its own venv (default ``~/.cache/autoseg-bench/nnunet-venv``, or
``$AUTOSEG_BENCH_PEER_VENV``, or ``--venv``) so that installing it can never change autoseg's own
environment. Order matters: the CPU torch wheel goes in first and a constraints file pins it, because
an unpinned resolve of nnunetv2 replaces torch by the newest CUDA build (several GB).

One repair is applied inside the peer venv only: the torchvision wheel that resolves from the index is
built against CUDA libtorch and cannot load its operators on CPU torch, so ``import torchvision`` (and
``import timm``, which nnU-Net's trainer lookup reaches through its Primus trainers) raises. We
uninstall torchvision and timm from the peer venv and drop a ``sitecustomize`` there that makes the
Primus trainer module importable without timm: while timm is not installed, every ``timm`` module
resolves to a stub whose attributes raise when called. nnU-Net's PlainConvUNet trainers never call
them. ``python -m benchmarks.peer_env --check`` resolves our short trainer exactly as nnUNetv2_train does.

Usage: ``python -m benchmarks.peer_env [--venv DIR] [--python PY] [--force] [--check]``.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

TORCH_VERSION = "2.13.0"
NNUNET_VERSION = "2.8.1"
STAMP_NAME = ".autoseg-bench-peer"
PEER_DIR = Path(__file__).resolve().parent / "peer"
PEER_TRAINER_DIR = PEER_DIR / "trainers"
TRAINER_NAME = "nnUNetTrainerAutosegBench"

# Installed into the peer venv's site-packages as sitecustomize.py (see module docstring).
SITECUSTOMIZE = '''\
"""Written by autoseg's benchmarks.peer_env: lets nnU-Net's trainer lookup import its Primus
module in a CPU-only venv where timm/torchvision cannot load. timm names are stubbed only while
timm is absent; using a Primus trainer fails loudly."""
import importlib.abc
import importlib.machinery
import sys
import types


class _Unavailable:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("Primus/timm is unavailable in the autoseg benchmark peer venv")


def _stub_attribute(attr):
    if attr.startswith("__"):
        raise AttributeError(attr)
    return _Unavailable


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Appended last to sys.meta_path: asked only when no real finder has the module."""

    def find_spec(self, name, path=None, target=None):
        if name == "timm" or name.startswith("timm."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        mod = types.ModuleType(spec.name)
        mod.__path__ = []
        mod.__getattr__ = _stub_attribute
        return mod

    def exec_module(self, module):
        return None


sys.meta_path.append(_StubFinder())
'''


def default_venv() -> Path:
    """Where the peer venv lives unless told otherwise; outside the repository on purpose."""
    env = os.environ.get("AUTOSEG_BENCH_PEER_VENV")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autoseg-bench" / "nnunet-venv"


def peer_python(venv: Path) -> Path:
    return Path(venv) / "bin" / "python"


def peer_bin(venv: Path, tool: str) -> Path:
    return Path(venv) / "bin" / tool


def is_ready(venv: Path) -> bool:
    stamp = Path(venv) / STAMP_NAME
    return stamp.is_file() and stamp.read_text().strip() == f"nnunetv2=={NNUNET_VERSION} torch=={TORCH_VERSION}"


def _run(cmd: list[str | os.PathLike]) -> None:
    log.info("$ %s", " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True)


def _site_packages(venv: Path) -> Path:
    out = subprocess.run([str(peer_python(venv)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def install_sitecustomize(venv: Path) -> None:
    """(Re)write the timm stub into the peer venv when it is missing or outdated."""
    target = _site_packages(venv) / "sitecustomize.py"
    if not target.is_file() or target.read_text() != SITECUSTOMIZE:
        target.write_text(SITECUSTOMIZE)


def create(venv: Path, python: str = sys.executable, force: bool = False) -> Path:
    """Create (or finish) the peer venv; idempotent thanks to a stamp file written last."""
    venv = Path(venv)
    if is_ready(venv) and not force:
        install_sitecustomize(venv)
        log.info("peer venv ready at %s", venv)
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    if not peer_python(venv).exists():
        _run([python, "-m", "venv", venv])
    py = peer_python(venv)
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check"]
    _run(pip + [f"torch=={TORCH_VERSION}"])
    constraints = venv / "constraints.txt"
    constraints.write_text(f"torch=={TORCH_VERSION}\n")
    _run(pip + ["-c", constraints, f"nnunetv2=={NNUNET_VERSION}"])
    _run([py, "-m", "pip", "uninstall", "-y", "--disable-pip-version-check", "torchvision", "timm"])
    install_sitecustomize(venv)
    check(venv)
    (venv / STAMP_NAME).write_text(f"nnunetv2=={NNUNET_VERSION} torch=={TORCH_VERSION}\n")
    log.info("peer venv ready at %s", venv)
    return venv


def check(venv: Path) -> str:
    """Import nnU-Net and resolve our short trainer by name exactly as nnUNetv2_train does; raise if not."""
    code = (
        "import nnunetv2, torch\n"
        "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name\n"
        f"cls = recursive_find_trainer_class_by_name({TRAINER_NAME!r})\n"
        "print('nnunetv2', nnunetv2.__file__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available(),\n"
        "      'trainer', cls.__module__ + '.' + cls.__name__)\n"
    )
    env = dict(os.environ, nnUNet_extTrainer=str(PEER_TRAINER_DIR))
    out = subprocess.run([str(peer_python(venv)), "-c", code], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"peer venv {venv} cannot find {TRAINER_NAME}:\n{out.stderr[-3000:]}")
    log.info("peer check: %s", out.stdout.strip())
    return out.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peer_env", description=__doc__.splitlines()[0])
    ap.add_argument("--venv", type=Path, default=default_venv(), help="peer venv folder (default: %(default)s)")
    ap.add_argument("--python", default=sys.executable, help="interpreter that creates the venv")
    ap.add_argument("--force", action="store_true", help="reinstall even if the stamp says ready")
    ap.add_argument("--check", action="store_true", help="only check an existing venv")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.check:
        print(check(args.venv))
        return 0
    create(args.venv, args.python, args.force)
    print(peer_python(args.venv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
