"""The genes that define each domain: Wilcoxon tests (scanpy) and BISON's discriminating genes."""

from __future__ import annotations

import logging
import warnings
from numbers import Integral

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData

from .._core.near_empty import warn_near_empty
from .._core.validate import SpatiomeInputError, check_adata, get_matrix
from ._wilcoxon import benjamini_hochberg, group_rank_sums, one_vs_rest, ranked_genes

logger = logging.getLogger("spatiome")

_TESTS = ("wilcoxon", "t-test", "t-test_overestim_var", "logreg")


def markers(
    adata: AnnData,
    groupby: str,
    *,
    method: str = "wilcoxon",
    layer: str | None = None,
    bison_key: str | None = None,
    min_fraction: float = 0.0,
    min_spots: int = 3,
    key_added: str | None = None,
) -> pd.DataFrame:
    """Rank the genes that distinguish each domain from the rest of the tissue.

    Gives the result of :func:`scanpy.tl.rank_genes_groups` (one group against all the
    others, all genes, Benjamini-Hochberg adjusted p-values, ``pts=True`` for the fraction
    of spots expressing each gene inside and outside the domain) on the log-normalized
    expression of the labelled spots (spots with a missing label are left out). The t-tests
    and the logistic regression call scanpy. The Wilcoxon test (the default) is computed
    here, with the same numbers as scanpy's (no tie correction; z-scores and p-values
    equal to the last bit) from one pass over the sparse matrix: each gene's non-zeros are
    sorted once and all zeros share one tied rank, so the time grows with the number of
    non-zero values and the extra memory stays bounded (about 0.6 GB for float32 data,
    whatever the matrix size; timings against scanpy in ``benchmarks/markers.py``).

    When BISON ran (``bison_key``, or ``"bison"`` when its columns are in ``adata.var``),
    its per-gene posterior probability of being discriminating and its gene group are
    joined to the table, so the data-driven test and the model's feature selection can be
    read side by side.

    A domain is tested only when it and the rest of the labelled spots both hold at least
    ``min_spots`` spots. Smaller domains are skipped with a warning and listed in the
    table's ``attrs`` (their spots stay in the "rest" of the other domains' comparisons,
    except for ``"logreg"``, which fits on the tested domains only). A rank test cannot say
    much about a handful of spots: even a gene expressed in every spot of the domain and in
    no other spot reaches a two-sided Wilcoxon p-value of at best about 0.08 with one spot,
    0.014 with two and 0.003 with three, before any correction for testing every gene.

    Parameters
    ----------
    adata
        Normalized data (see :func:`spatiome.pp.normalize`) with domain labels in
        ``adata.obs[groupby]``.
    groupby
        Categorical column of ``adata.obs`` with the domains (at least two).
    method
        scanpy's test: ``"wilcoxon"`` (default), ``"t-test"``, ``"t-test_overestim_var"``
        or ``"logreg"``.
    layer
        Layer to test instead of ``adata.X``.
    bison_key
        ``key_added`` of :func:`spatiome.domains.bison` whose gene columns to join.
    min_fraction
        Keep only genes expressed in at least this fraction of the domain's spots.
    min_spots
        Smallest number of spots (at least 2, scanpy's limit) in a tested domain and in the
        rest of the tissue.
    key_added
        ``adata.uns`` key of scanpy's result (default ``f"rank_genes_groups_{groupby}"``),
        which :func:`scanpy.pl.rank_genes_groups_dotplot` and friends read.

    Returns
    -------
    pandas.DataFrame
        One row per domain and gene, ranked within each domain: ``domain``, ``gene``,
        ``score``, ``logfoldchange``, ``pval``, ``qval``, ``fraction_in``,
        ``fraction_out`` and, with BISON, ``bison_prob_discriminating`` and
        ``bison_gene_group``. ``table.attrs`` holds ``"min_spots"``,
        ``"skipped_domains"`` (domain -> number of spots, for the domains too small to test)
        and ``"note"`` (a sentence naming them, empty when none was skipped); the same
        record goes to ``adata.uns["spatiome"][key_added]``.

    Examples
    --------
    >>> import spatiome as sm
    >>> adata = sm.datasets.simulate_tissue(n_spots=400, n_genes=60, n_domains=3,
    ...                                     random_state=0)
    >>> sm.pp.normalize(adata)
    >>> table = sm.domains.markers(adata, "domain")
    >>> sorted(table["domain"].unique())
    ['Layer1', 'Layer2', 'Layer3']
    >>> bool((table.groupby("domain")["qval"].min() < 0.05).all())
    True

    A domain of one spot is left out instead of stopping the analysis:

    >>> import warnings
    >>> adata.obs["with_single"] = adata.obs["domain"].cat.add_categories("lone")
    >>> adata.obs.loc[adata.obs_names[0], "with_single"] = "lone"
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     table = sm.domains.markers(adata, "with_single")
    >>> table.attrs["skipped_domains"], sorted(table["domain"].unique())
    ({'lone': 1}, ['Layer1', 'Layer2', 'Layer3'])
    """
    check_adata(adata)
    labels = _domain_labels(adata, groupby)
    if method not in _TESTS:
        raise SpatiomeInputError(f"method must be one of {_TESTS}, got {method!r}")
    if not 0.0 <= float(min_fraction) <= 1.0:
        raise SpatiomeInputError(f"min_fraction must be in [0, 1], got {min_fraction!r}")
    if isinstance(min_spots, bool) or not isinstance(min_spots, Integral) or min_spots < 2:
        raise SpatiomeInputError(
            f"min_spots must be an integer of at least 2 (a rank test needs two spots on "
            f"each side), got {min_spots!r}"
        )
    min_spots = int(min_spots)
    warn_near_empty(adata, layer=layer, caller="domains.markers")
    matrix = get_matrix(adata, layer)
    labelled = ~pd.isna(labels)
    uns_key = key_added or f"rank_genes_groups_{groupby}"
    sizes = pd.Series(labels[labelled]).value_counts().reindex(labels.categories)
    testable = ((sizes >= min_spots) & (sizes.sum() - sizes >= min_spots)).to_numpy()
    if method == "logreg" and testable.sum() < 2:
        testable[:] = False  # a logistic regression needs two tested domains
    tested = [str(c) for c in sizes.index[testable]]
    skipped = {str(c): int(n) for c, n in sizes[~testable].items()}
    note = _skip_note(skipped, min_spots, method)
    adata.uns.setdefault("spatiome", {})
    adata.uns["spatiome"][uns_key] = {
        "groupby": groupby,
        "method": method,
        "min_spots": min_spots,
        "skipped_domains": skipped,
    }
    if note:
        warnings.warn(f"markers: {note}", UserWarning, stacklevel=2)
    if not tested:
        adata.uns.pop(uns_key, None)  # no stale result of an earlier call stays behind
        return _with_attrs(_empty_table(adata, bison_key), min_spots, skipped, note)
    if method == "wilcoxon":
        result, table = _wilcoxon(matrix, labels, tested, adata.var_names, groupby)
    else:
        result, table = _scanpy_test(
            matrix, labels, labelled, tested, adata, groupby, method, uns_key, bool(skipped)
        )
    adata.uns[uns_key] = result
    table = _join_bison(table, adata, bison_key)
    if min_fraction > 0:
        table = table[table["fraction_in"] >= min_fraction]
    table["domain"] = table["domain"].astype(str)
    table = table.reset_index(drop=True)
    logger.info("markers: %d domains ranked by %s", len(tested), method)
    return _with_attrs(table, min_spots, skipped, note)


