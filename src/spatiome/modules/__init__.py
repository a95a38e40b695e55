"""Spatial gene co-expression modules; gene groups go to ``adata.var``."""

from .aeh import aeh
from .stihc import stihc

__all__ = ["aeh", "stihc"]
