"""The torch floor: setup.py, the runtime check and the newest torch API the code calls agree."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from autoseg import AutosegError
from autoseg.devices import TORCH_MIN, check_torch_version

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("autoseg", "planners", "trainers", "inference", "evaluation")

# torch APIs whose first release is later than 2.0, with that release (from the torch release notes).
# A call listed with a keyword or a positional count needs that form of the call.
API_SINCE = {
    "torch.get_autocast_dtype": (2, 4),
    "torch.is_autocast_enabled/args": (2, 4),  # the device_type argument
    "torch.set_autocast_dtype": (2, 4),
    "torch.serialization.add_safe_globals": (2, 4),
    "torch.amp.GradScaler": (2, 3),
    "torch.nn.attention.sdpa_kernel": (2, 3),
    "torch.accelerator.current_accelerator": (2, 6),
    "DataLoader/in_order": (2, 6),
    "torch.compile": (2, 0),
}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _uses(tree: ast.AST):
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        yield name
        if node.args:
            yield f"{name}/args"
        for kw in node.keywords:
            if kw.arg:
                yield f"{name}/{kw.arg}"


def required_torch() -> tuple[tuple[int, int], list[str]]:
    need, where = (2, 0), []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            for use in _uses(ast.parse(path.read_text(encoding="utf-8"))):
                since = API_SINCE.get(use)
                if since and since >= need:
                    where = ([] if since > need else where) + [f"{path.relative_to(REPO)}: {use}"]
                    need = since
    return need, where


def test_setup_and_runtime_floor_match_the_newest_api_called():
    need, where = required_torch()
    assert need == TORCH_MIN, f"the code needs torch>={need} ({where[:3]}) but TORCH_MIN is {TORCH_MIN}"
    floor = re.search(r'"torch>=(\d+)\.(\d+)"', (REPO / "setup.py").read_text())
    assert floor and (int(floor.group(1)), int(floor.group(2))) == need, "setup.py must state the same floor"


def test_old_torch_refused_with_one_clear_line():
    with pytest.raises(AutosegError, match=r"torch 2\.1\.2\+cpu is too old: autoseg needs torch>=2\.4"):
        check_torch_version("2.1.2+cpu")
    for ok in ("2.4.0", "2.13.0+cpu", "3.0.0a0"):
        check_torch_version(ok)
