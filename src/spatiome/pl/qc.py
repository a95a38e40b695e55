"""Distributions of per-spot quality-control metrics."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.figure import Figure

from .._core.validate import SpatiomeInputError, check_adata
from .spatial import LABEL_SIZE, TITLE_SIZE, _category_colors, _pretty

QC_KEYS = ("total_counts", "n_genes_by_counts", "pct_counts_mt")


def qc_violin(
    adata: AnnData,
    keys: Sequence[str] = QC_KEYS,
    *,
    groupby: str | None = None,
    color: str = "#4c72b0",
) -> Figure:
    """Violin plots of per-spot QC metrics, one panel per metric.

    Each violin shows the density of the metric with the interquartile range (thick line)
    and the median (white dot); with ``groupby`` there is one violin per category.

    Parameters
    ----------
    adata
        Data with the metrics in ``adata.obs`` (see :func:`spatiome.pp.qc_metrics`).
    keys
        Numeric columns of ``adata.obs`` to draw.
    groupby
        Optional categorical column of ``adata.obs``: one violin per category.
    color
        Violin colour when ``groupby`` is ``None``.

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
    """
    check_adata(adata)
    keys = [keys] if isinstance(keys, str) else list(keys)
    missing = [k for k in keys if k not in adata.obs.columns]
    if not keys or missing:
        raise SpatiomeInputError(
            f"QC columns {missing or keys} are not in adata.obs: run "
            "spatiome.pp.qc_metrics(adata) first or pass keys= existing numeric columns"
        )
    groups, labels, colors = _groups(adata, groupby, color)
    width = 2.6 if groupby is None else max(2.6, 0.55 * len(labels) + 1.0)
    fig, axes = plt.subplots(
        1, len(keys), figsize=(width * len(keys), 3.4), layout="constrained", squeeze=False
    )
    for ax, key in zip(axes.ravel(), keys, strict=True):
        values = pd.to_numeric(adata.obs[key], errors="coerce").to_numpy(dtype=np.float64)
        data = [values[g & np.isfinite(values)] for g in groups]
        _violins(ax, data, colors)
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


def _violins(ax, data: list[np.ndarray], colors: list[str]) -> None:
    positions = np.arange(1, len(data) + 1)
    drawable = [i for i, d in enumerate(data) if d.size > 1 and np.ptp(d) > 0]
    if drawable:
        parts = ax.violinplot(
            [data[i] for i in drawable],
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
