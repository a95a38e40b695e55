"""Plots of tissue neighbourhoods and ligand-receptor interactions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._core.validate import SpatiomeInputError, check_adata
from ._points import MAX_POINTS
from .deconv import _panel_data
from .spatial import spatial

__all__ = ["ligrec_local", "niche_composition", "nhood_enrichment"]

#: z-scores beyond this magnitude share the end colours of the heatmap.
Z_LIMIT = 50.0


def nhood_enrichment(
    adata: AnnData,
    cluster_key: str,
    *,
    ax: Axes | None = None,
    vmax: float | None = None,
    annotate: bool | None = None,
) -> Axes:
    """Heatmap of the neighbourhood enrichment z-scores between groups.

    Parameters
    ----------
    adata
        Data with ``adata.uns[f"{cluster_key}_nhood_enrichment"]`` from
        :func:`spatiome.interactions.nhood_enrichment` (or squidpy's).
    cluster_key
        The groups' column of ``adata.obs``.
    ax
        Axes to draw into; a new figure when ``None``.
    vmax
        Colour limit (symmetric around 0); default: the largest absolute z-score, at most
        50 (larger values take the end colours).
    annotate
        Write each z-score in its cell (default: with at most 12 groups).

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd
    >>> a = anndata.AnnData(np.zeros((3, 1)))
    >>> a.obs["g"] = pd.Categorical(["x", "y", "y"])
    >>> a.uns["g_nhood_enrichment"] = {"zscore": np.array([[4.0, -2.0], [-2.0, 3.0]])}
    >>> nhood_enrichment(a, "g").get_title()
    'neighbourhood enrichment (z-score)'
    """
    check_adata(adata)
    name = f"{cluster_key}_nhood_enrichment"
    if name not in adata.uns:
        raise SpatiomeInputError(
            f"adata.uns[{name!r}] is missing: run "
            f"spatiome.interactions.nhood_enrichment(adata, {cluster_key!r}) first"
        )
    zscore = np.asarray(adata.uns[name]["zscore"], dtype=float)
    groups = [str(g) for g in pd.Categorical(adata.obs[cluster_key]).categories]
    if zscore.shape != (len(groups), len(groups)):
        raise SpatiomeInputError(
            f"adata.uns[{name!r}]['zscore'] has shape {zscore.shape} for {len(groups)} groups "
            f"in obs[{cluster_key!r}]: recompute it"
        )
    finite = np.abs(zscore[np.isfinite(zscore)])
    limit = vmax or float(min(max(finite.max(initial=1.0), 1.0), Z_LIMIT))
    title = "neighbourhood enrichment (z-score)"
    return _heatmap(zscore, groups, groups, ax, "RdBu_r", (-limit, limit), title,
                    annotate, "neighbour group", "group")  # fmt: skip


def niche_composition(adata: AnnData, key: str = "niche", *, ax: Axes | None = None) -> Axes:
    """Heatmap of each niche's mean neighbourhood composition (niches x cell types).

    Parameters
    ----------
    adata
        Data with ``adata.uns[key]["composition"]`` from :func:`spatiome.interactions.niches`.
    key
        The niches' ``key_added``.
    ax
        Axes to draw into; a new figure when ``None``.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd
    >>> a = anndata.AnnData(np.zeros((2, 1)))
    >>> a.uns["niche"] = {"composition": pd.DataFrame([[0.9, 0.1], [0.2, 0.8]],
    ...                   index=["0", "1"], columns=["A", "B"])}
    >>> niche_composition(a).get_xlabel()
    'cell type'
    """
    check_adata(adata)
    stored = adata.uns.get(key, {})
    if not isinstance(stored, dict) or "composition" not in stored:
        raise SpatiomeInputError(
            f"adata.uns[{key!r}]['composition'] is missing: run "
            "spatiome.interactions.niches(adata, ...) first"
        )
    composition = pd.DataFrame(stored["composition"])
    return _heatmap(
        composition.to_numpy(dtype=float),
        [str(r) for r in composition.index],
        [str(c) for c in composition.columns],
        ax, "viridis", (0.0, 1.0), "niche composition", None, "cell type", "niche",
    )  # fmt: skip


def ligrec_local(
    adata: AnnData,
    pairs: Sequence[str] | None = None,
    *,
    key: str = "ligrec_local",
    n_pairs: int = 6,
    ncols: int = 3,
    max_points: int | None = MAX_POINTS,
    random_state: int | None = 0,
) -> Figure:
    """Maps of local ligand-receptor scores, one panel per pair.

    Parameters
    ----------
    adata
        Data with local scores in ``adata.obsm[key]`` (a DataFrame, one ``"L^R"`` column
        per pair, from :func:`spatiome.interactions.ligrec` or
        :func:`spatiome.interactions.ligrec_local`).
    pairs
        Columns to draw (default: the first ``n_pairs``, the most significant).
    key
        The scores' key in ``obsm``.
    n_pairs
        Pairs drawn when ``pairs`` is None.
    ncols
        Panels per row.
    max_points, random_state
        Most spots drawn per panel and the seed of the subsample beyond (see
        :func:`spatiome.pl.spatial`).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd
    >>> a = anndata.AnnData(np.zeros((20, 1)), obsm={"spatial": np.random.rand(20, 2)})
    >>> a.obsm["ligrec_local"] = pd.DataFrame({"L^R": np.random.randn(20)}, index=a.obs_names)
    >>> len(ligrec_local(a).axes) >= 1
    True
    """
    check_adata(adata)
    if key not in adata.obsm or not isinstance(adata.obsm[key], pd.DataFrame):
        raise SpatiomeInputError(
            f"adata.obsm[{key!r}] is missing: run spatiome.interactions.ligrec(adata, ...) "
            "with n_local > 0, or spatiome.interactions.ligrec_local"
        )
    scores = adata.obsm[key]
    chosen = list(scores.columns[:n_pairs]) if pairs is None else list(pairs)
    unknown = [p for p in chosen if p not in scores.columns]
    if unknown or not chosen:
        raise SpatiomeInputError(
            f"pairs {unknown or chosen} are not columns of adata.obsm[{key!r}] "
            f"(available: {list(scores.columns)[:10]})"
        )
    view = _panel_data(adata, scores[chosen])
    names = [str(c).replace("^", " \u2192 ") for c in chosen]
    view.obs.columns = names
    limit = float(np.nanpercentile(np.abs(scores[chosen].to_numpy(dtype=float)), 99)) or 1.0
    # coolwarm: a score near 0 is light grey, visible on the white page
    figure = spatial(view, names, cmap="coolwarm", vmin=-limit, vmax=limit, ncols=ncols,
                     max_points=max_points, random_state=random_state)  # fmt: skip
    return figure if isinstance(figure, Figure) else figure.figure


def _heatmap(
    values: np.ndarray,
    rows: list[str],
    columns: list[str],
    ax: Axes | None,
    cmap: str,
    limits: tuple[float, float],
    title: str,
    annotate: bool | None,
    xlabel: str,
    ylabel: str,
) -> Axes:
    import matplotlib.pyplot as plt

    if ax is None:
        # room for the cells and for the longest tick labels (about 0.08 inch a character)
        below = 0.08 * max((len(c) for c in columns), default=1)
        left = 0.08 * max((len(r) for r in rows), default=1)
        size = (max(3.5, 0.45 * len(columns) + 2.0 + left), max(3.0, 0.4 * len(rows) + 1.5 + below))
        _, ax = plt.subplots(figsize=size)
    image = ax.imshow(values, cmap=cmap, vmin=limits[0], vmax=limits[1], aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=90)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, shrink=0.8)
    if annotate if annotate is not None else max(len(rows), len(columns)) <= 12:
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                red, green, blue, _ = image.cmap(image.norm(value))
                dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
                ax.text(j, i, f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}",
                        ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")  # fmt: skip
    ax.figure.tight_layout()
    return ax
