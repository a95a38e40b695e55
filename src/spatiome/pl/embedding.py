"""Values on a low-dimensional embedding (UMAP, t-SNE, PCA)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from .._core.validate import SpatiomeInputError, check_adata
from ._points import MAX_POINTS, PointSample, annotate_sample, rasterize, sample_points
from .spatial import (
    TITLE_SIZE,
    _add_colorbar,
    _add_legend,
    _category_colors,
    _color_values,
    _face_colors,
    _grid,
    _limits,
    _missing_grey,
    observation_noun,
)

_AXIS_NAMES = {"umap": "UMAP", "tsne": "t-SNE", "pca": "PC"}


def embedding(
    adata: AnnData,
    color: str | Sequence[str],
    *,
    basis: str = "umap",
    layer: str | None = None,
    ax: Axes | None = None,
    point_size: float | None = None,
    cmap: str | Colormap = "viridis",
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    palette: Sequence[str] | Mapping[str, str] | None = None,
    ncols: int = 3,
    max_points: int | None = MAX_POINTS,
    random_state: int | None = 0,
) -> Axes | Figure:
    """Scatter plot of ``adata.obsm[f"X_{basis}"]`` coloured by a gene or an obs column.

    Categories are drawn in a fixed shuffled order so that no group hides the others;
    numeric values are drawn low to high so that high values stay visible. Beyond
    ``max_points`` observations a random subsample of ``max_points`` is drawn (the same for
    the same ``random_state``), and a note under the panel says so; colour ranges and
    legends come from every observation.

    Parameters
    ----------
    adata
        Data with the embedding in ``adata.obsm[f"X_{basis}"]`` (see
        :func:`spatiome.pp.reduce`).
    color
        A column of ``adata.obs`` or a gene; a list draws one panel per entry and returns
        the Figure.
    basis
        ``"umap"``, ``"tsne"``, ``"pca"`` or any ``X_<name>`` key of ``adata.obsm``.
    layer
        Layer to read genes from; ``None`` uses ``adata.X``.
    ax
        Axes to draw into (single ``color`` only).
    point_size
        Marker area in points^2; default ``24000 / n`` clipped to [1, 30], ``n`` the
        number of points drawn.
    cmap, vmin, vmax, palette
        Colours, as in :func:`spatiome.pl.spatial`.
    title
        Panel title; defaults to ``color``.
    ncols
        Panels per row when ``color`` is a list.
    max_points
        Most points drawn; ``None`` draws every point.
    random_state
        Seed of the subsample drawn beyond ``max_points``.

    Returns
    -------
    matplotlib.axes.Axes or matplotlib.figure.Figure
        The Axes for a single ``color``, the Figure for a list.

    Examples
    --------
    >>> import numpy as np, anndata as ad
    >>> from spatiome.pl import embedding
    >>> adata = ad.AnnData(np.zeros((50, 1)))
    >>> adata.obsm["X_umap"] = np.random.default_rng(0).normal(size=(50, 2))
    >>> adata.obs["group"] = np.repeat(["a", "b"], 25)
    >>> ax = embedding(adata, "group")
    >>> [t.get_text() for t in ax.get_legend().get_texts()]
    ['a', 'b']
    >>> embedding(adata, "group", max_points=20).collections[0].get_offsets().shape
    (20, 2)
    """
    check_adata(adata)
    key = basis if basis in adata.obsm else f"X_{basis}"
    if key not in adata.obsm:
        raise SpatiomeInputError(
            f"adata.obsm[{key!r}] is missing: run spatiome.pp.reduce(adata) (umap=True or "
            f"tsne=True) or pass basis= one of {sorted(adata.obsm.keys())}"
        )
    points = np.asarray(adata.obsm[key], dtype=np.float64)[:, :2]
    sample = sample_points(adata.n_obs, max_points, random_state)
    size = point_size if point_size is not None else float(np.clip(24000 / sample.n_drawn, 1, 30))
    name = _AXIS_NAMES.get(key.removeprefix("X_"), key.removeprefix("X_"))
    options = dict(
        sample=sample, layer=layer, size=size, cmap=cmap, vmin=vmin, vmax=vmax,
        palette=palette, axis_name=name,
    )  # fmt: skip
    if isinstance(color, str):
        if ax is None:
            _, ax = plt.subplots(figsize=(5.4, 4.0), layout="constrained")
        _embedding_panel(ax, adata, points, color, title=title, **options)
        return ax
    colors = list(color)
    if not colors or ax is not None:
        raise SpatiomeInputError("pass a non-empty list of colors and no ax= for a grid")
    fig, axes = _grid(len(colors), ncols, (5.4, 4.0))
    for panel, entry in zip(axes, colors, strict=False):
        _embedding_panel(panel, adata, points, entry, title=None, **options)
    for unused in axes[len(colors) :]:
        unused.set_visible(False)
    return fig


def _embedding_panel(
    ax: Axes,
    adata: AnnData,
    points: np.ndarray,
    color: str,
    *,
    title,
    sample: PointSample,
    layer,
    size,
    cmap,
    vmin,
    vmax,
    palette,
    axis_name,
) -> None:
    kind, values, label = _color_values(adata, color, layer=layer)
    drawn = sample.take(points)
    if kind == "categorical":
        colors = _category_colors(adata, color, values.categories, palette)
        order = np.random.default_rng(0).permutation(sample.n_drawn)
        faces = sample.take(_face_colors(values, colors))[order]
        scatter = ax.scatter(drawn[order, 0], drawn[order, 1], c=faces, s=size, linewidths=0)
        _add_legend(ax, values.categories, colors, color)
    else:
        shown = sample.take(values)
        order = np.argsort(np.nan_to_num(shown, nan=-np.inf), kind="stable")
        low, high = _limits(values, vmin, vmax)
        scatter = ax.scatter(
            drawn[order, 0],
            drawn[order, 1],
            c=shown[order],
            s=size,
            cmap=_missing_grey(cmap),
            vmin=low,
            vmax=high,
            linewidths=0,
            plotnonfinite=True,
        )
        _add_colorbar(ax, scatter, label)
    rasterize(scatter, sample.n_drawn)
    annotate_sample(ax, sample, observation_noun(adata))
    ax.set_xlabel(f"{axis_name}1", fontsize=10)
    ax.set_ylabel(f"{axis_name}2", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(color if title is None else title, fontsize=TITLE_SIZE)
