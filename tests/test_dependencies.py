"""setup.py declares exactly the third-party distributions the installed code imports, and the
training augmentation rests on the maintained batchgeneratorsv2, not the legacy batchgenerators."""
from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("autoseg", "planners", "trainers", "inference", "evaluation")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_modules() -> dict[str, set[str]]:
    """Top-level module -> files importing it, over every installed package's source."""
    found: dict[str, set[str]] = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for n in names:
                    found.setdefault(n.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return found


def declared() -> set[str]:
    """install_requires plus the optional extras (``dicom``), not the test tools."""
    text = (REPO / "setup.py").read_text(encoding="utf-8")
    block = text[text.index("install_requires=["):text.index("]", text.index("install_requires=["))]
    blocks = [block] + re.findall(r'"(?!test")[a-z]+": \[([^\]]*)\]', text[text.index("extras_require"):])
    return {_norm(re.split(r"[<>=!~ ;\[]", r)[0]) for b in blocks for r in re.findall(r'"([^"]+)"', b)}


def test_declared_dependencies_are_exactly_the_imported_ones():
    dists = packages_distributions()
    own = {"autoseg", *PACKAGES}
    used = {}
    for mod, files in imported_modules().items():
        if mod in own or mod in sys.stdlib_module_names or mod == "__future__":
            continue
        assert mod in dists, f"{mod} (imported by {sorted(files)[0]}) is not installed"
        used[_norm(dists[mod][0])] = sorted(files)[0]
    decl = declared()
    assert not set(used) - decl, f"imported but not in setup.py: {sorted(set(used) - decl)}"
    assert not decl - set(used), f"declared in setup.py but never imported: {sorted(decl - set(used))}"


def test_augmentation_uses_batchgeneratorsv2_not_the_legacy_line():
    mods = imported_modules()
    assert "batchgenerators" not in mods, f"legacy batchgenerators imported by {sorted(mods['batchgenerators'])}"
    assert "autoseg/augmentation.py" in mods.get("batchgeneratorsv2", set())
