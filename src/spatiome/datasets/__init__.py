"""Public datasets and simulated tissues.

:func:`simulate_tissue` builds tissues with known ground truth. :func:`list_datasets`,
:func:`info`, :func:`path` and :func:`load` give the registered public datasets, read
from a local folder (``data_dir()/<name>/``) after checking every file's sha256.
"""

from __future__ import annotations

from .registry import data_dir, info, list_datasets, load, path
from .simulate import simulate_tissue

__all__ = ["data_dir", "info", "list_datasets", "load", "path", "simulate_tissue"]