def _wilcoxon(
    matrix: sp.csr_matrix | np.ndarray,
    labels: pd.Categorical,
    tested: list[str],
    var_names: pd.Index,
    groupby: str,
) -> tuple[dict, pd.DataFrame]:
    """scanpy's one-vs-rest Wilcoxon result (``uns`` record and table) from rank sums.

    The numbers equal ``scanpy.tl.rank_genes_groups(method="wilcoxon", pts=True)`` on the
    labelled spots (the z-scores and p-values bit for bit), computed in one sparse pass
    instead of one dense rank matrix per gene chunk and one submatrix per domain.
    """
    sums = group_rank_sums(
        sp.csr_matrix(matrix) if not sp.issparse(matrix) else matrix,
        labels.codes,
        labels.categories.size,
    )
    columns: dict[str, dict[str, np.ndarray]] = {name: {} for name in _RECORD_DTYPES}
    pts, pts_rest, pieces = {}, {}, []
    for name in tested:
        statistics = one_vs_rest(sums, int(labels.categories.get_loc(name)))
        order = ranked_genes(statistics["scores"])
        ranked = {
            "names": np.asarray(var_names[order], dtype=object),
            "scores": statistics["scores"][order],
            "logfoldchanges": statistics["logfoldchanges"][order],
            "pvals": statistics["pvals"][order],
            "pvals_adj": benjamini_hochberg(statistics["pvals"])[order],
        }
        for column, values in ranked.items():
            columns[column][name] = values
        pts[name], pts_rest[name] = statistics["pts"], statistics["pts_rest"]
        pieces.append(_ranked_table(name, ranked, statistics, order))
    result = {
        "params": {
            "groupby": groupby,
            "reference": "rest",
            "method": "wilcoxon",
            "use_raw": False,
            "layer": None,
            "corr_method": "benjamini-hochberg",
        },
        "pts": pd.DataFrame(pts, index=var_names.copy()),
        "pts_rest": pd.DataFrame(pts_rest, index=var_names.copy()),
    }
    for column, dtype in _RECORD_DTYPES.items():
        result[column] = pd.DataFrame(columns[column]).to_records(index=False, column_dtypes=dtype)
    return result, pd.concat(pieces, ignore_index=True)


