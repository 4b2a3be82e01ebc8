"""autoseg: self-configuring ROI -> organ -> tumour cascade segmentation for abdominal CT."""
import importlib.abc
import importlib.util
import logging
import sys
from pathlib import Path

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

# The pipeline's stage folders sit beside this package in the repository and install as autoseg.<folder>
# (setup.py's package_dir). This finder serves a source checkout that was never pip-installed (a copy on a
# GPU machine, PYTHONPATH=repo): it is consulted last, so an installed or editable autoseg always wins.
STAGE_FOLDERS = ("planners", "trainers", "inference", "evaluation")


class _SourceCheckoutStages(importlib.abc.MetaPathFinder):
    root = Path(__file__).resolve().parent.parent

    def find_spec(self, fullname, path=None, target=None):
        parent, _, name = fullname.rpartition(".")
        init = self.root / name / "__init__.py"
        if parent != __name__ or name not in STAGE_FOLDERS or not init.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(init.parent)])


if not any(isinstance(f, _SourceCheckoutStages) for f in sys.meta_path):
    sys.meta_path.append(_SourceCheckoutStages())


class AutosegError(Exception):
    """An error whose message is meant for the user: one line, naming the file and the problem."""
