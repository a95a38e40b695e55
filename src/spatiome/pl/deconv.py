"""Cell-type fractions on the tissue: one map per type, the dominant type, scatter-pies.

A cell type has one colour in every figure: ``adata.uns[f"{key}_colors"]`` (one colour
per column of ``adata.obsm[key]``, in column order) when set, otherwise the colour
:func:`spatiome.pl.category_palette` gives its name.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Wedge

from .._core.validate import SpatiomeInputError, check_adata, get_spatial
from ._points import MAX_POINTS, annotate_sample, rasterize, sample_points
from .spatial import (
    PANEL_INCHES,
    TITLE_SIZE,
    _add_legend,
    _default_spot_size,
    _frame,
    category_palette,
    observation_noun,
    spatial,
)


def cell_type_maps(
    adata: AnnData,
    key: str = "cell_type_fractions",
    *,
    cell_types: Sequence[str] | None = None,
    ncols: int = 4,
    spot_size: float | None = None,
    cmap: str = "magma_r",
    max_points: int | None = MAX_POINTS,
    random_state: int | None = 0,
) -> Figure:
    """One map per cell type of its fraction in each spot, on a shared 0-1 colour scale.

    Parameters
    ----------
    adata
        Data with fractions in ``adata.obsm[key]`` (from :func:`spatiome.deconv.deconvolve`)
        and coordinates in ``obsm["spatial"]``.
    key
        The fractions' key in ``obsm``.
    cell_types
        Types to draw (default: every type with a non-zero fraction somewhere, in column
        order).
    ncols
        Panels per row.
    spot_size
        Spot diameter in coordinate units (default: nearest-neighbour spacing).
    cmap
        Colour map of the fractions.
    max_points, random_state
        Most spots drawn and the seed of the subsample beyond (see
        :func:`spatiome.pl.spatial`).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, pandas as pd, anndata
    >>> adata = anndata.AnnData(np.zeros((30, 1)), obsm={"spatial": np.random.rand(30, 2)})
    >>> adata.obsm["cell_type_fractions"] = pd.DataFrame(
    ...     np.random.dirichlet([1, 1, 1], 30), index=adata.obs_names, columns=list("ABC"))
    >>> fig = cell_type_maps(adata)
    >>> [ax.get_title() for ax in fig.axes if ax.get_title()]
    ['A', 'B', 'C']
    """
    fractions = _fractions(adata, key)
    if cell_types is None:
        present = (fractions.fillna(0.0) != 0).any(axis=0)
        names = [name for name in fractions.columns if present[name]] or list(fractions.columns)
    else:
        names = list(cell_types)
    unknown = [n for n in names if n not in fractions.columns]
    if unknown:
        raise SpatiomeInputError(f"cell types {unknown} are not in adata.obsm[{key!r}]")
    view = _panel_data(adata, fractions[names])
    return spatial(view, names, vmin=0.0, vmax=1.0, cmap=cmap, spot_size=spot_size, ncols=ncols,
                   max_points=max_points, random_state=random_state)  # fmt: skip


def dominant_cell_type(
    adata: AnnData,
    key: str = "cell_type_fractions",
    *,
    min_fraction: float = 0.0,
    ax: Axes | None = None,
    spot_size: float | None = None,
    max_points: int | None = MAX_POINTS,
    random_state: int | None = 0,
) -> Axes:
    """Each spot coloured by its most abundant cell type.

    Spots whose largest fraction is below ``min_fraction`` (or that have no estimate)
    are grey. Each type keeps the colour it has in :func:`scatter_pies`, whichever types
    dominate somewhere.

    Parameters
    ----------
    adata
        Data with fractions in ``adata.obsm[key]`` and coordinates in ``obsm["spatial"]``.
    key
        The fractions' key in ``obsm``.
    min_fraction
        Smallest largest fraction for a spot to be coloured.
    ax
        Axes to draw into; a new figure when ``None``.
    spot_size
        Spot diameter in coordinate units (default: nearest-neighbour spacing).
    max_points, random_state
        Most spots drawn and the seed of the subsample beyond (see
        :func:`spatiome.pl.spatial`).

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import numpy as np, pandas as pd, anndata
    >>> adata = anndata.AnnData(np.zeros((30, 1)), obsm={"spatial": np.random.rand(30, 2)})
    >>> adata.obsm["cell_type_fractions"] = pd.DataFrame(
    ...     np.random.dirichlet([1, 1], 30), index=adata.obs_names, columns=["A", "B"])
    >>> dominant_cell_type(adata).get_title()
    'dominant cell type'
    """
    fractions = _fractions(adata, key)
    values = fractions.to_numpy(dtype=np.float64)
    best = np.nanmax(np.where(np.isfinite(values), values, -1.0), axis=1)
    labels = np.asarray(fractions.columns, dtype=object)[
        np.argmax(np.nan_to_num(values, nan=-1), axis=1)
    ]
    labels = np.where((best >= min_fraction) & (best > 0), labels, None)
    view = _panel_data(adata, pd.DataFrame(index=fractions.index))
    column = "dominant cell type"
    view.obs[column] = pd.Categorical(labels, categories=list(fractions.columns))
    view.obs[column] = view.obs[column].cat.remove_unused_categories()
    colors = cell_type_colors(adata, key)
    return spatial(view, column, ax=ax, spot_size=spot_size, palette=colors,
                   max_points=max_points, random_state=random_state)  # fmt: skip


def scatter_pies(
    adata: AnnData,
    key: str = "cell_type_fractions",
    *,
    ax: Axes | None = None,
    spot_size: float | None = None,
    max_spots: int = 5000,
    random_state: int = 0,
) -> Axes:
    """A pie of cell-type fractions at every spot (a random subset beyond ``max_spots``).

    When a subset is drawn, the pies are enlarged by the square root of spots over pies
    drawn (so that they cover the tissue as all would), and a note under the panel says so.

    Parameters
    ----------
    adata
        Data with fractions in ``adata.obsm[key]`` and coordinates in ``obsm["spatial"]``.
    key
        The fractions' key in ``obsm``.
    ax
        Axes to draw into; a new figure when ``None``.
    spot_size
        Pie diameter in coordinate units (default: nearest-neighbour spacing).
    max_spots
        Most pies drawn.
    random_state
        Seed of the subset drawn beyond ``max_spots``.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import numpy as np, pandas as pd, anndata
    >>> adata = anndata.AnnData(np.zeros((20, 1)), obsm={"spatial": np.random.rand(20, 2)})
    >>> adata.obsm["cell_type_fractions"] = pd.DataFrame(
    ...     np.random.dirichlet([1, 1, 1], 20), index=adata.obs_names, columns=list("ABC"))
    >>> len(scatter_pies(adata).collections[0].get_paths()) <= 60
    True
    """
    fractions = _fractions(adata, key)
    coords = get_spatial(adata)[:, :2]
    values = fractions.to_numpy(dtype=np.float64)
    sample = sample_points(np.flatnonzero(np.isfinite(values).all(axis=1)), max_spots, random_state)
    keep = sample.index
    size = _default_spot_size(coords) if spot_size is None else float(spot_size)
    size *= sample.size_factor
    names = pd.Index(fractions.columns)
    palette = cell_type_colors(adata, key)
    colors = [palette[str(name)] for name in names]
    if ax is None:
        _, ax = plt.subplots(figsize=(PANEL_INCHES + 1.5, PANEL_INCHES))
    wedges, faces = [], []
    for i in keep:
        start = 90.0
        for t in np.flatnonzero(values[i] > 0):
            sweep = 360.0 * values[i, t] / values[i].sum()
            wedges.append(Wedge(tuple(coords[i]), size / 2, start, start + sweep, linewidth=0))
            faces.append(colors[t])
            start += sweep
    collection = PatchCollection(wedges, facecolors=faces, linewidths=0)
    rasterize(collection, len(keep))
    ax.add_collection(collection)
    _frame(ax, adata, coords, size, pixel=False, scalebar=True)
    _add_legend(ax, names, colors, "cell type")
    ax.set_title("cell-type fractions", fontsize=TITLE_SIZE)
    annotate_sample(ax, sample, observation_noun(adata))
    return ax


def cell_type_colors(adata: AnnData, key: str = "cell_type_fractions") -> dict[str, str]:
    """The colour of each cell type of ``adata.obsm[key]``, the same in every figure.

    ``adata.uns[f"{key}_colors"]`` (one colour per column, in column order) when it is set
    and long enough, otherwise :func:`spatiome.pl.category_palette` of the type names.

    Examples
    --------
    >>> import numpy as np, pandas as pd, anndata
    >>> adata = anndata.AnnData(np.zeros((2, 1)))
    >>> adata.obsm["cell_type_fractions"] = pd.DataFrame(
    ...     [[0.5, 0.5], [1.0, 0.0]], index=adata.obs_names, columns=["Neuron", "Astro"])
    >>> cell_type_colors(adata)
    {'Neuron': '#ff7f0e', 'Astro': '#1f77b4'}
    """
    names = [str(c) for c in _fractions(adata, key).columns]
    stored = adata.uns.get(f"{key}_colors")
    if stored is not None and len(stored) >= len(names):
        return {name: str(color) for name, color in zip(names, stored, strict=False)}
    palette = category_palette(names)
    return {name: palette[name] for name in names}


def _fractions(adata: AnnData, key: str) -> pd.DataFrame:
    check_adata(adata)
    if key not in adata.obsm:
        raise SpatiomeInputError(
            f"adata.obsm[{key!r}] is missing: run spatiome.deconv.deconvolve(adata, reference)"
        )
    fractions = adata.obsm[key]
    if not isinstance(fractions, pd.DataFrame):
        raise SpatiomeInputError(f"adata.obsm[{key!r}] must be a DataFrame with cell-type columns")
    return fractions


def _panel_data(adata: AnnData, columns: pd.DataFrame) -> AnnData:
    """A light AnnData with the coordinates and the given columns in obs, for plotting."""
    obs = pd.DataFrame(
        columns.to_numpy(), index=adata.obs_names, columns=[str(c) for c in columns.columns]
    )
    view = AnnData(
        X=np.zeros((adata.n_obs, 1), dtype=np.float32),
        obs=obs,
        var=pd.DataFrame(index=["_placeholder"]),
    )
    view.obsm["spatial"] = get_spatial(adata)
    for name in ("spatial_unit", "spatial"):
        if name in adata.uns:
            view.uns[name] = adata.uns[name]
    return view
