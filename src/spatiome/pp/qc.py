"""Per-spot quality control: metrics (computed by scanpy) and spatially aware flags.

:func:`qc_metrics` computes the usual per-spot and per-gene metrics. :func:`local_outliers`
and :func:`find_artifacts` follow SpotSweeper (Totty et al. 2025): a spot is judged against
its spatial neighbours rather than against the whole tissue, so that a low library size in
a naturally sparse layer is not mistaken for a bad spot, while a spot far below its own
neighbourhood, or a patch of locally uniform mitochondrial fraction (a dry spot or a
hangnail), is flagged. Flags are written to ``adata.obs``; nothing is removed.
"""

from __future__ import annotations

import numbers
import re
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData

from .._core.neighbourhood import (
    neighbourhood_mean_variance,
    neighbourhood_median_mad,
    spatial_knn,
)
from .._core.parallel import resolve_n_jobs
from .._core.random import check_random_state
from .._core.validate import (
    SpatiomeInputError,
    check_adata,
    check_counts,
    get_matrix,
    get_spatial,
    resolve_counts_layer,
)

# Gene-name conventions: HGNC symbols are upper case, MGI symbols are capitalized.
SPECIES_PREFIXES: dict[str, dict[str, object]] = {
    "human": {"mito": "MT-", "ribo": ("RPS", "RPL"), "hb": r"^HB[AB]"},
    "mouse": {"mito": "mt-", "ribo": ("Rps", "Rpl"), "hb": r"^Hb[ab]"},
}

#: Mitochondrially encoded genes by Ensembl gene id, for data whose only gene names are
#: ids: the 13 protein-coding genes (ND1-6, ND4L, CO1-3, ATP6, ATP8, CYTB; all that 10x
#: references keep) and the two rRNAs. The 22 short tRNA genes are not listed.
MITO_ENSEMBL_IDS: dict[str, frozenset[str]] = {
    "human": frozenset(
        f"ENSG00000{suffix}"
        for suffix in "198888 198763 198804 198712 228253 198899 198938 198840 212907 "
        "198886 198786 198695 198727 211459 210082".split()
    ),
    "mouse": frozenset(
        f"ENSMUSG00000{suffix}"
        for suffix in "064341 064345 064351 064354 064356 064357 064358 064360 065947 "
        "064363 064367 064368 064370 064337 064339".split()
    ),
}

#: Columns of ``adata.var`` that hold gene symbols when the var names are Ensembl ids
#: (CELLxGENE: ``feature_name``; scanpy's 10x readers with ``var_names="gene_ids"``:
#: ``gene_symbols``), in the order they are looked for.
SYMBOL_COLUMNS = (
    "feature_name", "gene_symbols", "gene_symbol", "gene_name", "gene_names", "symbol",
    "Symbol", "SYMBOL",
)  # fmt: skip

_ENSEMBL_GENE_ID = r"^ENS[A-Z]*G\d{6,}"


