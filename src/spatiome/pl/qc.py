"""Per-spot quality-control metrics: their distributions, and on the tissue with QC flags."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from .._core.validate import SpatiomeInputError, check_adata, get_spatial
from ._points import MAX_POINTS, sample_points
from .spatial import (
    LABEL_SIZE,
    TITLE_SIZE,
    _category_colors,
    _default_spot_size,
    _grid,
    _panel_size,
    _pretty,
    observation_noun,
    spatial,
)

QC_KEYS = ("total_counts", "n_genes_by_counts", "pct_counts_mt")
QC_FLAGS = ("local_outlier", "artifact")
# Outline colours that stand out on viridis: red, magenta, orange, cyan.
FLAG_COLORS = ("#e8000b", "#f14cc1", "#ff7c00", "#00d7ff")
_FLAG_SOURCES = {
    "local_outlier": "spatiome.pp.local_outliers(adata)",
    "artifact": "spatiome.pp.find_artifacts(adata)",
}


def qc_violin(
    adata: AnnData,
    keys: Sequence[str] = QC_KEYS,
    *,
    groupby: str | None = None,
    color: str = "#4c72b0",
    max_points: int | None = MAX_POINTS,
    random_state: int | None = 0,
) -> Figure:
    """Violin plots of per-spot QC metrics, one panel per metric.

    Each violin shows the density of the metric with the interquartile range (thick line)
    and the median (white dot); with ``groupby`` there is one violin per category. The
    density of a group of more than ``max_points`` spots is estimated from a random
    subsample of ``max_points`` (the same for the same ``random_state``); the median and
    quartiles always come from every spot. A
    metric that is zero or missing in every spot (the mitochondrial share of a panel
    without mitochondrial genes) gets no panel.

    Parameters
    ----------
    adata
        Data with the metrics in ``adata.obs`` (see :func:`spatiome.pp.qc_metrics`).
    keys
        Numeric columns of ``adata.obs`` to draw. Of the default keys, those missing from
        ``adata.obs`` are left out; a key passed explicitly must exist.
    groupby
        Optional categorical column of ``adata.obs``: one violin per category.
    color
        Violin colour when ``groupby`` is ``None``.
    max_points
        Most values a violin's density is estimated from; ``None``: every value.
    random_state
        Seed of the subsample beyond ``max_points``.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, anndata as ad
    >>> from spatiome.pl import qc_violin
    >>> adata = ad.AnnData(np.zeros((30, 1)))
    >>> adata.obs["total_counts"] = np.arange(30.0)
    >>> adata.obs["n_genes_by_counts"] = np.arange(30.0) / 2
    >>> fig = qc_violin(adata, keys=("total_counts", "n_genes_by_counts"))
    >>> len(fig.axes)
    2
    >>> adata.obs["pct_counts_mt"] = 0.0  # no mitochondrial genes: no panel
    >>> [ax.get_title() for ax in qc_violin(adata).axes]
    ['Total counts', 'Detected genes']
    """
    check_adata(adata)
    keys = informative_metrics(adata, keys, default=keys == QC_KEYS, argument="keys")
    groups, labels, colors = _groups(adata, groupby, color)
    width = 2.6 if groupby is None else max(2.6, 0.55 * len(labels) + 1.0)
    fig, axes = plt.subplots(
        1, len(keys), figsize=(width * len(keys), 3.4), layout="constrained", squeeze=False
    )
    for ax, key in zip(axes.ravel(), keys, strict=True):
        values = pd.to_numeric(adata.obs[key], errors="coerce").to_numpy(dtype=np.float64)
        data = [values[g & np.isfinite(values)] for g in groups]
        _violins(ax, data, colors, max_points=max_points, random_state=random_state)
        ax.set_title(_pretty(key).capitalize(), fontsize=TITLE_SIZE)
        ax.set_xticks(
            np.arange(1, len(labels) + 1),
            labels,
            fontsize=LABEL_SIZE - 1,
            rotation=0 if groupby is None or len(labels) < 6 else 90,
        )
        if groupby is None:
            ax.set_xticks([])
        ax.tick_params(axis="y", labelsize=LABEL_SIZE - 1)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    return fig


def qc_spatial(
    adata: AnnData,
    metrics: str | Sequence[str] = QC_KEYS,
    flags: str | Sequence[str] | None = None,
    *,
    flag_colors: Sequence[str] | None = None,
    spot_size: float | None = None,
    cmap: str | Colormap = "viridis",
    max_points: int | None = MAX_POINTS,
    random_state: int | None = 0,
) -> Figure:
    """QC metrics on the tissue with flagged spots outlined.

    One row of panels per flag, one panel per metric: each panel colours the spots by the
    metric (see :func:`spatiome.pl.spatial`) and outlines the spots where the flag is
    True; the title gives the number of flagged spots (cells when
    ``adata.uns["spatiome"]["observation"]`` is ``"cell"``). A metric that is zero or
    missing everywhere gets no panel.

    Parameters
    ----------
    adata
        Data with coordinates in ``adata.obsm["spatial"]`` and the metrics in
        ``adata.obs`` (see :func:`spatiome.pp.qc_metrics`).
    metrics
        Numeric columns of ``adata.obs`` to draw. Of the default metrics, those missing
        from ``adata.obs`` are left out; a metric passed explicitly must exist.
    flags
        Boolean columns of ``adata.obs`` whose True spots are outlined, one row each.
        ``None``: those of ``("local_outlier", "artifact")`` that are present
        (:func:`spatiome.pp.local_outliers`, :func:`spatiome.pp.find_artifacts`). An
        empty sequence draws the metrics without outlines.
    flag_colors
        Outline colour of each flag; red, magenta, orange and cyan by default.
    spot_size
        Spot diameter in coordinate units; ``None``: the distance between nearest spots.
    cmap
        Colour map of the metrics.
    max_points, random_state
        Most spots drawn per panel and the seed of the subsample beyond (see
        :func:`spatiome.pl.spatial`); every panel draws the same spots.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import spatiome as sm
    >>> tissue = sm.datasets.simulate_tissue(n_spots=500, n_genes=60, random_state=0)
    >>> damaged = sm.datasets.inject_artifacts(tissue, random_state=0)
    >>> sm.pp.local_outliers(damaged)
    >>> sm.pp.find_artifacts(damaged)
    >>> fig = qc_spatial(damaged)
    >>> [ax.get_title().splitlines() for ax in fig.axes if ax.get_title()][::3]
    [['Total counts', 'local_outlier: 29 spots'], ['Total counts', 'artifact: 20 spots']]
    """
    check_adata(adata)
    coords = get_spatial(adata)[:, :2]
    metric_list = informative_metrics(
        adata, metrics, default=metrics == QC_KEYS, argument="metrics"
    )
    flag_list = _flag_columns(adata, flags)
    colors = list(FLAG_COLORS if flag_colors is None else flag_colors)
    if len(colors) < len(flag_list):
        raise SpatiomeInputError(
            f"flag_colors has {len(colors)} colours for {len(flag_list)} flags {flag_list}"
        )
    size = _default_spot_size(coords) if spot_size is None else spot_size
    rows: list[str | None] = list(flag_list) if flag_list else [None]
    fig, axes = _grid(len(rows) * len(metric_list), len(metric_list), _panel_size(coords))
    panels = iter(axes)
    for row, flag in enumerate(rows):
        for metric in metric_list:
            title = _pretty(metric).capitalize()
            if flag is not None:
                count = int(adata.obs[flag].sum())
                title = f"{title}\n{flag}: {count:,} {observation_noun(adata, count)}"
            spatial(
                adata,
                metric,
                ax=next(panels),
                spot_size=size,
                cmap=cmap,
                title=title,
                outline=flag,
                outline_color=colors[row] if flag is not None else FLAG_COLORS[0],
                max_points=max_points,
                random_state=random_state,
            )
    return fig


def informative_metrics(
    adata: AnnData,
    metrics: str | Sequence[str] = QC_KEYS,
    *,
    default: bool = False,
    argument: str = "metrics",
) -> list[str]:
    """The QC metrics worth a panel: columns of ``adata.obs`` with a non-zero finite value.

    A metric that is zero or missing in every observation (the mitochondrial share when
    no gene is mitochondrial) says nothing and is left out.

    Parameters
    ----------
    adata
        Data with the metrics in ``adata.obs``.
    metrics
        Candidate columns.
    default
        The candidates are defaults: those missing from ``adata.obs`` are skipped instead
        of raising.
    argument
        Name of the argument, for the error message.

    Returns
    -------
    list of str

    Raises
    ------
    SpatiomeInputError
        A metric passed explicitly is missing, or none is left to draw.

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> adata = ad.AnnData(np.zeros((3, 1)))
    >>> adata.obs["total_counts"] = [5.0, 7.0, 9.0]
    >>> adata.obs["pct_counts_mt"] = 0.0
    >>> informative_metrics(adata, default=True)
    ['total_counts']
    """
    candidates = [metrics] if isinstance(metrics, str) else list(metrics)
    missing = [m for m in candidates if m not in adata.obs.columns]
    if not candidates or (missing and not default):
        raise SpatiomeInputError(
            f"QC columns {missing or candidates} are not in adata.obs: run "
            f"spatiome.pp.qc_metrics(adata) first or pass {argument}= existing numeric columns"
        )
    kept = []
    for metric in candidates:
        if metric in missing:
            continue
        values = pd.to_numeric(adata.obs[metric], errors="coerce").to_numpy(dtype=np.float64)
        if np.any(np.isfinite(values) & (values != 0)):
            kept.append(metric)
    if not kept:
        raise SpatiomeInputError(
            f"QC columns {[m for m in candidates if m not in missing] or candidates} are zero "
            f"or missing in every observation: nothing to draw; run "
            f"spatiome.pp.qc_metrics(adata) or pass {argument}= other columns"
        )
    return kept


def _flag_columns(adata: AnnData, flags: str | Sequence[str] | None) -> list[str]:
    if flags is None:
        present = [f for f in QC_FLAGS if f in adata.obs.columns]
        if not present:
            raise SpatiomeInputError(
                "adata.obs has no QC flags ('local_outlier', 'artifact'): run "
                "spatiome.pp.local_outliers(adata) or spatiome.pp.find_artifacts(adata) "
                "first, pass flags= boolean obs columns, or flags=() for no outlines"
            )
        return present
    flag_list = [flags] if isinstance(flags, str) else list(flags)
    for flag in flag_list:
        if flag not in adata.obs.columns:
            source = _FLAG_SOURCES.get(flag, "the function that computes it")
            raise SpatiomeInputError(
                f"flag {flag!r} is not a column of adata.obs: run {source} first"
            )
        if not pd.api.types.is_bool_dtype(adata.obs[flag]):
            raise SpatiomeInputError(
                f"adata.obs[{flag!r}] must be boolean to mark flagged spots, got "
                f"{adata.obs[flag].dtype}"
            )
    return flag_list


def _groups(
    adata: AnnData, groupby: str | None, color: str
) -> tuple[list[np.ndarray], list[str], list[str]]:
    if groupby is None:
        return [np.ones(adata.n_obs, dtype=bool)], [""], [color]
    if groupby not in adata.obs.columns:
        raise SpatiomeInputError(f"groupby={groupby!r} is not a column of adata.obs")
    values = pd.Categorical(adata.obs[groupby])
    categories = values.categories
    masks = [np.asarray(values.codes == i) for i in range(len(categories))]
    return masks, [str(c) for c in categories], _category_colors(adata, groupby, categories)


def _violins(
    ax, data: list[np.ndarray], colors: list[str], *, max_points: int | None, random_state
) -> None:
    positions = np.arange(1, len(data) + 1)
    # The kernel density costs values x grid points: a seeded subsample beyond the cap.
    densities = [sample_points(d.size, max_points, random_state).take(d) for d in data]
    drawable = [i for i, d in enumerate(densities) if d.size > 1 and np.ptp(d) > 0]
    if drawable:
        parts = ax.violinplot(
            [densities[i] for i in drawable],
            positions=positions[drawable],
            showextrema=False,
            widths=0.8,
        )
        for body, i in zip(parts["bodies"], drawable, strict=True):
            body.set_facecolor(colors[i])
            body.set_edgecolor("none")
            body.set_alpha(0.75)
    for position, values in zip(positions, data, strict=True):
        if values.size == 0:
            continue
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        ax.vlines(position, q1, q3, color="#333333", linewidth=3.5, zorder=3)
        ax.scatter([position], [median], color="white", s=14, zorder=4, edgecolors="none")
