"""Spatial domains and expression clusters; every method writes labels to ``adata.obs``."""

from .cluster import kmeans, leiden

__all__ = ["kmeans", "leiden"]