def _ranked_table(
    domain: str,
    ranked: dict[str, np.ndarray],
    statistics: dict[str, np.ndarray],
    order: np.ndarray,
) -> pd.DataFrame:
    """One domain's rows, as :func:`scanpy.get.rank_genes_groups_df` gives them."""
    return pd.DataFrame(
        {
            "domain": domain,
            "gene": ranked["names"],
            "score": ranked["scores"].astype(np.float32),
            "logfoldchange": ranked["logfoldchanges"].astype(np.float32),
            "pval": ranked["pvals"],
            "qval": ranked["pvals_adj"],
            "fraction_in": statistics["pts"][order],
            "fraction_out": statistics["pts_rest"][order],
        }
    )


def _scanpy_test(
    matrix: sp.csr_matrix | np.ndarray,
    labels: pd.Categorical,
    labelled: np.ndarray,
    tested: list[str],
    adata: AnnData,
    groupby: str,
    method: str,
    uns_key: str,
    subset: bool,
) -> tuple[dict, pd.DataFrame]:
    """scanpy's ``rank_genes_groups`` (t-tests, logistic regression) and its table."""
    obs_names = adata.obs_names
    if not labelled.all():
        # Spots a method left unlabelled (for example filtered by BISON) are not compared.
        matrix, labels, obs_names = matrix[labelled], labels[labelled], obs_names[labelled]
    # scanpy reads the groups from obs and writes only to uns[uns_key]; it runs on a
    # lightweight object so nothing else in the user's AnnData changes.
    view = AnnData(X=matrix, obs=pd.DataFrame({groupby: labels}, index=obs_names.copy()))
    view.var_names = adata.var_names.copy()
    view.uns["log1p"] = {"base": None}
    sc.tl.rank_genes_groups(
        view,
        groupby,
        groups=tested if subset else "all",
        method=method,
        n_genes=adata.n_vars,
        pts=True,
        key_added=uns_key,
    )
    table = sc.get.rank_genes_groups_df(view, group=None, key=uns_key)
    table = table.rename(columns=_SCANPY_COLUMNS)
    if "domain" not in table.columns:  # a single group comes back without the column
        table.insert(0, "domain", tested[0])
    return view.uns[uns_key], table


_SCANPY_COLUMNS = {
    "group": "domain",
    "names": "gene",
    "scores": "score",
    "logfoldchanges": "logfoldchange",
    "pvals": "pval",
    "pvals_adj": "qval",
    "pct_nz_group": "fraction_in",
    "pct_nz_reference": "fraction_out",
}
#: scanpy's record arrays in ``uns``, in its key order, with the dtypes it stores.
_RECORD_DTYPES = {
    "names": "O",
    "scores": "float32",
    "pvals": "float64",
    "pvals_adj": "float64",
    "logfoldchanges": "float32",
}


