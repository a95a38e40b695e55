"""Ligand-receptor analysis on the spatial graph: bivariate Moran's I, calibrated.

For a pair with ligand expression l and receptor expression r over n spots, standardized
to z_l, z_r (mean 0, sum of squares n), and a sparse spatial weight matrix W without
self-loops (row-normalized by default, total weight S0):

    I_LR = z_l' W z_r / S0 = sum_ij w_ij z_l,i z_r,j / S0

is large when spots expressing the ligand have neighbours expressing the receptor (the
ligand is read at the sender i, the receptor at its neighbours j). With row-normalized W
and no isolated spot, S0 = n and I_LR = z_l' W z_r / n, Wartenberg's bivariate Moran's I
(the global statistic of SpatialDM and of liana's ``bivariate(global_name="morans")``).
A complex takes, in every spot, the minimum of its subunits (liana's default).

Null hypothesis and p-values. The spots' expression profiles are exchangeable: a random
permutation moves (l_i, r_i) together, so the within-spot association of l and r is kept
and only the spatial arrangement is destroyed. ``pvalue_analytic`` is a normal
approximation with the exact mean and variance of I_LR under that permutation null (see
:func:`permutation_moments`); with ``n_permutations`` > 0, ``pvalue_perm`` =
(k + 1) / (n_permutations + 1) counts the permutations at least as extreme, so it is never
0. p-values are one-sided towards positive association unless ``two_tailed``, and adjusted
across pairs by Benjamini-Hochberg.

Computation. Ligands and receptors become entities (genes or complexes) whose values in
every spot (the stored values, or by default the Pearson residuals of the raw counts) are
made on demand from the sparse columns of their genes, never for all genes at once.
Receptor entities are processed in chunks: the chunk is made dense and centred
(n x chunk) and multiplied by W once, W @ Y_c; the ligands of its pairs follow in dense
blocks of the same size, and every pair then needs one pass over the spots (numba).
Permutations reuse the chunk: one W @ Y_c[perm] per permutation serves all its pairs.
No n x n matrix is ever formed; memory is O(nnz(X) + n x chunk).
"""

from __future__ import annotations

import numbers
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy import stats

from .._core.parallel import map_gene_chunks, resolve_n_jobs
from .._core.random import check_random_state
from .._core.stats import bh_adjust
from .._core.validate import SpatiomeInputError, check_adata, check_finite, get_matrix
from .resource import resolve_pairs

__all__ = ["gene_symbols", "ligrec", "ligrec_local", "permutation_moments"]

DEFAULT_CONNECTIVITY_KEY = "spatial_connectivities"
METHODS = ("bivariate_moran",)
COMPLEX_POLICIES = ("min", "mean")
TRANSFORMATIONS = ("row", "none")
GLOBAL_PVALUES = ("auto", "analytic", "permutation")
NORMALIZATIONS = ("auto", "pearson", "none")
DEFAULT_COUNTS_LAYER = "counts"
#: Negative binomial overdispersion of the Pearson residuals (spatiome.pp.normalize's).
DEFAULT_THETA = 100.0
COMPLEX_SEP = "_"
#: Columns of ``adata.var`` searched for gene symbols when var_names are Ensembl IDs.
SYMBOL_COLUMNS = (
    "gene_symbol",
    "gene_symbols",
    "symbol",
    "symbols",
    "SYMBOL",
    "Symbol",
    "gene_name",
    "gene_names",
    "feature_name",
    "feature_names",
    "name",
    "gene",
)
_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
#: Permutations generated per random block (seeds per block: results do not depend on
#: how the receptors are chunked).
PERMUTATION_BLOCK = 32
#: Entries of one dense receptor chunk (n_spots x receptors); three such arrays are live.
CHUNK_ENTRIES = 16_000_000
PVALUE_FLOOR = float(np.finfo(np.float64).tiny)


@dataclass(frozen=True)
class _Graph:
    """Spatial weights without self-loops and the sums that give the null moments."""

    matrix: sp.csr_matrix
    s0: float
    a1: float  # sum w_ij^2
    a2: float  # sum w_ij w_ji
    a_rows: float  # sum_i r_i^2 - a1 (two edges leaving one spot)
    a_cols: float  # sum_j c_j^2 - a1 (two edges entering one spot)
    a_path: float  # sum_i r_i c_i - a2 (an edge into a spot, one out of it)
    a_disjoint: float  # the remaining pairs of edges, on four distinct spots


@dataclass(frozen=True)
class _Recipe:
    """How every entity's value in every spot is made from the stored genes.

    ``genes`` holds the needed genes' stored values (raw counts when ``size`` is not
    empty: then each gene enters as its analytic Pearson residual, with expected count
    ``size[i] * fraction[g]``, variance mu + mu^2 / theta and clipped at ``clip``). A
    complex takes the minimum (or mean) of its subunits ``members[member_indptr[e]:...]``.
    """

    genes: sp.csc_matrix
    member_indptr: np.ndarray
    members: np.ndarray
    minimum: bool
    size: np.ndarray
    fraction: np.ndarray
    inverse_theta: float
    clip: float

    def values(self, columns: np.ndarray, n: int) -> np.ndarray:
        """Entities ``columns`` in every spot, as a Fortran-ordered (n, k) array."""
        out = np.empty((n, len(columns)), order="F")
        _fill_entities(
            self.genes.indptr,
            self.genes.indices,
            self.genes.data,
            self.member_indptr,
            self.members,
            self.minimum,
            self.size,
            self.fraction,
            self.inverse_theta,
            self.clip,
            np.asarray(columns, dtype=np.int64),
            out,
        )
        return out


@dataclass(frozen=True)
class _Entities:
    """Ligand and receptor entities (genes or complexes), their values made on demand."""

    names: list[str]
    recipe: _Recipe
    means: np.ndarray
    scales: np.ndarray  # sqrt(sum (x - mean)^2 / n); 0 for constant entities
    n_cells: np.ndarray  # spots with a positive stored value (all subunits, for "min")


