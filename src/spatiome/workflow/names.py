"""Names of the pipeline's methods and their titles in the report, shared by every module
of the workflow layer."""

#: Spatially variable gene tests the pipeline can run, with the input each one reads.
SVG_METHODS = ("moran", "geary", "sparkx", "spatialde", "trendseek")
#: Spatial domain methods and gene module methods the pipeline can run.
DOMAIN_METHODS = ("cluster", "bison", "gnn")
MODULE_METHODS = ("stihc", "aeh")
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
