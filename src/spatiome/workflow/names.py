"""Names of the pipeline's methods and their titles in the report, shared by every module
of the workflow layer."""

from __future__ import annotations

from typing import Any

#: Spatially variable gene tests the pipeline can run, with the input each one reads.
SVG_METHODS = ("moran", "geary", "sparkx", "spatialde", "trendseek")
#: Spatial domain methods and gene module methods the pipeline can run.
DOMAIN_METHODS = ("cluster", "bison", "gnn")
MODULE_METHODS = ("stihc", "aeh")
#: How ``results`` are written: ``results.h5ad``, a SpatialData ``results.zarr``, or both.
OUTPUT_FORMATS = ("h5ad", "spatialdata", "both")
#: Organisms of the ligand-receptor resource ("auto": from the case of the gene symbols).
ORGANISM_CHOICES = ("auto", "human", "mouse")
#: Cell-type deconvolution methods (a reference is needed).
DECONV_METHODS = ("rctd", "nnls", "nb_vi")
DECONV_TITLES = {
    "rctd": "RCTD-style Poisson-log-normal",
    "nnls": "non-negative least squares",
    "nb_vi": "cell2location-style variational NB",
}
DOMAIN_TITLES = {
    "cluster": "neighbourhood-augmented Gaussian mixture",
    "bison": "BISON",
    "gnn": "graph attention autoencoder",
}
MODULE_TITLES = {"stihc": "stIHC", "aeh": "automatic expression histology"}
SVG_TITLES = {
    "moran": "Moran's I",
    "geary": "Geary's C",
    "sparkx": "SPARK-X",
    "spatialde": "SpatialDE",
    "trendseek": "trendsceek",
}

#: The domains' ``obs`` column when a run has one domain method: the name the API's
#: ``key_added`` defaults to.
DOMAIN_KEY = "spatial_domain"
#: The integrated domains of RNA and a second modality (``integrate.multimodal``).
MULTIMODAL_DOMAIN_KEY = "domain_multimodal"


def domain_key(config: Any, method: str) -> str:
    """The ``obs`` column holding ``method``'s domains in a pipeline run.

    ``"spatial_domain"`` (as ``spatiome.domains.cluster(...)`` names it by default) when
    ``config.domain_methods`` has one method, ``f"domain_{method}"`` when it has several,
    and ``"domain_multimodal"`` for the integrated RNA + second-modality domains.

    Parameters
    ----------
    config
        The run's :class:`spatiome.workflow.PipelineConfig` (only ``domain_methods`` is read).
    method
        A domain method of the run, or ``"multimodal"``.

    Returns
    -------
    str
        The column name.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> domain_key(SimpleNamespace(domain_methods=("cluster",)), "cluster")
    'spatial_domain'
    >>> domain_key(SimpleNamespace(domain_methods=("cluster", "bison")), "bison")
    'domain_bison'
    >>> domain_key(SimpleNamespace(domain_methods=("cluster",)), "multimodal")
    'domain_multimodal'
    """
    if method == "multimodal":
        return MULTIMODAL_DOMAIN_KEY
    return DOMAIN_KEY if len(config.domain_methods) == 1 else f"domain_{method}"
