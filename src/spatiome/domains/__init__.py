"""Spatial domains and the genes that define them; labels go to ``adata.obs[key_added]``."""

from .bison import bison
from .cluster import (
    cluster,
    gaussian_mixture,
    hierarchical,
    kmeans,
    leiden,
    merge_small_domains,
)
from .gnn import gnn
from .markers import markers, top_markers

__all__ = [
    "bison",
    "cluster",
    "gaussian_mixture",
    "gnn",
    "hierarchical",
    "kmeans",
    "leiden",
    "markers",
    "merge_small_domains",
    "top_markers",
]