def gene_symbols(adata: AnnData, symbol_key: str | None = None) -> pd.Index:
    """The gene symbols of ``adata.var``, as matched against a ligand-receptor resource.

    ``adata.var_names`` are used unless most of them are Ensembl IDs (``ENSG...``,
    ``ENSMUSG...``); then the first column of ``adata.var`` among ``SYMBOL_COLUMNS``
    (``gene_symbol``, ``symbol``, ``gene_name``, ``feature_name``, ...) that holds symbols
    rather than Ensembl IDs is used, or ``adata.var[symbol_key]`` when given.

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd
    >>> var = pd.DataFrame({"gene_name": ["TGFB1", "TGFBR1"]},
    ...                    index=["ENSG00000105329", "ENSG00000106799"])
    >>> gene_symbols(anndata.AnnData(np.ones((2, 2)), var=var)).tolist()
    ['TGFB1', 'TGFBR1']
    """
    if symbol_key is not None:
        if symbol_key not in adata.var.columns:
            raise SpatiomeInputError(
                f"symbol_key={symbol_key!r} is not a column of adata.var (columns: "
                f"{list(adata.var.columns)})"
            )
        return pd.Index(adata.var[symbol_key].astype(str), name=symbol_key)
    names = adata.var_names
    if not _mostly_ensembl(names):
        return pd.Index(names.astype(str))
    for column in SYMBOL_COLUMNS:
        if column in adata.var.columns and not _mostly_ensembl(adata.var[column]):
            return pd.Index(adata.var[column].astype(str), name=column)
    looked = [c for c in SYMBOL_COLUMNS if c in adata.var.columns]
    also = (
        f"; the columns {looked} hold Ensembl IDs too"
        if looked
        else "; no column of adata.var holds symbols"
    )
    raise SpatiomeInputError(
        f"adata.var_names are Ensembl IDs (e.g. {names[0]!r}) but ligand-receptor resources "
        f"use gene symbols{also}: add the symbols as adata.var['gene_symbol'] (e.g. from the "
        "features.tsv of the 10x output or a BioMart table) or pass symbol_key= naming the "
        "column that holds them"
    )


def _mostly_ensembl(values: Any) -> bool:
    strings = pd.Index(values).astype(str)
    sample = strings[: min(len(strings), 2000)]
    return bool(np.mean([bool(_ENSEMBL.match(v)) for v in sample]) > 0.5) if len(sample) else False