_COLUMNS = (
    "domain", "gene", "score", "logfoldchange", "pval", "qval", "fraction_in", "fraction_out",
)  # fmt: skip


def _skip_note(skipped: dict[str, int], min_spots: int, method: str) -> str:
    if not skipped:
        return ""
    listed = ", ".join(
        f"{domain!r} ({size} spot{'s' if size != 1 else ''})" for domain, size in skipped.items()
    )
    need = (
        "logreg needs two domains"
        if method == "logreg" and len(skipped) > 0 and max(skipped.values()) >= min_spots
        else "a domain and the rest of the tissue need"
    )
    return (
        f"{len(skipped)} domain(s) not tested: {listed}; {need} at least "
        f"min_spots={min_spots} spots each"
    )


def _with_attrs(
    table: pd.DataFrame, min_spots: int, skipped: dict[str, int], note: str
) -> pd.DataFrame:
    table.attrs.update(min_spots=min_spots, skipped_domains=dict(skipped), note=note)
    return table


def _empty_table(adata: AnnData, bison_key: str | None) -> pd.DataFrame:
    table = pd.DataFrame({name: pd.Series(dtype=float) for name in _COLUMNS})
    table["domain"] = table["domain"].astype(str)
    table["gene"] = table["gene"].astype(str)
    return _join_bison(table, adata, bison_key).reset_index(drop=True)


def top_markers(table: pd.DataFrame, n_genes: int = 5, *, max_qval: float = 0.05) -> dict:
    """The first ``n_genes`` significant up-regulated genes of each domain in a markers table.

    Parameters
    ----------
    table
        Output of :func:`markers`.
    n_genes
        Genes per domain.
    max_qval
        Largest adjusted p-value kept.

    Returns
    -------
    dict
        Domain -> list of gene names (possibly empty), in the table's domain order.

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"domain": ["a", "a", "b"], "gene": ["g1", "g2", "g3"],
    ...                       "score": [5.0, -2.0, 3.0], "logfoldchange": [2.0, -1.0, 1.0],
    ...                       "qval": [0.001, 0.01, 0.2]})
    >>> top_markers(table, 2)
    {'a': ['g1'], 'b': []}
    """
    if n_genes < 1:
        raise SpatiomeInputError(f"n_genes must be at least 1, got {n_genes}")
    selected = table[(table["qval"] <= max_qval) & (table["logfoldchange"] > 0)]
    result = {}
    for domain in pd.unique(table["domain"]):
        genes = selected.loc[selected["domain"] == domain, "gene"].head(n_genes)
        result[domain] = genes.astype(str).tolist()
    return result


def _domain_labels(adata: AnnData, groupby: str) -> pd.Categorical:
    if groupby not in adata.obs:
        raise SpatiomeInputError(
            f"adata.obs[{groupby!r}] is missing: run a domain method first (for example "
            f"spatiome.domains.cluster(adata, n_domains)) or pass groupby= one of "
            f"{list(adata.obs.columns)}"
        )
    labels = pd.Categorical(adata.obs[groupby].astype("category"))
    labels = labels.remove_unused_categories()
    if labels.categories.size < 2:
        raise SpatiomeInputError(
            f"adata.obs[{groupby!r}] has {labels.categories.size} domain(s): markers need at "
            "least two"
        )
    return labels.rename_categories([str(c) for c in labels.categories])


def _join_bison(table: pd.DataFrame, adata: AnnData, bison_key: str | None) -> pd.DataFrame:
    key = bison_key or "bison"
    probability = f"{key}_prob_discriminating"
    if probability not in adata.var:
        if bison_key is not None:
            raise SpatiomeInputError(
                f"adata.var[{probability!r}] is missing: run spatiome.domains.bison(adata, "
                f"..., key_added={bison_key!r}) first or leave bison_key=None"
            )
        return table
    columns = {probability: "bison_prob_discriminating"}
    if f"{key}_gene_group" in adata.var:
        columns[f"{key}_gene_group"] = "bison_gene_group"
    extra = adata.var[list(columns)].rename(columns=columns)
    extra.index = extra.index.astype(str)
    return table.join(extra, on="gene")
