"""Spatial domains and the genes that define them; labels go to ``adata.obs[key_added]``.

The methods that read the spots' data (all but ``merge_small_domains`` and ``top_markers``)
warn once per call when some spots hold less than 1% of the median library size; remove
such near-empty spots first.
"""

from .bison import bison
from .cluster import (
    cluster,
    gaussian_mixture,
    hierarchical,
    kmeans,
    leiden,
    merge_small_domains,
)
from .cnn import cnn
from .gnn import gnn
from .markers import markers, top_markers
from .n_domains import choose_n_domains

__all__ = [
    "bison",
    "choose_n_domains",
    "cluster",
    "cnn",
    "gaussian_mixture",
    "gnn",
    "hierarchical",
    "kmeans",
    "leiden",
    "markers",
    "merge_small_domains",
    "top_markers",
]
