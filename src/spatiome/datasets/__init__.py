"""Public datasets and simulated tissues.

:func:`simulate_tissue` builds tissues with known ground truth and
:func:`inject_artifacts` damages one with known technical artifacts. :func:`list_datasets`,
:func:`info`, :func:`path` and :func:`load` give the registered public datasets, read
from a local folder (``data_dir()/<name>/``) after checking every file's sha256.
"""

from __future__ import annotations

from .artifacts import inject_artifacts
from .registry import data_dir, info, list_datasets, load, path
from .simulate import simulate_tissue

__all__ = [
    "data_dir",
    "info",
    "inject_artifacts",
    "list_datasets",
    "load",
    "path",
    "simulate_tissue",
]
