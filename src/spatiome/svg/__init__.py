"""Spatially variable genes.

Every method has the same shape: ``spatiome.svg.<method>(adata, *, layer=None, genes=None,
...) -> pandas.DataFrame`` indexed by gene with at least ``statistic``, ``pval`` and ``qval``
(Benjamini-Hochberg), also written to ``adata.var[f"{method}_{column}"]`` with the parameters
in ``adata.uns["spatiome"][method]``.

Every method warns once per call when some spots hold less than 1% of the median library
size: such near-empty spots can decide the result (see the Notes of :func:`spatialde`);
remove them first.

Examples
--------
>>> import anndata, numpy as np
>>> import spatiome as sm
>>> rng = np.random.default_rng(0)
>>> xy = rng.random((200, 2))
>>> adata = anndata.AnnData(np.column_stack([xy[:, 0], rng.random(200)]), obsm={"spatial": xy})
>>> sm.graph.spatial_neighbors(adata)
>>> sm.svg.moran(adata)[["statistic", "qval"]].shape
(2, 2)
"""

from .autocorr import geary, moran
from .sparkx import sparkx
from .spatialde import spatialde, spatialde_model_search
from .trendseek import trendseek

__all__ = ["moran", "geary", "sparkx", "spatialde", "spatialde_model_search", "trendseek"]
