"""autoseg: self-configuring ROI -> organ -> tumour cascade segmentation for abdominal CT."""
import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())


class AutosegError(Exception):
    """An error whose message is meant for the user: one line, naming the file and the problem."""
