"""Preprocessing: quality control, normalization and dimension reduction.

Each function takes the AnnData first, writes scanpy's standard slots and records its
parameters in ``adata.uns["spatiome"]``.
"""

from .normalize import normalize
from .qc import detect_species, qc_metrics
from .reduce import reduce
from .vst import regress_out, stabilize

__all__ = ["detect_species", "normalize", "qc_metrics", "reduce", "regress_out", "stabilize"]