def qc_metrics(
    adata: AnnData,
    *,
    layer: str | None = None,
    mito_prefix: str | None = None,
    ribo_prefix: str | Sequence[str] | None = None,
    hb_pattern: str | None = None,
    species: str = "auto",
    copy: bool = False,
) -> AnnData | None:
    """Compute per-spot and per-gene quality-control metrics on raw counts.

    Calls :func:`scanpy.pp.calculate_qc_metrics` with the quality-control gene sets
    ``mt`` (mitochondrial), ``ribo`` (ribosomal) and ``hb`` (hemoglobin), so the column
    names are scanpy's: per spot ``total_counts``, ``n_genes_by_counts``,
    ``total_counts_mt``, ``pct_counts_mt``, ``pct_counts_ribo``, ``pct_counts_hb``; per gene
    ``n_cells_by_counts``, ``mean_counts``, ``pct_dropout_by_counts``, ``total_counts``.
    The boolean gene flags are written to ``adata.var[["mt", "ribo", "hb"]]``.

    Parameters
    ----------
    adata
        Spots x genes data.
    layer
        Layer holding raw integer counts. ``None`` (default): ``adata.layers["counts"]``
        when present, else ``adata.X`` when it holds counts.
    mito_prefix
        Prefix of mitochondrial gene names (case-sensitive). Default from ``species``:
        ``"MT-"`` (human) or ``"mt-"`` (mouse); where the genes are named by Ensembl ids
        only, the mitochondrial genes are also recognized by id (:data:`MITO_ENSEMBL_IDS`).
    ribo_prefix
        Prefix or prefixes of ribosomal protein genes. Default ``("RPS", "RPL")`` (human)
        or ``("Rps", "Rpl")`` (mouse).
    hb_pattern
        Regular expression matched at the start of hemoglobin gene names. Default
        ``"^HB[AB]"`` (human) or ``"^Hb[ab]"`` (mouse).
    species
        ``"human"``, ``"mouse"`` or ``"auto"``: decided from the case of the gene names
        (mostly upper case -> human, mostly capitalized -> mouse), or from the Ensembl ids
        (``ENSG`` -> human, ``ENSMUSG`` -> mouse) when there are no symbols.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``; otherwise None and ``adata`` is updated in place.
        Parameters go to ``adata.uns["spatiome"]["qc_metrics"]``, with ``"gene_names"``:
        where the names matched against the prefixes came from. When the var names are
        Ensembl ids and a column of ``adata.var`` holds symbols (:data:`SYMBOL_COLUMNS`,
        e.g. CELLxGENE's ``feature_name``), the symbols are used.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp, anndata as ad
    >>> from spatiome.pp import qc_metrics
    >>> counts = sp.csr_matrix(np.array([[5, 0, 5], [1, 1, 8]]))
    >>> adata = ad.AnnData(counts.copy(), var={"gene": ["MT-CO1", "ACTB", "GAPDH"]})
    >>> adata.var_names = adata.var["gene"]
    >>> adata.layers["counts"] = counts
    >>> qc_metrics(adata)
    >>> adata.obs["pct_counts_mt"].tolist()
    [50.0, 10.0]
    >>> adata.uns["spatiome"]["qc_metrics"]["species"]
    'human'
    """
    check_adata(adata)
    layer = resolve_counts_layer(adata, layer)
    counts = get_matrix(adata, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    check_counts(counts, where=where)
    names, source, by_id = _gene_names(adata)
    resolved = _resolve_species(names, species)
    defaults = SPECIES_PREFIXES[resolved]
    mito = mito_prefix if mito_prefix is not None else str(defaults["mito"])
    ribo = _as_prefixes(ribo_prefix if ribo_prefix is not None else defaults["ribo"])
    hb = hb_pattern if hb_pattern is not None else str(defaults["hb"])
    try:
        hb_regex = re.compile(hb)
    except re.error as err:
        raise SpatiomeInputError(
            f"hb_pattern {hb!r} is not a valid regular expression: {err}"
        ) from None

    adata = adata.copy() if copy else adata
    mitochondrial = np.asarray(names.str.startswith(mito), dtype=bool)
    if mito_prefix is None and by_id:
        unversioned = names.str.replace(r"\.\d+$", "", regex=True)
        mitochondrial |= np.asarray(unversioned.isin(MITO_ENSEMBL_IDS[resolved]), dtype=bool)
        source += " (Ensembl ids: mitochondrial genes by id, no ribosomal or hemoglobin genes)"
    adata.var["mt"] = mitochondrial
    adata.var["ribo"] = np.asarray(names.str.startswith(ribo), dtype=bool)
    adata.var["hb"] = np.array([hb_regex.match(name) is not None for name in names], dtype=bool)
    sc.pp.calculate_qc_metrics(
        adata,
        qc_vars=("mt", "ribo", "hb"),
        layer=layer,
        percent_top=None,
        log1p=False,
        inplace=True,
    )
    adata.uns.setdefault("spatiome", {})
    adata.uns["spatiome"]["qc_metrics"] = {
        "layer": "X" if layer is None else layer,
        "species": resolved,
        "gene_names": source,
        "mito_prefix": mito,
        "ribo_prefix": list(ribo),
        "hb_pattern": hb,
        "n_mito_genes": int(adata.var["mt"].sum()),
        "n_ribo_genes": int(adata.var["ribo"].sum()),
        "n_hb_genes": int(adata.var["hb"].sum()),
    }
    return adata if copy else None


def detect_species(gene_names: Sequence[str]) -> str:
    """Guess ``"human"`` or ``"mouse"`` from gene symbols.

    Mitochondrial genes decide when only one convention is present (``MT-`` human,
    ``mt-`` mouse). Otherwise the case of the symbols does: human (HGNC) symbols are upper
    case (``ACTB``), mouse (MGI) symbols capitalized (``Actb``). Names without letters or
    looking like Ensembl ids are ignored there; when nothing else is left, the ids decide
    (``ENSMUSG`` mouse, ``ENSG`` human). Ties and undecidable inputs fall back to
    ``"human"``.

    Examples
    --------
    >>> detect_species(["Actb", "Gapdh", "mt-Co1"])
    'mouse'
    >>> detect_species(["ACTB", "GAPDH", "MT-CO1"])
    'human'
    >>> detect_species(["Gene0001", "Gene0002", "MT-ND1"])
    'human'
    >>> detect_species(["ENSMUSG00000064341", "ENSMUSG00000000001"])
    'mouse'
    """
    names = pd.Index(np.asarray(gene_names).astype(str))
    ids = names.str.match(r"^ENS[A-Z]*G\d")
    if ids.all():
        n_mouse = int(names.str.startswith("ENSMUSG").sum())
        return "mouse" if n_mouse > int(names.str.startswith("ENSG").sum()) else "human"
    names = names[~ids]
    n_lower_mt = int(names.str.startswith("mt-").sum())
    n_upper_mt = int(names.str.startswith("MT-").sum())
    if (n_lower_mt > 0) != (n_upper_mt > 0):
        return "mouse" if n_lower_mt else "human"
    letters = names.str.replace(r"[^A-Za-z]", "", regex=True)
    letters = letters[letters.str.len() > 1]
    n_upper = int(letters.str.isupper().sum())
    n_capitalized = int((letters.str[0].str.isupper() & letters.str[1:].str.islower()).sum())
    if n_capitalized + n_lower_mt > n_upper + n_upper_mt:
        return "mouse"
    return "human"


def _mostly_ensembl(names: pd.Index) -> bool:
    return bool(len(names)) and float(names.str.match(_ENSEMBL_GENE_ID).mean()) > 0.5


def _gene_names(adata: AnnData) -> tuple[pd.Index, str, bool]:
    """The gene names to match against the prefixes, where they come from (the var names,
    or a column of gene symbols when the var names are Ensembl ids), and whether they are
    Ensembl ids (no symbols found)."""
    names = pd.Index(adata.var_names.astype(str))
    if not _mostly_ensembl(names):
        return names, "var_names", False
    for column in SYMBOL_COLUMNS:
        if column in adata.var.columns:
            symbols = pd.Index(adata.var[column].astype(str))
            if not _mostly_ensembl(symbols):
                return symbols, f"var[{column!r}]", False
    return names, "var_names", True


def _resolve_species(names: pd.Index, species: str) -> str:
    if species == "auto":
        return detect_species(names)
    if species not in SPECIES_PREFIXES:
        raise SpatiomeInputError(
            f"species must be 'auto', 'human' or 'mouse', got {species!r}; for other species "
            "pass mito_prefix=, ribo_prefix= and hb_pattern= explicitly"
        )
    return species


def _as_prefixes(prefix: object) -> tuple[str, ...]:
    if isinstance(prefix, str):
        return (prefix,)
    prefixes = tuple(str(p) for p in prefix)  # type: ignore[attr-defined]
    if not prefixes:
        raise SpatiomeInputError("ribo_prefix must name at least one prefix, e.g. ('RPS', 'RPL')")
    return prefixes


#: Phi^-1(0.75), written as in SpotSweeper and spatialEco: turns a raw MAD into a z scale.
MAD_Z_FACTOR = 0.6745
#: Consistency constant of R's ``mad()``, part of the legacy z-score's denominator.
MAD_SCALE = 1.4826
#: Tuning constant of the Huber M-estimator (95% efficiency under normal errors).
HUBER_K = 1.345

LOCAL_OUTLIER_METRICS = ("total_counts", "n_genes_by_counts", "pct_counts_mt")
ZSCORES = ("v2", "bioc_legacy")
DIRECTIONS = ("lower", "higher", "both")
GRIDS = ("hex", "square", "auto")

# obs columns that qc_metrics writes, so that a missing one can be computed on the spot.
_QC_OBS_COLUMNS = frozenset(
    {"total_counts", "n_genes_by_counts"}
    | {f"{kind}_counts_{name}" for kind in ("total", "pct") for name in ("mt", "ribo", "hb")}
)


def local_outliers(
    adata: AnnData,
    *,
    metrics: str | Sequence[str] = LOCAL_OUTLIER_METRICS,
    directions: str | Sequence[str] | None = None,
    log: bool | Sequence[bool] | None = None,
    n_neighbors: int = 36,
    cutoff: float = 3.0,
    zscore: str = "v2",
    sample_key: str | None = None,
    key_added: str = "local_outlier",
    n_jobs: int = 1,
    copy: bool = False,
) -> AnnData | None:
    """Flag spots whose QC metrics are extreme compared with their spatial neighbours.

    SpotSweeper's local outliers. For every metric (optionally ``log1p``-transformed) and
    every spot ``i`` with value ``v_i``, the ``n_neighbors`` nearest spots in space (exact
    Euclidean kNN, per sample) give a robust z-score

    - ``zscore="v2"`` (recommended, current SpotSweeper): the neighbourhood excludes the
      spot itself and ``z_i = 0.6745 (v_i - median) / MAD``, with MAD the raw median
      absolute deviation of the neighbours;
    - ``zscore="bioc_legacy"`` (Bioconductor releases up to about 1.2): the neighbourhood
      includes the spot and ``z_i = 0.6745 (v_i - median) / (1.4826 MAD)``; about 1.48
      times smaller, so the same cutoff flags fewer spots.

    ``z_i`` is 0 where the MAD is 0 or the value is missing. A spot is an outlier for a
    metric when ``z < -cutoff`` (direction ``"lower"``), ``z > cutoff`` (``"higher"``) or
    ``|z| > cutoff`` (``"both"``); ``obs[key_added]`` is the union over the metrics.

    Parameters
    ----------
    adata
        Spots x genes data with coordinates in ``adata.obsm["spatial"]``.
    metrics
        Numeric columns of ``adata.obs``. Missing columns that :func:`qc_metrics` computes
        (``total_counts``, ``n_genes_by_counts``, ``pct_counts_mt``, ...) are computed first
        from the raw counts (``adata.layers["counts"]``, else ``adata.X`` when it holds
        counts), which also adds its other columns.
    directions
        Per metric (or one for all): ``"lower"``, ``"higher"`` or ``"both"``. ``None``:
        ``"higher"`` for percentages (``pct_*`` columns), ``"lower"`` otherwise; for the
        default metrics ``("lower", "lower", "higher")``: low library size, few detected
        genes, high mitochondrial fraction.
    log
        Per metric (or one for all): apply ``log1p`` before the z-score. ``None``: for
        every metric but percentages (``pct_*``), so ``(True, True, False)`` by default.
    n_neighbors
        Neighbours per spot; 36 is three hexagonal rings on Visium. Every sample needs
        more spots than this.
    cutoff
        Absolute z beyond which a spot is flagged.
    zscore
        ``"v2"`` or ``"bioc_legacy"`` (see above).
    sample_key
        Column of ``adata.obs`` naming the sample (tissue section) of each spot; the
        neighbours are found within each sample. ``None``: one sample.
    key_added
        obs column of the combined flag.
    n_jobs
        Threads for the neighbour search and the neighbourhood statistics (-1: all cores).
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``; otherwise None. Writes ``adata.obs[f"{metric}_z"]``
        (float), ``adata.obs[f"{metric}_outlier"]`` (bool) for each metric and
        ``adata.obs[key_added]`` (bool); parameters and counts of flagged spots go to
        ``adata.uns["spatiome"]["local_outliers"]``.

    References
    ----------
    Totty M. et al. (2025) SpotSweeper: spatially aware quality control for spatial
    transcriptomics. Nature Methods; preprint bioRxiv doi:10.1101/2024.06.06.597765.

    Examples
    --------
    A spot on a line with 100 counts among neighbours near 10 stands out:

    >>> import anndata as ad
    >>> line = ad.AnnData(np.zeros((6, 1)))
    >>> line.obsm["spatial"] = np.column_stack([np.arange(6.0), np.zeros(6)])
    >>> line.obs["umi"] = [100.0, 10.0, 11.0, 9.0, 10.0, 12.0]
    >>> local_outliers(line, metrics="umi", directions="higher", log=False, n_neighbors=4)
    >>> line.obs["umi_z"].round(2).tolist()
    [121.41, -0.34, 1.35, -2.02, -0.34, 2.7]
    >>> line.obs["umi_outlier"].tolist()
    [True, False, False, False, False, False]

    On a simulated Visium tissue with a low-quality rim of spots:

    >>> import spatiome as sm
    >>> tissue = sm.datasets.simulate_tissue(n_spots=1000, n_genes=60, random_state=0)
    >>> damaged = sm.datasets.inject_artifacts(
    ...     tissue, dry_patch_fraction=0, edge_fraction=0.01, random_state=0)
    >>> sm.pp.local_outliers(damaged)
    >>> pd.crosstab(damaged.obs["injected"], damaged.obs["local_outlier"]).loc[
    ...     ["none", "low_quality_edge"]].to_numpy().tolist()
    [[967, 23], [5, 5]]
    """
    check_adata(adata)
    names = _as_names(metrics, "metrics")
    if directions is None:
        directions = ["higher" if _is_percentage(n) else "lower" for n in names]
    if log is None:
        log = [not _is_percentage(n) for n in names]
    direction_of = _per_metric(directions, names, "directions", str)
    log_of = _per_metric(log, names, "log", bool)
    bad = [d for d in direction_of if d not in DIRECTIONS]
    if bad:
        raise SpatiomeInputError(f"directions must be among {DIRECTIONS}, got {bad}")
    _check_count("n_neighbors", n_neighbors)
    if not isinstance(cutoff, numbers.Real) or isinstance(cutoff, bool) or not cutoff > 0:
        raise SpatiomeInputError(f"cutoff must be a positive number, got {cutoff!r}")
    if not np.isfinite(float(cutoff)):
        raise SpatiomeInputError(f"cutoff must be finite, got {cutoff!r}")
    if zscore not in ZSCORES:
        raise SpatiomeInputError(
            f"zscore must be 'v2' (recommended) or 'bioc_legacy' (Bioconductor <= 1.2), "
            f"got {zscore!r}"
        )
    _check_key_added(key_added)
    resolve_n_jobs(n_jobs)
    coords = get_spatial(adata)
    groups = _sample_groups(adata, sample_key)
    _check_sample_sizes(groups, adata.n_obs, n_neighbors, f"n_neighbors={n_neighbors}")

    adata = adata.copy() if copy else adata
    _ensure_obs_columns(adata, names, caller="local_outliers", argument="metrics")
    values = _metric_matrix(adata, names, log_of)
    legacy = zscore == "bioc_legacy"
    z = np.zeros_like(values)
    for _, rows in groups:
        neighbours, _ = spatial_knn(_take(coords, rows), n_neighbors, n_jobs=n_jobs)
        local = _take(values, rows)
        median, mad = neighbourhood_median_mad(
            local, neighbours, include_self=legacy, n_jobs=n_jobs
        )
        z[rows] = _robust_z(local, median, mad, legacy=legacy)

    flagged = np.zeros(adata.n_obs, dtype=bool)
    n_outliers: dict[str, int] = {}
    for j, (name, direction) in enumerate(zip(names, direction_of, strict=True)):
        outlier = _beyond(z[:, j], direction, float(cutoff))
        adata.obs[f"{name}_z"] = z[:, j]
        adata.obs[f"{name}_outlier"] = outlier
        flagged |= outlier
        n_outliers[name] = int(outlier.sum())
    adata.obs[key_added] = flagged
    adata.uns.setdefault("spatiome", {})
    adata.uns["spatiome"]["local_outliers"] = {
        "metrics": list(names),
        "directions": list(direction_of),
        "log": [bool(v) for v in log_of],
        "n_neighbors": int(n_neighbors),
        "cutoff": float(cutoff),
        "zscore": zscore,
        "sample_key": sample_key,
        "key_added": key_added,
        "n_outliers": n_outliers,
        "n_flagged": int(flagged.sum()),
    }
    return adata if copy else None


def find_artifacts(
    adata: AnnData,
    *,
    mito_key: str = "pct_counts_mt",
    mito_counts_key: str = "total_counts_mt",
    n_order: int = 5,
    grid: str = "hex",
    log: bool = True,
    n_init: int = 25,
    min_separation: float | None = 5.0,
    sample_key: str | None = None,
    random_state: int | np.random.Generator | None = 0,
    key_added: str = "artifact",
    n_jobs: int = 1,
    copy: bool = False,
) -> AnnData | None:
    """Flag regional artifacts (dry spots, hangnails): patches of uniform mitochondrial fraction.

    SpotSweeper's ``findArtifacts``, per sample:

    1. For orders ``i = 1..n_order`` take ``k_i = 3i(i+1)`` neighbours on a hexagonal
       array (6, 18, 36, 60, 90: ``i`` full rings) or ``4i(i+1)`` on a square one, and
       compute the local variance of the mitochondrial percentage (``log1p`` of it when
       ``log``) over each spot and its ``k_i`` nearest neighbours.
    2. Remove the mean-variance trend: a robust line (Huber M-estimator, ``k = 1.345``,
       MAD scale, iteratively reweighted least squares as R's ``MASS::rlm``) of
       ``log2(variance)`` on the local mean; the residuals are the local-variance scores.
       Zero variances are raised to the smallest positive one before the logarithm.
    3. Centre and scale the ``n_order`` scores, the raw percentage and the mitochondrial
       counts, take all principal components and split the spots in two with k-means
       (``n_init`` starts).
    4. The artifact cluster is the one with the lower mean score at order 2 (``k = 18`` hex,
       ``24`` square; order 1 when ``n_order = 1``): artifacts are locally homogeneous.

    What gets flagged is the artifact's interior: spots on its rim have neighbourhoods
    that straddle the border, hence a high local variance, and fall in the other cluster
    (in the example below, the 19 interior spots of a 40-spot patch). k-means always
    returns two clusters, so the original flags one of them even in a sample without an
    artifact (here 17-51% of the spots of clean simulated tissues). By default the flag is
    kept only when the two clusters really differ: their standardized distance
    (``separation``, recorded per sample: the distance between the cluster means in the
    principal components over the pooled standard deviation along that direction) must
    reach ``min_separation`` (5; clean simulated tissues of 600-3,000 spots gave 2.5-3.3,
    the same tissues with an injected dry patch 7.3-12.6). Pass
    ``min_separation=None`` for the original's behaviour. A warning is issued when more
    than half of a sample is flagged; look at the flags on the tissue with
    :func:`spatiome.pl.qc_spatial`.

    Parameters
    ----------
    adata
        Spots x genes data with coordinates in ``adata.obsm["spatial"]``.
    mito_key, mito_counts_key
        obs columns with the mitochondrial percentage and counts; computed with
        :func:`qc_metrics` from the raw counts (``adata.layers["counts"]``, else ``adata.X``
        when it holds counts) when missing.
    n_order
        Number of neighbourhood sizes (rings).
    grid
        ``"hex"`` (Visium), ``"square"`` or ``"auto"`` (square when the typical spot has
        four equidistant nearest neighbours, hexagonal otherwise).
    log
        Compute local variances of ``log1p(percentage)``.
    n_init
        k-means restarts.
    min_separation
        Smallest standardized distance between the two clusters for the artifact cluster
        to be flagged; None flags it always (the original).
    sample_key
        obs column naming the sample of each spot; each sample is processed on its own.
    random_state
        Seed or generator for k-means.
    key_added
        obs column of the flag; also the prefix of the other outputs.
    n_jobs
        Threads for the neighbour search and the neighbourhood statistics.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``; otherwise None. Writes ``adata.obs[key_added]``
        (bool), the scores ``adata.obs[f"{key_added}_var_k{k}"]`` for each ``k`` and the
        principal components ``adata.obsm[f"X_{key_added}_pca"]``; parameters, and per
        sample (``"all"`` without ``sample_key``) the grid used and the number of flagged
        spots, go to ``adata.uns["spatiome"]["find_artifacts"]``.

    Raises
    ------
    SpatiomeInputError
        If a sample has no mitochondrial signal (no ``MT-``/``mt-`` genes, as in probe
        panels or gene subsets) or fewer spots than the largest neighbourhood.

    References
    ----------
    Totty M. et al. (2025) SpotSweeper: spatially aware quality control for spatial
    transcriptomics. Nature Methods; preprint bioRxiv doi:10.1101/2024.06.06.597765.

    Examples
    --------
    >>> import spatiome as sm
    >>> tissue = sm.datasets.simulate_tissue(n_spots=1000, n_genes=60, random_state=0)
    >>> damaged = sm.datasets.inject_artifacts(tissue, edge_fraction=0, random_state=0)
    >>> sm.pp.find_artifacts(damaged)
    >>> pd.crosstab(damaged.obs["injected"], damaged.obs["artifact"]).loc[
    ...     ["none", "dry_patch"]].to_numpy().tolist()
    [[960, 0], [21, 19]]
    >>> damaged.obsm["X_artifact_pca"].shape, "artifact_var_k18" in damaged.obs
    ((1000, 7), True)
    """
    check_adata(adata)
    _check_count("n_order", n_order)
    _check_count("n_init", n_init)
    if min_separation is not None and not (
        isinstance(min_separation, numbers.Real) and min_separation >= 0
    ):
        raise SpatiomeInputError(
            f"min_separation must be a non-negative number or None, got {min_separation!r}"
        )
    if grid not in GRIDS:
        raise SpatiomeInputError(f"grid must be one of {GRIDS}, got {grid!r}")
    if not isinstance(log, bool | np.bool_):
        raise SpatiomeInputError(f"log must be True or False, got {log!r}")
    _check_key_added(key_added)
    resolve_n_jobs(n_jobs)
    coords = get_spatial(adata)
    groups = _sample_groups(adata, sample_key)
    grids = [_detect_grid(_take(coords, rows)) if grid == "auto" else grid for _, rows in groups]
    sizes = {g: [_ring_size(i, g) for i in range(1, n_order + 1)] for g in set(grids)}
    for (name, rows), g in zip(groups, grids, strict=True):
        _check_sample_sizes(
            [(name, rows)], adata.n_obs, sizes[g][-1], f"n_order={n_order} ({g} grid)"
        )
    rng = check_random_state(random_state)

    adata = adata.copy() if copy else adata
    _ensure_obs_columns(
        adata, [mito_key, mito_counts_key], caller="find_artifacts", argument="mito_key"
    )
    percent, mito_counts = (
        np.nan_to_num(_metric_matrix(adata, [key], [False])[:, 0], nan=0.0)
        for key in (mito_key, mito_counts_key)
    )
    n_features = n_order + 2
    artifact = np.zeros(adata.n_obs, dtype=bool)
    scores = np.zeros((adata.n_obs, n_order))
    components = np.zeros((adata.n_obs, n_features))
    per_sample: dict[str, dict[str, object]] = {}
    for (name, rows), g in zip(groups, grids, strict=True):
        local_percent = _take(percent, rows)
        if not np.ptp(local_percent) > 0:
            where = "" if name is None else f" in sample {name!r}"
            raise SpatiomeInputError(
                f"No mitochondrial signal{where}: adata.obs[{mito_key!r}] is constant "
                f"({local_percent[0]:g}). find_artifacts needs mitochondrial genes (MT-/mt-) "
                "counted by spatiome.pp.qc_metrics; data without them (probe panels, gene "
                "subsets) cannot be screened this way"
            )
        values = np.log1p(local_percent) if log else local_percent
        neighbours, _ = spatial_knn(_take(coords, rows), sizes[g][-1], n_jobs=n_jobs)
        local_scores = np.column_stack(
            [_local_variance_scores(values, neighbours[:, :k], n_jobs=n_jobs) for k in sizes[g]]
        )
        features = np.column_stack([local_scores, local_percent, _take(mito_counts, rows)])
        local_components = _pca_scores(features)
        seed = int(rng.integers(0, 2**31 - 1))
        labels = _two_means(local_components, n_init=n_init, seed=seed)
        reference = local_scores[:, min(2, n_order) - 1]
        means = [reference[labels == c].mean() if (labels == c).any() else np.inf for c in (0, 1)]
        flagged = labels == int(np.argmin(means))
        separation = _separation(local_components, flagged)
        if min_separation is not None and not separation >= min_separation:
            flagged = np.zeros_like(flagged)
        if flagged.mean() > 0.5:
            where = "" if name is None else f" of sample {name!r}"
            warnings.warn(
                f"find_artifacts flagged {flagged.mean():.0%} of the spots{where}: the two "
                "k-means clusters did not separate a compact artifact (none present, or the "
                "split followed an artifact's high-variance rim); inspect the flags with "
                "spatiome.pl.qc_spatial before removing spots",
                UserWarning,
                stacklevel=2,
            )
        artifact[rows] = flagged
        scores[rows] = local_scores
        components[rows] = local_components
        per_sample["all" if name is None else name] = {
            "grid": g,
            "n_spots": int(flagged.size),
            "n_flagged": int(flagged.sum()),
            "separation": float(separation),
        }

    adata.obs[key_added] = artifact
    # Columns are named by neighbourhood size, or by ring when samples sit on different grids.
    suffixes = [f"k{k}" for k in sizes[grids[0]]] if len(set(grids)) == 1 else None
    for j in range(n_order):
        suffix = suffixes[j] if suffixes is not None else f"ring{j + 1}"
        adata.obs[f"{key_added}_var_{suffix}"] = scores[:, j]
    adata.obsm[f"X_{key_added}_pca"] = components
    adata.uns.setdefault("spatiome", {})
    adata.uns["spatiome"]["find_artifacts"] = {
        "mito_key": mito_key,
        "mito_counts_key": mito_counts_key,
        "n_order": int(n_order),
        "grid": grid,
        "log": bool(log),
        "n_init": int(n_init),
        "min_separation": None if min_separation is None else float(min_separation),
        "sample_key": sample_key,
        "random_state": (
            "generator" if isinstance(random_state, np.random.Generator) else random_state
        ),
        "key_added": key_added,
        "samples": per_sample,
        "n_flagged": int(artifact.sum()),
    }
    return adata if copy else None


def _separation(points: np.ndarray, flagged: np.ndarray) -> float:
    """Distance between the two groups' means over their pooled SD along that direction."""
    n_in, n_out = int(flagged.sum()), int((~flagged).sum())
    if n_in < 2 or n_out < 2:
        return float("nan")
    direction = points[flagged].mean(axis=0) - points[~flagged].mean(axis=0)
    length = float(np.linalg.norm(direction))
    if length == 0:
        return 0.0
    projected = points @ (direction / length)
    inside, outside = projected[flagged], projected[~flagged]
    pooled = ((n_in - 1) * inside.var(ddof=1) + (n_out - 1) * outside.var(ddof=1)) / (
        n_in + n_out - 2
    )
    if not pooled > 0:
        return float("inf")
    return float(abs(inside.mean() - outside.mean()) / np.sqrt(pooled))


def _as_names(value: str | Sequence[str], what: str) -> list[str]:
    names = [value] if isinstance(value, str) else [str(v) for v in value]
    if not names:
        raise SpatiomeInputError(f"{what} is empty: name at least one adata.obs column")
    if len(set(names)) != len(names):
        raise SpatiomeInputError(f"{what} lists a column twice: {names}")
    return names


def _per_metric(value, names: list[str], what: str, kind: type) -> list:
    """One setting per metric: a single value is repeated, a sequence must match."""
    if isinstance(value, str | bool | np.bool_):
        values = [value] * len(names)
    else:
        values = list(value)
        if len(values) != len(names):
            raise SpatiomeInputError(
                f"{what} has {len(values)} entries for {len(names)} metrics {names}: "
                "give one per metric or a single value for all"
            )
    if kind is bool and not all(isinstance(v, bool | np.bool_) for v in values):
        raise SpatiomeInputError(f"{what} must be True/False per metric, got {values}")
    return [kind(v) for v in values]


def _is_percentage(name: str) -> bool:
    return name.startswith("pct_")


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise SpatiomeInputError(f"{name} must be a positive integer, got {value!r}")


def _check_key_added(key_added: object) -> None:
    if not isinstance(key_added, str) or not key_added:
        raise SpatiomeInputError(f"key_added must be a non-empty string, got {key_added!r}")


def _sample_groups(
    adata: AnnData, sample_key: str | None
) -> list[tuple[str | None, slice | np.ndarray]]:
    """``(sample name, rows)`` per sample; ``rows`` is ``slice(None)`` for a single sample."""
    if sample_key is None:
        return [(None, slice(None))]
    if sample_key not in adata.obs.columns:
        raise SpatiomeInputError(
            f"sample_key={sample_key!r} is not a column of adata.obs; pass the column that "
            "names each spot's sample, or sample_key=None for one sample"
        )
    column = adata.obs[sample_key]
    if column.isna().any():
        raise SpatiomeInputError(
            f"adata.obs[{sample_key!r}] has {int(column.isna().sum())} missing values: "
            "give every spot a sample"
        )
    codes, uniques = pd.factorize(column, sort=False)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
    return [(str(name), order[bounds[i] : bounds[i + 1]]) for i, name in enumerate(uniques)]


def _take(array: np.ndarray, rows: slice | np.ndarray) -> np.ndarray:
    return array if isinstance(rows, slice) else array[rows]


def _check_sample_sizes(
    groups: list[tuple[str | None, slice | np.ndarray]], n_obs: int, k: int, what: str
) -> None:
    for name, rows in groups:
        n = n_obs if isinstance(rows, slice) else rows.size
        if n <= k:
            where = "the data has" if name is None else f"sample {name!r} has"
            raise SpatiomeInputError(
                f"{where} {n} spots, not more than the {k} neighbours asked for by {what}: "
                "lower it or leave small samples out"
            )


def _counts_found(adata: AnnData) -> bool:
    """Whether ``layer=None`` finds raw counts (see :func:`resolve_counts_layer`)."""
    try:
        resolve_counts_layer(adata)
    except SpatiomeInputError:
        return False
    return True


def _ensure_obs_columns(
    adata: AnnData, columns: Sequence[str], *, caller: str, argument: str
) -> None:
    """Compute missing QC columns with :func:`qc_metrics`, or say what to call."""
    missing = [c for c in columns if c not in adata.obs.columns]
    if not missing:
        return
    if all(c in _QC_OBS_COLUMNS for c in missing) and _counts_found(adata):
        qc_metrics(adata)
        return
    raise SpatiomeInputError(
        f"{caller}: adata.obs has no column {missing}: run spatiome.pp.qc_metrics(adata) "
        f"on raw counts first, or pass {argument}= existing numeric adata.obs columns"
    )


def _metric_matrix(adata: AnnData, names: Sequence[str], log_of: Sequence[bool]) -> np.ndarray:
    columns = []
    for name, use_log in zip(names, log_of, strict=True):
        column = adata.obs[name]
        if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
            raise SpatiomeInputError(
                f"adata.obs[{name!r}] must be numeric, got {column.dtype}: pass a numeric QC column"
            )
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isinf(values).any():
            raise SpatiomeInputError(f"adata.obs[{name!r}] has infinite values: fix them")
        if use_log:
            if (values < 0).any():
                raise SpatiomeInputError(
                    f"adata.obs[{name!r}] has negative values, so log1p is undefined: pass "
                    "log=False for this metric"
                )
            values = np.log1p(values)
        columns.append(values)
    return np.column_stack(columns)


def _robust_z(
    values: np.ndarray, median: np.ndarray, mad: np.ndarray, *, legacy: bool
) -> np.ndarray:
    """Local robust z-score; 0 where it is undefined (MAD 0, missing value)."""
    scale = MAD_SCALE * mad if legacy else mad
    with np.errstate(divide="ignore", invalid="ignore"):
        z = MAD_Z_FACTOR * (values - median) / scale
    z[~np.isfinite(z)] = 0.0
    return z


def _beyond(z: np.ndarray, direction: str, cutoff: float) -> np.ndarray:
    if direction == "lower":
        return z < -cutoff
    if direction == "higher":
        return z > cutoff
    return np.abs(z) > cutoff


def _ring_size(order: int, grid: str) -> int:
    """Spots within ``order`` rings of a spot: 6, 18, 36, ... (hex) or 8, 24, 48, ... (square)."""
    return (3 if grid == "hex" else 4) * order * (order + 1)


def _detect_grid(coords: np.ndarray) -> str:
    """``"square"`` when the typical spot has 4 nearest neighbours at one distance, else hex."""
    if coords.shape[0] < 2:
        return "hex"
    k = min(6, coords.shape[0] - 1)
    _, distances = spatial_knn(coords, k)
    nearest = distances[:, :1]
    usable = nearest[:, 0] > 0
    if not usable.any():
        return "hex"
    equidistant = (distances[usable] <= 1.1 * nearest[usable]).sum(axis=1)
    return "square" if 3 <= np.median(equidistant) <= 4 else "hex"


def _local_variance_scores(
    values: np.ndarray, neighbours: np.ndarray, *, n_jobs: int
) -> np.ndarray:
    """SpotSweeper's local variance: log2 variance over spot + neighbours, less its trend."""
    mean, variance = neighbourhood_mean_variance(
        values, neighbours, include_self=True, n_jobs=n_jobs
    )
    mean = np.where(np.isfinite(mean), mean, 0.0)
    variance = np.where(np.isfinite(variance), variance, 0.0)
    positive = variance[variance > 0]
    if positive.size == 0:
        return np.zeros_like(variance)
    log_variance = np.log2(np.maximum(variance, positive.min()))
    _, residuals = huber_line(mean, log_variance)
    return residuals


def huber_line(
    x: np.ndarray,
    y: np.ndarray,
    *,
    k: float = HUBER_K,
    max_iter: int = 20,
    tol: float = 1e-4,
) -> tuple[np.ndarray, np.ndarray]:
    """Robust straight line ``y ~ a + b x``: Huber M-estimator fitted by IRLS.

    Follows the defaults of R's ``MASS::rlm``: least-squares start, Huber weights
    ``min(1, k / |r / s|)`` with the scale ``s = median(|r|) / 0.6745`` re-estimated from
    the residuals at every step, at most ``max_iter`` steps, stopping when the residuals
    change by less than ``tol`` (relative L2 norm).

    Parameters
    ----------
    x, y
        Predictor and response, same length.
    k
        Huber tuning constant.
    max_iter, tol
        Iteration limit and convergence tolerance.

    Returns
    -------
    coefficients, residuals
        ``[intercept, slope]`` and ``y - a - b x``.

    Examples
    --------
    >>> x = np.arange(20.0)
    >>> y = 1.0 + 2.0 * x
    >>> y[3] = 500.0  # one gross outlier barely moves the fit
    >>> coefficients, residuals = huber_line(x, y)
    >>> np.round(coefficients, 3).tolist(), round(float(residuals[3]))
    ([1.0, 2.0], 493)
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    design = np.column_stack([np.ones_like(x), x])
    coefficients = np.linalg.lstsq(design, y, rcond=None)[0]
    residuals = y - design @ coefficients
    for _ in range(max_iter):
        scale = np.median(np.abs(residuals)) / MAD_Z_FACTOR
        if not scale > 0:
            break
        standardized = np.abs(residuals) / scale
        weights = np.minimum(1.0, k / np.maximum(standardized, np.finfo(float).tiny))
        root = np.sqrt(weights)
        coefficients = np.linalg.lstsq(design * root[:, None], y * root, rcond=None)[0]
        updated = y - design @ coefficients
        change = np.sqrt(np.sum((residuals - updated) ** 2) / max(1e-20, np.sum(residuals**2)))
        residuals = updated
        if change <= tol:
            break
    return coefficients, residuals


def _pca_scores(features: np.ndarray) -> np.ndarray:
    """All principal component scores of centred, unit-variance columns (signs fixed)."""
    centred = features - features.mean(axis=0)
    spread = features.std(axis=0, ddof=1)
    spread[~(spread > 0)] = 1.0
    u, s, vt = np.linalg.svd(centred / spread, full_matrices=False)
    # The largest loading of each component is made positive, so runs agree in sign.
    signs = np.sign(vt[np.arange(vt.shape[0]), np.abs(vt).argmax(axis=1)])
    signs[signs == 0] = 1.0
    return (u * s) * signs


def _two_means(points: np.ndarray, *, n_init: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    if np.unique(points, axis=0).shape[0] < 2:
        return np.zeros(points.shape[0], dtype=np.int64)
    model = KMeans(n_clusters=2, n_init=n_init, random_state=seed)
    # Two centres in a handful of columns is cheap; OpenMP threads only add overhead and
    # stall badly (100x) when other processes share the cores.
    with threadpool_limits(limits=1):
        labels = model.fit_predict(points)
    return np.asarray(labels, dtype=np.int64)
