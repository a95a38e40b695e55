"""Preprocessing: quality control, normalization and dimension reduction.

Each function takes the AnnData first, writes scanpy's standard slots and records its
parameters in ``adata.uns["spatiome"]``.
"""

from .doublets import doublets
from .impute import impute
from .normalize import normalize
from .qc import detect_species, find_artifacts, local_outliers, qc_metrics
from .quality import QUALITY_REASONS, quality_flags
from .reduce import reduce
from .spanorm import spanorm
from .vst import regress_out, stabilize

__all__ = [
    "QUALITY_REASONS",
    "detect_species",
    "doublets",
    "find_artifacts",
    "impute",
    "local_outliers",
    "normalize",
    "qc_metrics",
    "quality_flags",
    "reduce",
    "regress_out",
    "spanorm",
    "stabilize",
]