def permutation_moments(
    graph: _Graph, cross: np.ndarray, fourth: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of z_l' W z_r under random permutations of the spots.

    z_l and z_r are standardized (sum 0, sum of squares n) and permuted together; the
    moments depend on them only through ``cross`` = sum_i z_l,i z_r,i and ``fourth`` =
    sum_i z_l,i^2 z_r,i^2. With Gamma = sum_{i != j} w_ij z_l,pi(i) z_r,pi(j) (Hubert's
    general cross-product statistic with b_pq = z_l,p z_r,q off the diagonal), the pairs
    of edges in E[Gamma^2] are split by the spots they share: the same edge (A1), the
    reversed edge (A2), two edges leaving one spot or entering one spot, a path
    i -> j -> k or k -> i -> j, and four distinct spots. For each class the sum over the
    matching index patterns of b is a polynomial in n, c = ``cross`` and d = ``fourth``:

        B1 = n^2 - d, B2 = c^2 - d, B_rows = B_cols = 2d - n^2, B_path = 2d - c^2,
        B_disjoint = 2c^2 + n^2 - 6d

    and E[Gamma] = -S0 c / (n (n - 1)), E[Gamma^2] = (A1 B1 + A2 B2) / n_(2)
    + ((A_rows + A_cols) B_rows + 2 A_path B_path) / n_(3) + A_disjoint B_disjoint / n_(4)
    with n_(k) the falling factorials. For l = r this is Cliff and Ord's variance of
    Moran's I under randomization. The tests check it against all n! permutations.

    Returns
    -------
    expected, variance
        Of z_l' W z_r (divide by S0 and S0^2 for I_LR).
    """
    n = float(n)
    c, d = np.asarray(cross, dtype=np.float64), np.asarray(fourth, dtype=np.float64)
    ff2 = n * (n - 1.0)
    ff3 = ff2 * (n - 2.0)
    ff4 = ff3 * (n - 3.0)
    b1 = n * n - d
    b2 = c * c - d
    b_rows = 2.0 * d - n * n
    b_path = 2.0 * d - c * c
    b_disjoint = 2.0 * c * c + n * n - 6.0 * d
    second = (
        (graph.a1 * b1 + graph.a2 * b2) / ff2
        + ((graph.a_rows + graph.a_cols) * b_rows + 2.0 * graph.a_path * b_path) / ff3
        + graph.a_disjoint * b_disjoint / ff4
    )
    expected = -graph.s0 * c / ff2
    return expected, np.maximum(second - expected * expected, 0.0)


def ligrec(
    adata: AnnData,
    *,
    resource: str | pd.DataFrame | list[tuple[str, str]] = "consensus",
    organism: str = "human",
    groups: str | None = None,
    layer: str | None = None,
    normalization: str = "auto",
    counts_layer: str = DEFAULT_COUNTS_LAYER,
    theta: float = DEFAULT_THETA,
    connectivity_key: str = DEFAULT_CONNECTIVITY_KEY,
    transformation: str = "row",
    method: str = "bivariate_moran",
    symbol_key: str | None = None,
    complex_policy: str = "min",
    min_expr_fraction: float = 0.05,
    n_permutations: int = 0,
    global_pvalue: str = "auto",
    two_tailed: bool = False,
    n_local: int = 10,
    random_state: int | np.random.Generator | None = 0,
    chunk_size: int | None = None,
    n_jobs: int = 1,
    client: Any | None = None,
    key_added: str = "ligrec",
    copy: bool = False,
) -> pd.DataFrame:
    """Spatially co-located ligand-receptor pairs: bivariate Moran's I with calibrated p-values.

    Parameters
    ----------
    adata
        Spots (or cells) x genes with raw counts in ``adata.layers[counts_layer]`` (as
        :func:`spatiome.pp.normalize` leaves them) or normalized expression in ``adata.X``,
        and a spatial graph in ``adata.obsp``.
    resource
        ``"consensus"`` (liana's curated table, read offline from the installed liana
        package: :func:`spatiome.interactions.resource.ligand_receptor_pairs`), another
        resource name of that table, a ``DataFrame`` with ``ligand`` and ``receptor``
        columns, or a list of (ligand, receptor) tuples. Complexes are written with their
        subunits joined by ``"_"``.
    organism
        ``"human"`` or ``"mouse"`` (liana's mouse consensus) for a named resource.
    groups
        Column of ``adata.obs`` with cell types. When given, every tested pair is also
        scored for every (sender, receiver) pair of groups: the edge-weighted mean of
        z_l,i z_r,j over the edges i -> j from a sender spot to a receiver spot, written to
        ``adata.uns[f"{key_added}_groups"]``. With permutations, its p-value permutes the
        spots' profiles within each group, so constitutive expression of a co-localized
        pair of types is not called (the global test cannot tell it from an interaction).
    layer
        With ``normalization="none"``: use ``adata.layers[layer]`` instead of ``adata.X``.
        Naming a layer also makes ``"auto"`` use it as given.
    normalization
        What the statistic is computed on. ``"pearson"``: analytic Pearson residuals of
        the counts, (x - mu) / sqrt(mu + mu^2 / theta) with mu = spot total x gene share
        (the spot totals over all genes of the counts layer), clipped at sqrt(n), computed
        inside for the ligand and receptor genes only, chunk by chunk; a complex takes
        the minimum (or mean) of its subunits' residuals. ``"none"``: ``adata.X`` (or
        ``layer``) as given. ``"auto"`` (default): ``"pearson"`` when
        ``adata.layers[counts_layer]`` exists and ``layer`` is None, else ``"none"``.
        Residuals keep the test calibrated when library size is spatially patterned,
        log-normalized values do not (see Notes).
    counts_layer
        Layer with the raw counts for the Pearson residuals.
    theta
        Negative binomial overdispersion of the residuals (100, near-Poisson, as in
        :func:`spatiome.pp.normalize`; ``numpy.inf`` for Poisson).
    connectivity_key
        Spatial weights in ``adata.obsp``; ``"spatial"`` means ``"spatial_connectivities"``
        (squidpy's prefix). Self-loops are ignored: within-spot co-expression is not
        adjacency.
    transformation
        ``"row"``: row-normalize W (each spot's neighbours weigh 1 in all);
        ``"none"``: use the stored weights (e.g. a Gaussian kernel).
    method
        ``"bivariate_moran"``, the only statistic so far.
    symbol_key
        Column of ``adata.var`` with gene symbols (see :func:`gene_symbols`; found
        automatically when var_names are Ensembl IDs).
    complex_policy
        How a complex's expression is made from its subunits in each spot: ``"min"``
        (liana's default) or ``"mean"``.
    min_expr_fraction
        Pairs are tested only when ligand and receptor are positive in at least this
        fraction of spots (liana's ``nz_prop``).
    n_permutations
        When > 0, also a permutation p-value (shared permutations of the spots), which
        then becomes ``pvalue`` (see ``global_pvalue``); and p-values of the group scores.
    global_pvalue
        Which p-value of the global test becomes ``pvalue``: ``"analytic"`` (no
        permutations of the global test are run, only those of the group scores),
        ``"permutation"`` (needs ``n_permutations`` > 0), or ``"auto"``: the permutation
        p-value when ``n_permutations`` > 0. Both are calibrated (docs/interactions.md);
        the analytic one resolves small p-values that a few hundred permutations cannot.
    two_tailed
        Two-sided p-values (association of either sign) instead of one-sided towards
        positive association.
    n_local
        Local scores z_l,i (W z_r)_i of this many top pairs go to
        ``adata.obsm[f"{key_added}_local"]`` (0: none; :func:`ligrec_local` computes any
        pair on demand, also symmetrized).
    random_state
        Seed or generator for the permutations.
    chunk_size
        Receptor entities per dense chunk (default: about 16 million entries).
    n_jobs, client
        Threads over receptor chunks (and blocks of pairs for ``groups``), or a
        ``distributed.Client`` to which the chunks are sent; results are identical.
    key_added
        Name of the outputs.
    copy
        When True, ``adata`` is left untouched and only the table is returned.

    Returns
    -------
    pandas.DataFrame
        One row per tested pair, sorted by ``pvalue`` then by decreasing ``score``:
        ``ligand``, ``receptor``, ``ligand_complex``, ``receptor_complex``, ``score``
        (I_LR), ``expected`` (its permutation mean, -c / (n - 1) with c the within-spot
        correlation), ``zscore``, ``pvalue_analytic``, ``pvalue_perm`` (with
        permutations), ``pvalue`` (the permutation p-value when computed, else the
        analytic one; floored at the smallest positive double, never 0),
        ``log10_pvalue_analytic`` (finite even where the p-value underflows), ``qvalue``
        (Benjamini-Hochberg over the tested pairs), ``ligand_cells`` and
        ``receptor_cells`` (spots with positive expression). Unless ``copy=True``, the
        table goes to ``adata.uns[key_added]``, the parameters, the resource's
        provenance and the pair counts (tested, missing genes, too rarely expressed) to
        ``adata.uns["spatiome"][key_added]`` (with ``normalization``, the one used),
        and local scores to ``adata.obsm``.

    Notes
    -----
    The test asks whether ligand and receptor are found next to each other more than the
    spots' random arrangement would give. Two known confounders: (1) a spatial pattern of
    library size that survives normalization correlates every pair of genes across space.
    On log1p of depth-normalized counts with an e-fold depth gradient, type-I error at 0.05
    is 0.124 (95% interval 0.106-0.144, 1,200 null pairs) for the global test and 0.060
    for the per-group-pair test; on the Pearson residuals of the default it is 0.044-0.053
    (intervals within 0.033-0.067) for the analytic and permutation tests and 0.044-0.046
    for the per-group-pair test, on the gradient the default was chosen on and on two
    held-out settings (radial and patchy depth, other graphs;
    ``benchmarks/interactions.py``). Keep ``layers["counts"]`` so that the default applies.
    (2) Two cell types that share a region and express ligand and receptor constitutively
    give a positive I_LR without any interaction: use ``groups`` with permutations to test
    adjacency within types.

    References
    ----------
    Wartenberg, D. (1985). Multivariate spatial correlation: a method for exploratory
    geographical analysis. Geographical Analysis 17, 263-283.
    Li, Z. et al. (2023). SpatialDM for rapid identification of spatially co-expressed
    ligand-receptor and revealing cell-cell communication patterns. Nat Commun 14, 3995.
    Dimitrov, D. et al. (2024). LIANA+ provides an all-in-one framework for cell-cell
    communication inference. Nat Cell Biol 26, 1613-1622.

    Examples
    --------
    >>> import spatiome as sm
    >>> from spatiome.datasets.ligrec_simulation import simulate_interactions
    >>> from spatiome.interactions.ligrec import ligrec
    >>> adata = simulate_interactions(n_cells=1500, random_state=0)
    >>> sm.pp.normalize(adata)
    >>> sm.graph.spatial_neighbors(adata, n_neighbors=6)
    >>> truth = adata.uns["ligrec_truth"]
    >>> table = ligrec(adata, resource=truth, groups="cell_type")
    >>> top = table.iloc[0]
    >>> truth.set_index(["ligand", "receptor"]).loc[(top.ligand, top.receptor), "kind"]
    'planted'
    >>> "ligrec_local" in adata.obsm
    True
    """
    check_adata(adata)
    _check_options(
        method,
        complex_policy,
        transformation,
        min_expr_fraction,
        n_permutations,
        two_tailed,
        n_local,
        chunk_size,
        adata.n_obs,
        global_pvalue,
    )
    workers = resolve_n_jobs(n_jobs)
    pairs = resolve_pairs(resource, organism)
    graph, graph_key = _graph(adata, connectivity_key, transformation)
    used, source = _resolve_normalization(adata, normalization, layer, counts_layer, theta)
    matrix = get_matrix(adata, source, argument="counts_layer" if used == "pearson" else "layer")
    pairs, entities, counts = _entities(
        adata,
        matrix,
        pairs,
        source,
        symbol_key,
        complex_policy,
        min_expr_fraction,
        pearson=used == "pearson",
        theta=theta,
    )
    n = adata.n_obs
    ligand_index = pairs["ligand_entity"].to_numpy()
    receptor_index = pairs["receptor_entity"].to_numpy()
    receptors = np.unique(receptor_index)
    size = chunk_size or max(1, CHUNK_ENTRIES // n)
    seeds = _block_seeds(random_state, n_permutations)
    global_permutations = 0 if global_pvalue == "analytic" else n_permutations

    def run_chunk(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        chunk = receptors[start:stop]
        members = np.flatnonzero(np.isin(receptor_index, chunk))
        column = np.searchsorted(chunk, receptor_index[members])
        sums, extreme = _chunk_statistics(
            entities,
            graph,
            chunk,
            ligand_index[members],
            column,
            seeds,
            global_permutations,
            two_tailed,
        )
        return members, np.column_stack([sums, extreme])

    results = map_gene_chunks(
        run_chunk, receptors.size, chunk_size=size, n_jobs=workers, client=client
    )
    values = np.full((len(pairs), 4), np.nan)
    for members, block in results:
        values[members] = block
    table, lig_sorted, rec_sorted = _table(
        pairs, entities, graph, values, n, global_permutations, two_tailed
    )

    local = None
    if n_local and len(table):
        k = min(n_local, len(table))
        local = _local_frame(
            adata,
            entities,
            graph,
            table.head(k),
            lig_sorted[:k],
            rec_sorted[:k],
            symmetric=False,
        )
    group_table = None
    if groups is not None:
        group_table = _group_table(
            adata,
            groups,
            entities,
            graph,
            table,
            lig_sorted,
            rec_sorted,
            seeds,
            n_permutations,
            two_tailed,
            workers,
            client,
        )

    if not copy:
        adata.uns[key_added] = table
        if group_table is not None:
            adata.uns[f"{key_added}_groups"] = group_table
        if local is not None:
            adata.obsm[f"{key_added}_local"] = local
        adata.uns.setdefault("spatiome", {})[key_added] = {
            "method": method,
            "layer": layer,
            "normalization": used,
            **({"counts_layer": source, "theta": float(theta)} if used == "pearson" else {}),
            "connectivity_key": graph_key,
            "transformation": transformation,
            "complex_policy": complex_policy,
            "min_expr_fraction": float(min_expr_fraction),
            "n_permutations": int(n_permutations),
            "global_pvalue": "permutation" if global_permutations else "analytic",
            "two_tailed": bool(two_tailed),
            "groups": groups,
            "random_state": random_state if isinstance(random_state, int | None) else "Generator",
            "resource": {k: str(v) for k, v in pairs.attrs.items()},
            **counts,
        }
    return table


def ligrec_local(
    adata: AnnData,
    pairs: pd.DataFrame | list[tuple[str, str]],
    *,
    symmetric: bool = False,
    layer: str | None = None,
    normalization: str = "auto",
    counts_layer: str = DEFAULT_COUNTS_LAYER,
    theta: float = DEFAULT_THETA,
    connectivity_key: str = DEFAULT_CONNECTIVITY_KEY,
    transformation: str = "row",
    symbol_key: str | None = None,
    complex_policy: str = "min",
) -> pd.DataFrame:
    """Local bivariate scores of ligand-receptor pairs, one column per pair, for maps.

    The local score of spot i is z_l,i (W z_r)_i: the spot's standardized ligand times
    the weighted mean of its neighbours' standardized receptor; they sum to S0 * I_LR.
    ``symmetric=True`` averages both directions, (z_l,i (W z_r)_i + z_r,i (W z_l)_i) / 2.

    Returns
    -------
    pandas.DataFrame
        Spots x pairs (columns ``"LIGAND^RECEPTOR"``), indexed like ``adata.obs``.

    Examples
    --------
    >>> import anndata, numpy as np, scipy.sparse as sp
    >>> adata = anndata.AnnData(np.array([[1.0, 0.0], [0.0, 3.0], [2.0, 1.0], [1.0, 0.0]]))
    >>> adata.var_names = ["L", "R"]
    >>> path = np.eye(4, k=1) + np.eye(4, k=-1)  # spots 0-1-2-3 on a line
    >>> adata.obsp["spatial_connectivities"] = sp.csr_matrix(path)
    >>> ligrec_local(adata, [("L", "R")])["L^R"].round(3).tolist()
    [0.0, 0.577, 0.577, 0.0]
    """
    check_adata(adata)
    _check_options(
        "bivariate_moran",
        complex_policy,
        transformation,
        0.0,
        0,
        False,
        0,
        None,
        adata.n_obs,
        "auto",
    )
    table = resolve_pairs(pairs)
    graph, _ = _graph(adata, connectivity_key, transformation)
    used, source = _resolve_normalization(adata, normalization, layer, counts_layer, theta)
    matrix = get_matrix(adata, source, argument="counts_layer" if used == "pearson" else "layer")
    table, entities, _ = _entities(
        adata,
        matrix,
        table,
        source,
        symbol_key,
        complex_policy,
        0.0,
        pearson=used == "pearson",
        theta=theta,
        keep_constant=True,
    )
    return _local_frame(
        adata,
        entities,
        graph,
        table,
        table["ligand_entity"].to_numpy(),
        table["receptor_entity"].to_numpy(),
        symmetric=symmetric,
    )


def _check_options(
    method,
    complex_policy,
    transformation,
    min_expr_fraction,
    n_permutations,
    two_tailed,
    n_local,
    chunk_size,
    n_obs,
    global_pvalue,
) -> None:
    if method not in METHODS:
        raise SpatiomeInputError(f"method must be one of {METHODS}, got {method!r}")
    if complex_policy not in COMPLEX_POLICIES:
        raise SpatiomeInputError(
            f"complex_policy must be one of {COMPLEX_POLICIES}, got {complex_policy!r}"
        )
    if transformation not in TRANSFORMATIONS:
        raise SpatiomeInputError(
            f"transformation must be one of {TRANSFORMATIONS}, got {transformation!r}"
        )
    if not isinstance(min_expr_fraction, numbers.Real) or not 0 <= min_expr_fraction <= 1:
        raise SpatiomeInputError(
            f"min_expr_fraction must be a number in [0, 1], got {min_expr_fraction!r}"
        )
    for name, value in (("n_permutations", n_permutations), ("n_local", n_local)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise SpatiomeInputError(f"{name} must be a non-negative integer, got {value!r}")
    if not isinstance(two_tailed, bool | np.bool_):
        raise SpatiomeInputError(f"two_tailed must be True or False, got {two_tailed!r}")
    if global_pvalue not in GLOBAL_PVALUES:
        raise SpatiomeInputError(
            f"global_pvalue must be one of {GLOBAL_PVALUES}, got {global_pvalue!r}"
        )
    if global_pvalue == "permutation" and not n_permutations:
        raise SpatiomeInputError("global_pvalue='permutation' needs n_permutations > 0 (e.g. 999)")
    if chunk_size is not None and (not isinstance(chunk_size, numbers.Integral) or chunk_size < 1):
        raise SpatiomeInputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if n_obs < 4:
        raise SpatiomeInputError(f"ligand-receptor analysis needs at least 4 spots, got {n_obs}")


def _resolve_normalization(
    adata: AnnData, normalization: str, layer: str | None, counts_layer: str, theta: float
) -> tuple[str, str | None]:
    """``("pearson", counts layer)`` or ``("none", layer)``: what the statistic is computed on."""
    if normalization not in NORMALIZATIONS:
        raise SpatiomeInputError(
            f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}"
        )
    if isinstance(theta, bool) or not isinstance(theta, numbers.Real) or not theta > 0:
        raise SpatiomeInputError(f"theta must be a positive number (or inf), got {theta!r}")
    if normalization == "auto":
        has_counts = isinstance(counts_layer, str) and counts_layer in adata.layers
        normalization = "pearson" if layer is None and has_counts else "none"
    if normalization == "none":
        return "none", layer
    if counts_layer not in adata.layers:
        present = sorted(adata.layers.keys())
        raise SpatiomeInputError(
            f"normalization='pearson' needs raw counts, but adata.layers[{counts_layer!r}] is "
            f"missing (layers present: {present or 'none'}): set adata.layers[{counts_layer!r}] "
            "to the raw counts, pass counts_layer= naming the layer that holds them, or pass "
            "normalization='none' to use adata.X (or layer=) as given"
        )
    return "pearson", counts_layer


def _graph(adata: AnnData, key: str, transformation: str) -> tuple[_Graph, str]:
    if key not in adata.obsp and f"{key}_connectivities" in adata.obsp:
        key = f"{key}_connectivities"
    if key not in adata.obsp:
        raise SpatiomeInputError(
            f"adata.obsp[{key!r}] is missing (available: {sorted(adata.obsp.keys())}): call "
            "spatiome.graph.spatial_neighbors(adata) first, or pass connectivity_key="
        )
    stored = adata.obsp[key]
    n = adata.n_obs
    if stored.shape != (n, n):
        raise SpatiomeInputError(
            f"adata.obsp[{key!r}] has shape {stored.shape}, expected ({n}, {n})"
        )
    weights = sp.csr_matrix(stored, dtype=np.float64, copy=True)
    weights.setdiag(0.0)
    weights.eliminate_zeros()
    weights.sum_duplicates()
    check_finite(weights, where=f"adata.obsp[{key!r}]")
    if weights.nnz and weights.data.min() < 0:
        raise SpatiomeInputError(f"adata.obsp[{key!r}] has negative weights: fix the graph")
    if transformation == "row":
        from ..graph import row_normalize

        weights = row_normalize(weights)
    s0 = float(weights.sum())
    if s0 == 0:
        raise SpatiomeInputError(
            f"adata.obsp[{key!r}] has no edges between distinct spots: rebuild the graph with "
            "spatiome.graph.spatial_neighbors"
        )
    rows = np.asarray(weights.sum(axis=1)).ravel()
    cols = np.asarray(weights.sum(axis=0)).ravel()
    a1 = float(weights.multiply(weights).sum())
    a2 = float(weights.multiply(weights.T).sum())
    a_rows = float(rows @ rows) - a1
    a_cols = float(cols @ cols) - a1
    a_path = float(rows @ cols) - a2
    a_disjoint = s0 * s0 - a1 - a2 - a_rows - a_cols - 2.0 * a_path
    graph = _Graph(weights, s0, a1, a2, a_rows, a_cols, a_path, a_disjoint)
    return graph, key


def _entities(
    adata: AnnData,
    matrix: sp.csr_matrix | np.ndarray,
    pairs: pd.DataFrame,
    layer: str | None,
    symbol_key: str | None,
    complex_policy: str,
    min_expr_fraction: float,
    *,
    pearson: bool = False,
    theta: float = DEFAULT_THETA,
    keep_constant: bool = False,
) -> tuple[pd.DataFrame, _Entities, dict]:
    """Pairs whose genes are all present, and the matrix of their entities."""
    symbols = gene_symbols(adata, symbol_key)
    position: dict[str, int] = {}
    for index, symbol in enumerate(symbols):
        position.setdefault(symbol, index)

    def subunits(name: str, is_complex: Any) -> list[str]:
        if name in position:
            if is_complex is True:
                return name.split(COMPLEX_SEP)
            return [name]
        if is_complex is False:
            return [name]
        return name.split(COMPLEX_SEP)

    sides = {}
    for side in ("ligand", "receptor"):
        flags = pairs[f"{side}_complex"] if f"{side}_complex" in pairs else [None] * len(pairs)
        sides[side] = [
            subunits(name, None if flag is None else bool(flag))
            for name, flag in zip(pairs[side], flags, strict=True)
        ]
    present = np.array(
        [
            all(g in position for g in lig) and all(g in position for g in rec)
            for lig, rec in zip(sides["ligand"], sides["receptor"], strict=True)
        ],
        dtype=bool,
    )
    n_resource = len(pairs)
    if not present.any():
        example = ", ".join(symbols[:3].tolist())
        raise SpatiomeInputError(
            f"none of the {n_resource} ligand-receptor pairs has all its genes in the data "
            f"(gene names such as {example}): check the organism (human symbols are upper "
            "case, mouse ones capitalized), or pass symbol_key= naming the column of gene "
            "symbols"
        )
    names: list[str] = []
    entity_of: dict[tuple[str, ...], int] = {}
    index_pairs = np.full((n_resource, 2), -1, dtype=np.int64)
    for row in np.flatnonzero(present):
        for k, side in enumerate(("ligand", "receptor")):
            key = tuple(sides[side][row])
            if key not in entity_of:
                entity_of[key] = len(names)
                names.append(COMPLEX_SEP.join(key))
            index_pairs[row, k] = entity_of[key]
    keys = sorted(entity_of, key=entity_of.get)
    genes = sorted({g for key in keys for g in key})
    columns = np.array([position[g] for g in genes])
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    selected = _selected_columns(matrix, columns, where)
    gene_column = {g: i for i, g in enumerate(genes)}
    members = [[gene_column[g] for g in key] for key in keys]
    positive = _positive_spots(selected, members, complex_policy)
    size, fraction = np.empty(0), np.empty(0)
    if pearson:
        if selected.nnz and selected.data.min() < 0:
            raise SpatiomeInputError(
                f"{where} has negative values (min {selected.data.min():g}) but Pearson "
                "residuals are computed from raw counts: point counts_layer= at the raw "
                "counts, or pass normalization='none' to use the values as given"
            )
        size = np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel()
        check_finite(size, where=where)
        total = float(size.sum())
        fraction = np.asarray(selected.sum(axis=0)).ravel() / total if total > 0 else size[:0]
        if total <= 0:
            fraction = np.zeros(len(genes))
    recipe = _Recipe(
        genes=selected,
        member_indptr=np.concatenate([[0], np.cumsum([len(m) for m in members])]).astype(np.int64),
        members=np.concatenate(members).astype(np.int64),
        minimum=complex_policy == "min",
        size=size,
        fraction=fraction,
        inverse_theta=1.0 / float(theta),
        clip=float(np.sqrt(adata.n_obs)),
    )
    means, scales = _entity_moments(recipe, len(names), adata.n_obs)
    entities = _Entities(names, recipe, means, scales, positive)
    n = adata.n_obs

    kept = pairs.loc[present].copy()
    kept["ligand_entity"] = index_pairs[present, 0]
    kept["receptor_entity"] = index_pairs[present, 1]
    lig, rec = kept["ligand_entity"].to_numpy(), kept["receptor_entity"].to_numpy()
    kept["ligand_complex"] = [len(sides["ligand"][r]) > 1 for r in np.flatnonzero(present)]
    kept["receptor_complex"] = [len(sides["receptor"][r]) > 1 for r in np.flatnonzero(present)]
    expressed = (positive[lig] >= min_expr_fraction * n) & (positive[rec] >= min_expr_fraction * n)
    if not keep_constant:
        expressed &= (scales[lig] > 0) & (scales[rec] > 0)
    counts = {
        "n_pairs_resource": int(n_resource),
        "n_pairs_missing_genes": int(n_resource - present.sum()),
        "n_pairs_low_expression": int((~expressed).sum()),
        "n_pairs_tested": int(expressed.sum()),
    }
    kept = kept.loc[expressed].reset_index(drop=True)
    kept.attrs = dict(pairs.attrs)
    if kept.empty and not keep_constant:
        warnings.warn(
            f"no ligand-receptor pair passed min_expr_fraction={min_expr_fraction} "
            f"({counts['n_pairs_low_expression']} pairs with all genes present)",
            UserWarning,
            stacklevel=3,
        )
    return kept, entities, counts


def _selected_columns(
    matrix: sp.csr_matrix | np.ndarray, columns: np.ndarray, where: str
) -> sp.csc_matrix:
    """Columns ``columns`` of ``matrix`` as canonical float64 CSC (finite, checked)."""
    if sp.issparse(matrix):
        selected = sp.csc_matrix(matrix[:, columns], dtype=np.float64)
        selected.sum_duplicates()
    else:
        if not np.issubdtype(np.asarray(matrix).dtype, np.number):
            raise SpatiomeInputError(f"{where} must be numeric, got dtype {matrix.dtype}")
        selected = sp.csc_matrix(np.asarray(matrix[:, columns], dtype=np.float64))
    check_finite(selected, where=where)
    return selected


def _positive_spots(
    selected: sp.csc_matrix, members: list[list[int]], complex_policy: str
) -> np.ndarray:
    """Spots where each entity's stored value is positive (every subunit's, for "min")."""
    positive = np.empty(len(members), dtype=np.int64)
    for entity, genes in enumerate(members):
        parts = [selected[:, g] for g in genes]
        if len(parts) == 1:
            combined = parts[0]
        elif complex_policy == "min":
            combined = parts[0]
            for part in parts[1:]:
                combined = combined.minimum(part)
        else:
            combined = sum(parts[1:], parts[0])
        positive[entity] = int((combined > 0).sum())
    return positive


def _entity_moments(recipe: _Recipe, n_entities: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale sqrt(sum (v - mean)^2 / n) of every entity's values."""
    means = np.empty(n_entities)
    scales = np.empty(n_entities)
    width = max(1, CHUNK_ENTRIES // max(n, 1))
    for start in range(0, n_entities, width):
        columns = np.arange(start, min(start + width, n_entities))
        block = recipe.values(columns, n)
        mean = block.mean(axis=0)
        block -= mean
        means[columns] = mean
        scales[columns] = np.sqrt(np.einsum("ij,ij->j", block, block) / n)
    # Treat numerically constant entities as constant (no spatial information).
    scales[scales <= 1e-12 * np.maximum(np.abs(means), 1.0)] = 0.0
    return means, scales


@numba.njit(cache=True, nogil=True)
def _fill_entities(
    indptr,
    indices,
    data,
    member_indptr,
    members,
    minimum,
    size,
    fraction,
    inverse_theta,
    clip,
    columns,
    out,
):  # pragma: no cover - compiled
    # Every entity from its genes' stored values (or their Pearson residuals when ``size``
    # holds the library sizes); a complex is the minimum or mean over its subunits.
    n = out.shape[0]
    pearson = size.size > 0
    values = np.empty(n)
    for c in range(columns.size):
        entity = columns[c]
        first, last = member_indptr[entity], member_indptr[entity + 1]
        for s in range(first, last):
            gene = members[s]
            if pearson:
                share = fraction[gene]
                for i in range(n):
                    values[i] = _residual(0.0, size[i] * share, inverse_theta, clip)
                for e in range(indptr[gene], indptr[gene + 1]):
                    i = indices[e]
                    values[i] = _residual(data[e], size[i] * share, inverse_theta, clip)
            else:
                values[:] = 0.0
                for e in range(indptr[gene], indptr[gene + 1]):
                    values[indices[e]] = data[e]
            if s == first:
                out[:, c] = values
            elif minimum:
                for i in range(n):
                    out[i, c] = min(out[i, c], values[i])
            else:
                for i in range(n):
                    out[i, c] += values[i]
        if not minimum and last - first > 1:
            for i in range(n):
                out[i, c] /= last - first


@numba.njit(cache=True, nogil=True, inline="always")
def _residual(count, expected, inverse_theta, clip):  # pragma: no cover - compiled
    # Analytic Pearson residual of a negative binomial count (0 where nothing is expected).
    if expected <= 0.0:
        return 0.0
    value = (count - expected) / np.sqrt(expected + expected * expected * inverse_theta)
    return min(max(value, -clip), clip)


def _dense_centred(entities: _Entities, columns: np.ndarray) -> np.ndarray:
    """Entities ``columns`` centred, as a Fortran-ordered (n, k) array."""
    n = entities.recipe.genes.shape[0]
    block = entities.recipe.values(np.asarray(columns, dtype=np.int64), n)
    block -= entities.means[columns]
    return block


def _block_seeds(random_state: Any, n_permutations: int) -> np.ndarray:
    rng = check_random_state(random_state)
    n_blocks = -(-n_permutations // PERMUTATION_BLOCK)
    return rng.integers(0, np.iinfo(np.int64).max, size=n_blocks)


def _permutations(seed: int, n_obs: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n_obs) for _ in range(size)])


def _chunk_statistics(
    entities: _Entities,
    graph: _Graph,
    chunk: np.ndarray,
    ligands: np.ndarray,
    columns: np.ndarray,
    seeds: np.ndarray,
    n_permutations: int,
    two_tailed: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Per pair of the chunk: z'Wz numerator, cross and fourth sums, permutation counts.

    The receptors of ``chunk`` are made dense and multiplied by W once; the pairs' ligands
    follow in dense blocks of the same size, so memory stays O(n x chunk).
    """
    centred = _dense_centred(entities, chunk)
    spatial = np.asfortranarray(graph.matrix @ centred)
    n = centred.shape[0]
    sums = np.empty((ligands.size, 3))
    extreme = np.full(ligands.size, np.nan)
    distinct = np.unique(ligands)
    width = max(1, CHUNK_ENTRIES // n)
    for start in range(0, distinct.size, width):
        part = distinct[start : start + width]
        members = np.flatnonzero(np.isin(ligands, part))
        ligand_block = _dense_centred(entities, part)
        ligand_columns = np.searchsorted(part, ligands[members])
        part_sums = np.empty((members.size, 3))
        _pair_sums(ligand_block, ligand_columns, centred, spatial, columns[members], part_sums)
        sums[members] = part_sums
        if n_permutations:
            scale = entities.scales[ligands[members]] * entities.scales[chunk[columns[members]]]
            extreme[members] = _permutation_counts(
                ligand_block,
                ligand_columns,
                centred,
                columns[members],
                graph,
                part_sums[:, 0] / scale,
                part_sums[:, 1] / scale,
                scale,
                seeds,
                n_permutations,
                two_tailed,
            )
    return sums, extreme


def _permutation_counts(
    ligand_block: np.ndarray,
    ligand_columns: np.ndarray,
    centred: np.ndarray,
    receptor_columns: np.ndarray,
    graph: _Graph,
    observed: np.ndarray,
    cross: np.ndarray,
    scale: np.ndarray,
    seeds: np.ndarray,
    n_permutations: int,
    two_tailed: bool,
) -> np.ndarray:
    """How many of the shared permutations give a statistic at least as extreme."""
    n = centred.shape[0]
    expected, _ = permutation_moments(graph, cross, np.zeros(observed.size), n)
    extreme = np.zeros(observed.size)
    tolerance = 1e-9 * (np.abs(observed) + 1e-12 * n)
    null = np.empty(observed.size)
    done = 0
    for seed in seeds:
        size = min(PERMUTATION_BLOCK, n_permutations - done)
        for order in _permutations(int(seed), n, size):
            moved = np.asfortranarray(graph.matrix @ centred[order])
            _permuted_sums(ligand_block, ligand_columns, moved, receptor_columns, order, null)
            null /= scale
            if two_tailed:
                extreme += np.abs(null - expected) >= np.abs(observed - expected) - tolerance
            else:
                extreme += null >= observed - tolerance
        done += size
    return extreme


@numba.njit(cache=True, nogil=True)
def _pair_sums(
    ligand_block, ligand_columns, centred, spatial, receptor_columns, out
):  # pragma: no cover - compiled
    # Per pair: sum x (W y), sum x y and sum x^2 y^2 over the spots (x, y centred).
    n = centred.shape[0]
    for p in range(ligand_columns.size):
        a = ligand_columns[p]
        b = receptor_columns[p]
        numerator = 0.0
        cross = 0.0
        fourth = 0.0
        for i in range(n):
            x = ligand_block[i, a]
            product = x * centred[i, b]
            numerator += x * spatial[i, b]
            cross += product
            fourth += product * product
        out[p, 0] = numerator
        out[p, 1] = cross
        out[p, 2] = fourth


@numba.njit(cache=True, nogil=True)
def _permuted_sums(
    ligand_block, ligand_columns, moved, receptor_columns, order, out
):  # pragma: no cover - compiled
    # sum_i x_order(i) (W y_order)_i: ligand and receptor profiles move together.
    n = moved.shape[0]
    for p in range(ligand_columns.size):
        a = ligand_columns[p]
        b = receptor_columns[p]
        total = 0.0
        for i in range(n):
            total += ligand_block[order[i], a] * moved[i, b]
        out[p] = total


def _table(
    pairs: pd.DataFrame,
    entities: _Entities,
    graph: _Graph,
    values: np.ndarray,
    n: int,
    n_permutations: int,
    two_tailed: bool,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    lig = pairs["ligand_entity"].to_numpy()
    rec = pairs["receptor_entity"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = entities.scales[lig] * entities.scales[rec]
        numerator = values[:, 0] / scale
        cross = values[:, 1] / scale
        fourth = values[:, 2] / (scale * scale)
        expected, variance = permutation_moments(graph, cross, fourth, n)
        zscore = (numerator - expected) / np.sqrt(variance)
    if two_tailed:
        log_p = np.minimum(np.log(2.0) + stats.norm.logsf(np.abs(zscore)), 0.0)
    else:
        log_p = stats.norm.logsf(zscore)
    analytic = np.maximum(np.exp(log_p), PVALUE_FLOOR)
    table = pd.DataFrame(
        {
            "ligand": pairs["ligand"].to_numpy(),
            "receptor": pairs["receptor"].to_numpy(),
            "ligand_complex": pairs["ligand_complex"].to_numpy(dtype=bool),
            "receptor_complex": pairs["receptor_complex"].to_numpy(dtype=bool),
            "score": numerator / graph.s0,
            "expected": expected / graph.s0,
            "zscore": zscore,
            "pvalue_analytic": analytic,
            "log10_pvalue_analytic": log_p / np.log(10.0),
        }
    )
    pvalue = analytic
    if n_permutations:
        pvalue = (values[:, 3] + 1.0) / (n_permutations + 1.0)
        table["pvalue_perm"] = pvalue
    table["pvalue"] = pvalue
    table["qvalue"] = bh_adjust(pvalue)
    table["ligand_cells"] = entities.n_cells[lig]
    table["receptor_cells"] = entities.n_cells[rec]
    order = np.lexsort((-np.nan_to_num(table["score"].to_numpy(), nan=-np.inf), pvalue))
    table = table.iloc[order].reset_index(drop=True)
    table.attrs = dict(pairs.attrs)
    return table, lig[order], rec[order]


def _standardized(entities: _Entities, columns: np.ndarray) -> np.ndarray:
    """Entities ``columns`` standardized (sum of squares n), as a C-ordered (n, k) array."""
    block = _dense_centred(entities, columns)
    with np.errstate(divide="ignore", invalid="ignore"):
        block = block / entities.scales[columns]
    block[:, entities.scales[columns] == 0] = 0.0
    return np.ascontiguousarray(block)


def _local_frame(
    adata: AnnData,
    entities: _Entities,
    graph: _Graph,
    table: pd.DataFrame,
    lig: np.ndarray,
    rec: np.ndarray,
    *,
    symmetric: bool,
) -> pd.DataFrame:
    z_l = _standardized(entities, lig)
    z_r = _standardized(entities, rec)
    local = z_l * (graph.matrix @ z_r)
    if symmetric:
        local = 0.5 * (local + z_r * (graph.matrix @ z_l))
    names = [f"{a}^{b}" for a, b in zip(table["ligand"], table["receptor"], strict=True)]
    return pd.DataFrame(local.astype(np.float32), index=adata.obs_names.copy(), columns=names)


def _group_table(
    adata: AnnData,
    groups: str,
    entities: _Entities,
    graph: _Graph,
    table: pd.DataFrame,
    lig: np.ndarray,
    rec: np.ndarray,
    seeds: np.ndarray,
    n_permutations: int,
    two_tailed: bool,
    n_jobs: int,
    client: Any | None,
) -> pd.DataFrame:
    """Sender group x receiver group scores of every tested pair, with within-group nulls.

    Pairs are processed in blocks (their standardized ligands and receptors dense, at most
    ``CHUNK_ENTRIES`` values each), so memory does not grow with the number of pairs.
    """
    if groups not in adata.obs.columns:
        raise SpatiomeInputError(
            f"groups={groups!r} is not a column of adata.obs (columns: {list(adata.obs.columns)})"
        )
    labels = pd.Categorical(adata.obs[groups])
    codes = np.asarray(labels.codes, dtype=np.int64)
    names = list(labels.categories.astype(str))
    n_groups = len(names)
    w = graph.matrix
    source = np.repeat(codes, np.diff(w.indptr))
    target = codes[w.indices]
    labelled = (source >= 0) & (target >= 0)
    edge_weight = np.bincount(
        source[labelled] * n_groups + target[labelled],
        weights=w.data[labelled],
        minlength=n_groups * n_groups,
    )
    members = [np.flatnonzero(codes == g) for g in range(n_groups)]

    def run_block(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        z_l = _standardized(entities, lig[start:stop])
        z_r = _standardized(entities, rec[start:stop])
        observed = np.zeros((n_groups * n_groups, stop - start))
        _group_sums(w.indptr, w.indices, w.data, codes, n_groups, z_l, z_r, observed)
        extreme = np.full(observed.shape, np.nan)
        if n_permutations:
            extreme = _group_permutation_counts(
                w, codes, n_groups, members, z_l, z_r, observed, seeds, n_permutations, two_tailed
            )
        return observed, extreme

    width = max(1, CHUNK_ENTRIES // max(adata.n_obs, 1))
    if n_jobs > 1:
        width = min(width, max(1, -(-lig.size // (4 * n_jobs))))
    blocks = map_gene_chunks(run_block, lig.size, chunk_size=width, n_jobs=n_jobs, client=client)
    observed = np.concatenate([b[0] for b in blocks], axis=1) if blocks else np.zeros((0, 0))
    extreme = np.concatenate([b[1] for b in blocks], axis=1) if blocks else np.zeros((0, 0))
    observed = observed.reshape(n_groups * n_groups, lig.size)
    extreme = extreme.reshape(n_groups * n_groups, lig.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = observed / edge_weight[:, None]
    sender, receiver = np.divmod(np.arange(n_groups * n_groups), n_groups)
    frame = pd.DataFrame(
        {
            "ligand": np.tile(table["ligand"].to_numpy(), n_groups * n_groups),
            "receptor": np.tile(table["receptor"].to_numpy(), n_groups * n_groups),
            "sender": np.repeat(np.array(names, dtype=object)[sender], lig.size),
            "receiver": np.repeat(np.array(names, dtype=object)[receiver], lig.size),
            "score": score.ravel(),
            "edge_weight": np.repeat(edge_weight, lig.size),
        }
    )
    if n_permutations:
        pvalue = (extreme.ravel() + 1.0) / (n_permutations + 1.0)
        pvalue[frame["edge_weight"].to_numpy() == 0] = np.nan
        frame["pvalue"] = pvalue
        frame["qvalue"] = bh_adjust(pvalue)
        frame = frame.sort_values(["pvalue", "score"], ascending=[True, False], kind="mergesort")
    else:
        frame = frame.sort_values("score", ascending=False, kind="mergesort")
    frame = frame[frame["edge_weight"] > 0].reset_index(drop=True)
    return frame


def _group_permutation_counts(
    w: sp.csr_matrix,
    codes: np.ndarray,
    n_groups: int,
    members: list[np.ndarray],
    z_l: np.ndarray,
    z_r: np.ndarray,
    observed: np.ndarray,
    seeds: np.ndarray,
    n_permutations: int,
    two_tailed: bool,
) -> np.ndarray:
    """Permutations of the spots' profiles within each group at least as extreme."""
    extreme = np.zeros(observed.shape)
    null = np.empty_like(observed)
    tolerance = 1e-9 * (np.abs(observed) + 1e-12)
    done = 0
    for seed in seeds:
        rng = np.random.default_rng(int(seed))
        size = min(PERMUTATION_BLOCK, n_permutations - done)
        for _ in range(size):
            order = np.arange(codes.size)
            for index in members:
                order[index] = index[rng.permutation(index.size)]
            null[:] = 0.0
            _group_sums(w.indptr, w.indices, w.data, codes, n_groups, z_l[order], z_r[order], null)
            if two_tailed:
                extreme += np.abs(null) >= np.abs(observed) - tolerance
            else:
                extreme += null >= observed - tolerance
        done += size
    return extreme


@numba.njit(cache=True, nogil=True)
def _group_sums(indptr, indices, data, codes, n_groups, z_l, z_r, out):  # pragma: no cover
    # Every edge i -> j adds w_ij z_l,i z_r,j to the (group of i, group of j) row.
    n_pairs = z_l.shape[1]
    for i in range(indptr.size - 1):
        gi = codes[i]
        if gi < 0:
            continue
        for e in range(indptr[i], indptr[i + 1]):
            j = indices[e]
            gj = codes[j]
            if gj < 0:
                continue
            row = gi * n_groups + gj
            w = data[e]
            for p in range(n_pairs):
                out[row, p] += w * z_l[i, p] * z_r[j, p]
