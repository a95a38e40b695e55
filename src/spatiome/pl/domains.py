"""Domain markers as a dot plot or heatmap, and gene-module scores on the tissue."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from matplotlib.figure import Figure

from .._core.validate import SpatiomeInputError, check_adata, get_matrix, get_spatial
from ._points import MAX_POINTS
from .spatial import (
    _category_colors,
    _default_spot_size,
    natural_key,
    observation_noun,
    spatial,
)

#: The label of genes in no module: left unassigned, or alone in a "module" of one gene.
UNASSIGNED = "unassigned"
#: Module labels that mean "in no module".
_NO_MODULE = frozenset({"-1", "unassigned", "nan", "none", "<na>", ""})


def markers(
    adata: AnnData,
    table: pd.DataFrame,
    groupby: str,
    *,
    n_genes: int = 3,
    kind: str = "dotplot",
    layer: str | None = None,
    max_qval: float = 0.05,
    cmap: str = "Reds",
) -> Figure:
    """Dot plot or heatmap of the top marker genes of each domain.

    Dot plot: dot size is the fraction of the domain's spots expressing the gene, colour the
    mean expression scaled to [0, 1] per gene. Heatmap: the mean expression per domain
    z-scored per gene. Genes are the first ``n_genes`` significant up-regulated genes of
    each domain in ``table`` (see :func:`spatiome.domains.markers`), in domain order. Each
    domain's label sits on its colour in :func:`spatiome.pl.spatial`.

    Parameters
    ----------
    adata
        Normalized data with ``adata.obs[groupby]``.
    table
        Output of :func:`spatiome.domains.markers`.
    groupby
        Domain column of ``adata.obs``.
    n_genes
        Markers per domain.
    kind
        ``"dotplot"`` or ``"heatmap"``.
    layer
        Layer to average instead of ``adata.X``.
    max_qval
        Largest adjusted p-value of a shown marker.
    cmap
        Colour map.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> import spatiome as sm
    >>> adata = sm.datasets.simulate_tissue(n_spots=400, n_genes=60, n_domains=3,
    ...                                     random_state=0)
    >>> sm.pp.normalize(adata)
    >>> table = sm.domains.markers(adata, "domain")
    >>> fig = sm.pl.markers(adata, table, "domain", n_genes=2)
    >>> len(fig.axes) >= 1
    True
    >>> plt.close(fig)
    """
    from ..domains.markers import _domain_labels, top_markers

    check_adata(adata)
    if kind not in ("dotplot", "heatmap"):
        raise SpatiomeInputError(f"kind must be 'dotplot' or 'heatmap', got {kind!r}")
    labels = _domain_labels(adata, groupby)
    chosen = top_markers(table, n_genes, max_qval=max_qval)
    genes = list(dict.fromkeys(g for domain_genes in chosen.values() for g in domain_genes))
    if not genes:
        raise SpatiomeInputError(
            f"no marker has qval <= {max_qval} and a positive fold change: raise max_qval"
        )
    matrix = get_matrix(adata, layer)
    labelled = ~pd.isna(labels)
    if not labelled.all():
        matrix, labels = matrix[labelled], labels[labelled]
    means, fractions = _domain_summaries(matrix, labels, adata, genes)
    domains = [str(c) for c in labels.categories]
    width = 1.6 + 0.42 * len(genes)
    fig, ax = plt.subplots(figsize=(max(width, 3.5), 1.0 + 0.42 * len(domains)))
    if kind == "dotplot":
        low, high = means.min(axis=0), means.max(axis=0)
        scaled = (means - low) / np.where(high > low, high - low, 1.0)
        ys, xs = np.meshgrid(np.arange(len(domains)), np.arange(len(genes)), indexing="ij")
        points = ax.scatter(
            xs.ravel(), ys.ravel(), s=20 + 280 * fractions.ravel(), c=scaled.ravel(),
            cmap=cmap, vmin=0, vmax=1, edgecolors="0.3", linewidths=0.4,
        )  # fmt: skip
        fig.colorbar(points, ax=ax, label="scaled mean", shrink=0.8)
        for fraction in (0.25, 0.5, 1.0):
            ax.scatter([], [], s=20 + 280 * fraction, c="0.6", label=f"{fraction:.0%}")
        ax.legend(
            title=f"{observation_noun(adata)} expressing",
            loc="upper left",
            bbox_to_anchor=(1.25, 1.0),
            frameon=False,
        )
        ax.set_xlim(-0.6, len(genes) - 0.4)
        ax.set_ylim(len(domains) - 0.5, -0.5)
    else:
        spread = means.std(axis=0)
        z = (means - means.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
        image = ax.imshow(z, aspect="auto", cmap="RdBu_r", vmin=-2.5, vmax=2.5)
        fig.colorbar(image, ax=ax, label="z-score of domain mean", shrink=0.8)
    ax.set_xticks(range(len(genes)), genes, rotation=90)
    ax.set_yticks(range(len(domains)), domains)
    _color_labels(ax.get_yticklabels(), _domain_colors(adata, groupby))
    ax.set_xlabel("marker gene")
    ax.set_ylabel(groupby)
    fig.tight_layout()
    return fig


def module_scores(
    adata: AnnData,
    modules: Mapping[str, Sequence[str]] | str,
    *,
    layer: str | None = None,
    max_modules: int = 8,
    ncols: int = 4,
    spot_size: float | None = None,
    max_points: int | None = MAX_POINTS,
    random_state: int | None = 0,
) -> Figure:
    """Map each gene module's score (mean z-scored expression of its genes) on the tissue.

    Parameters
    ----------
    adata
        Normalized data with coordinates.
    modules
        Module name -> genes, or a column of ``adata.var`` holding each gene's module
        (for example ``"stihc_module"`` or ``"aeh_pattern"``): modules of two or more
        genes are drawn; missing values, ``-1``, ``"unassigned"`` and modules of one gene
        are not modules (see :func:`module_labels`).
    layer
        Layer to score instead of ``adata.X``.
    max_modules
        Largest number of modules shown (the largest modules first).
    ncols
        Panels per row.
    spot_size
        Marker size passed to :func:`spatiome.pl.spatial`.
    max_points, random_state
        Most spots drawn per panel and the seed of the subsample beyond (see
        :func:`spatiome.pl.spatial`).

    Returns
    -------
    matplotlib.figure.Figure
        The scores are also written to ``adata.obs[f"module_score_{name}"]``.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> import spatiome as sm
    >>> adata = sm.datasets.simulate_tissue(n_spots=300, n_genes=40, random_state=0)
    >>> sm.pp.normalize(adata)
    >>> fig = sm.pl.module_scores(adata, {"first": list(adata.var_names[:5])})
    >>> "module_score_first" in adata.obs
    True
    >>> plt.close(fig)
    """
    check_adata(adata)
    groups = _module_groups(adata, modules)
    if not groups:
        raise SpatiomeInputError("no module has genes in adata.var_names")
    groups = dict(sorted(groups.items(), key=lambda item: -len(item[1]))[:max_modules])
    # One column selection for all modules: each selection of a CSR matrix reads all of it.
    used = list(dict.fromkeys(g for genes in groups.values() for g in genes))
    matrix = get_matrix(adata, layer)[:, adata.var_names.get_indexer(used)]
    local = pd.Index(used)
    columns = []
    for name, genes in groups.items():
        adata.obs[f"module_score_{name}"] = _zscore_mean(matrix, local.get_indexer(genes))
        columns.append(f"module_score_{name}")
    if spot_size is None:
        spot_size = _default_spot_size(get_spatial(adata)[:, :2])
    n = len(columns)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 3.1 * nrows), squeeze=False)
    for ax, column, (name, genes) in zip(axes.ravel(), columns, groups.items(), strict=False):
        size = f"{len(genes)} gene{'s' if len(genes) != 1 else ''}"
        spatial(adata, column, ax=ax, spot_size=spot_size, cmap="magma",
                title=f"module {name} ({size})", max_points=max_points,
                random_state=random_state)  # fmt: skip
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def _domain_colors(adata: AnnData, groupby: str) -> dict[str, str]:
    """Each label of ``adata.obs[groupby]`` -> its colour in :func:`spatiome.pl.spatial`."""
    categories = pd.Categorical(adata.obs[groupby].astype("category")).categories
    colors = _category_colors(adata, groupby, categories)
    return {str(c): color for c, color in zip(categories, colors, strict=True)}


def _color_labels(labels, colors: Mapping[str, str]) -> None:
    """Put each tick label on its colour, in black or white, whichever reads better."""
    from matplotlib.colors import to_rgb

    for label in labels:
        color = colors.get(label.get_text())
        if color is None:
            continue
        red, green, blue = to_rgb(color)
        luminance = 0.299 * red + 0.587 * green + 0.114 * blue
        label.set_color("black" if luminance > 0.55 else "white")
        label.set_bbox({"boxstyle": "round,pad=0.2", "facecolor": color, "edgecolor": "none"})


def _domain_summaries(matrix, labels: pd.Categorical, adata: AnnData, genes: list[str]):
    positions = adata.var_names.get_indexer(genes)
    selected = matrix[:, positions]
    selected = selected.toarray() if sp.issparse(selected) else np.asarray(selected)
    selected = selected.astype(np.float64)
    codes = labels.codes
    n_domains = labels.categories.size
    sizes = np.bincount(codes, minlength=n_domains).astype(np.float64)[:, None]
    means = np.zeros((n_domains, len(genes)))
    fractions = np.zeros((n_domains, len(genes)))
    np.add.at(means, codes, selected)
    np.add.at(fractions, codes, (selected != 0).astype(np.float64))
    return means / sizes, fractions / sizes


def module_labels(
    column: pd.Series, genes: Sequence[str] | None = None, *, min_genes: int = 2
) -> pd.Series:
    """Module of each gene a module method grouped, as text ("3", not "3.0").

    Genes the method left in no module (``-1``, ``"unassigned"``) and genes alone in a
    module of fewer than ``min_genes`` genes are labelled ``"unassigned"``: a module of
    one gene is no co-expression module. Genes the method did not analyse (missing
    values) are dropped, unless they are in ``genes``, the genes it analysed, in which
    case they are unassigned too.

    Parameters
    ----------
    column
        Module of each gene, for example ``adata.var["stihc_module"]``.
    genes
        The genes the method analysed (for example the index of its result table);
        ``None``: those with a value in ``column``.
    min_genes
        Fewest genes of a module.

    Returns
    -------
    pandas.Series
        Text labels indexed by gene, in the order of ``column``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> column = pd.Series([1.0, np.nan, -1.0, 3.0, 1.0], index=list("abcde"))
    >>> module_labels(column).to_dict()
    {'a': '1', 'c': 'unassigned', 'd': 'unassigned', 'e': '1'}
    >>> module_labels(column, genes=["a", "b", "e"]).to_dict()
    {'a': '1', 'b': 'unassigned', 'e': '1'}
    """
    values = column
    if genes is not None:
        values = column[column.index.isin(list(genes))]
    else:
        values = column.dropna()
    if pd.api.types.is_numeric_dtype(values):
        numbers = pd.to_numeric(values, errors="coerce")
        labels = pd.Series(
            [str(int(v)) if pd.notna(v) and float(v) == int(v) else str(v) for v in numbers],
            index=values.index,
            dtype=object,
        )
    else:
        labels = values.astype(object).map(lambda v: "nan" if pd.isna(v) else str(v))
    labels = labels.where(~labels.str.casefold().isin(_NO_MODULE), UNASSIGNED)
    sizes = labels.map(labels.value_counts())
    labels = labels.where((sizes >= min_genes) | (labels == UNASSIGNED), UNASSIGNED)
    return labels.astype(str)


def module_sizes(labels: pd.Series) -> pd.Series:
    """Genes per module of :func:`module_labels`, modules in numeric order and
    ``"unassigned"`` last.

    Examples
    --------
    >>> import pandas as pd
    >>> labels = pd.Series(["10", "2", "unassigned", "2", "10", "10"])
    >>> module_sizes(labels).to_dict()
    {'2': 2, '10': 3, 'unassigned': 1}
    """
    sizes = labels.value_counts()
    order = sorted(sizes.index, key=lambda m: (m == UNASSIGNED, natural_key(m)))
    return sizes.reindex(order).rename("genes")


def _module_groups(adata: AnnData, modules) -> dict[str, list[str]]:
    if isinstance(modules, str):
        if modules not in adata.var:
            raise SpatiomeInputError(
                f"adata.var[{modules!r}] is missing: run a module method (for example "
                "spatiome.modules.stihc) or pass a dict of module -> genes"
            )
        groups: dict[str, list[str]] = {}
        for gene, module in module_labels(adata.var[modules]).items():
            if module != UNASSIGNED:
                groups.setdefault(module, []).append(str(gene))
        return groups
    known = set(adata.var_names)
    return {
        str(name): [g for g in genes if g in known]
        for name, genes in modules.items()
        if any(g in known for g in genes)
    }


def _zscore_mean(matrix, positions: np.ndarray) -> np.ndarray:
    selected = matrix[:, positions]
    selected = selected.astype(np.float64) if sp.issparse(selected) else np.asarray(selected, float)
    mean = np.asarray(selected.mean(axis=0)).ravel()
    if sp.issparse(selected):
        squared = np.asarray(selected.multiply(selected).mean(axis=0)).ravel()
    else:
        squared = np.asarray(np.square(selected).mean(axis=0)).ravel()
    spread = np.sqrt(np.maximum(squared - mean**2, 0.0))
    spread[spread == 0] = 1.0
    # mean_j (x_ij - m_j) / s_j, from one sparse product without centring the matrix.
    weights = 1.0 / (spread * positions.size)
    return np.asarray(selected @ weights).ravel() - float(np.sum(mean * weights))
