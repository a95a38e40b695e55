"""Values on the tissue: spots drawn as circles at their coordinates."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.collections import EllipseCollection
from matplotlib.colors import Colormap, to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy.spatial import cKDTree

from .._core.validate import SpatiomeInputError, check_adata, get_matrix, get_spatial
from ._points import (
    GRID_COVER,
    MAX_POINTS,
    PointSample,
    annotate_sample,
    rasterize,
    sample_points,
    sample_spots,
)

MISSING_COLOR = "#d3d3d3"
TITLE_SIZE = 12
LABEL_SIZE = 10
PANEL_INCHES = 4.0


def spatial(
    adata: AnnData,
    color: str | Sequence[str],
    *,
    layer: str | None = None,
    ax: Axes | None = None,
    spot_size: float | None = None,
    cmap: str | Colormap = "viridis",
    title: str | None = None,
    outline: str | np.ndarray | None = None,
    outline_color: str = "#e8000b",
    show_image: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
    palette: Sequence[str] | Mapping[str, str] | None = None,
    scalebar: bool = True,
    ncols: int = 3,
    max_points: int | None = MAX_POINTS,
    random_state: int | None = 0,
) -> Axes | Figure:
    """Draw a gene or a spot annotation on the tissue.

    Each spot is a circle of diameter ``spot_size`` (in coordinate units) at
    ``adata.obsm["spatial"]``. A categorical, boolean or string column of ``adata.obs`` is
    drawn with a discrete palette and a legend; a numeric column or a gene with a colour
    bar. Gene values come from ``adata.X`` or ``adata.layers[layer]``; for a sparse matrix
    only the one column is extracted. The axes have equal aspect; the y axis points down
    when ``adata.uns["spatial_unit"] == "pixel"`` (image convention), and a scale bar is
    drawn when the unit is ``"um"``.

    Beyond ``max_points`` spots at most ``max_points`` are drawn: the spot nearest the
    centre of each cell of a grid over the tissue, whose origin ``random_state`` shifts.
    Each drawn spot is enlarged by the square root of spots over spots drawn, and by 1.5
    more, so that they cover the tissue without gaps; a note under the panel says so.
    Colour ranges, categories and legends come from every spot; outlined spots are all
    drawn (up to ``max_points``). A list of genes is read from the matrix in one column
    selection.

    Parameters
    ----------
    adata
        Data with coordinates in ``adata.obsm["spatial"]``.
    color
        A column of ``adata.obs`` or a gene in ``adata.var_names``; a list draws one panel
        per entry and returns the Figure.
    layer
        Layer to read genes from; ``None`` uses ``adata.X``.
    ax
        Axes to draw into (single ``color`` only); a new figure when ``None``.
    spot_size
        Spot diameter in coordinate units; ``None`` uses the median distance between
        nearest spots, so that spots on a regular grid touch.
    cmap
        Colour map for numeric values (missing values are grey).
    title
        Panel title; defaults to ``color``.
    outline
        Spots to outline (for example QC-flagged ones): a boolean ``adata.obs`` column or a
        boolean mask of length ``n_obs``.
    outline_color
        Edge colour of outlined spots.
    show_image
        Draw the tissue image from ``adata.uns["spatial"][library]["images"]`` (``"hires"``,
        else ``"lowres"``) underneath; coordinates must be full-resolution pixels.
    vmin, vmax
        Colour range for numeric values; data minimum / maximum by default.
    palette
        Colours for the categories, in their order or as a mapping name -> colour;
        otherwise ``adata.uns[f"{color}_colors"]`` when it fits, else
        :func:`category_palette` (a colour fixed by each name).
    scalebar
        Draw a scale bar when coordinates are in micrometres.
    ncols
        Panels per row when ``color`` is a list.
    max_points
        Most spots drawn; ``None`` draws every spot.
    random_state
        Seed of the grid's shift beyond ``max_points``.

    Returns
    -------
    matplotlib.axes.Axes or matplotlib.figure.Figure
        The Axes for a single ``color``, the Figure for a list.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp, anndata as ad
    >>> from spatiome.pl import spatial
    >>> rows, cols = np.divmod(np.arange(100), 10)
    >>> adata = ad.AnnData(sp.csr_matrix(np.arange(200).reshape(100, 2) % 7))
    >>> adata.var_names = ["GeneA", "GeneB"]
    >>> adata.obsm["spatial"] = np.column_stack([cols, rows]) * 100.0
    >>> adata.uns["spatial_unit"] = "um"
    >>> adata.obs["half"] = np.where(cols < 5, "left", "right")
    >>> ax = spatial(adata, "GeneA")
    >>> ax.collections[0].get_offsets().shape
    (100, 2)
    >>> fig = spatial(adata, ["GeneA", "half"])
    >>> len(fig.axes) >= 2
    True
    >>> len(spatial(adata, "half", max_points=40).collections[0].get_offsets()) <= 40
    True
    """
    check_adata(adata)
    coords = get_spatial(adata)[:, :2]
    if spot_size is None:
        spot_size = _default_spot_size(coords)
    elif not spot_size > 0:
        raise SpatiomeInputError(f"spot_size must be positive, got {spot_size!r}")
    mask = None if outline is None else _outline_mask(adata, outline)
    image = _tissue_image(adata) if show_image else None
    options = dict(
        sample=sample_spots(coords, max_points, random_state),
        max_points=max_points,
        random_state=random_state,
        layer=layer,
        spot_size=float(spot_size),
        cmap=cmap,
        outline=mask,
        outline_color=outline_color,
        image=image,
        vmin=vmin,
        vmax=vmax,
        palette=palette,
        scalebar=scalebar,
    )
    if isinstance(color, str):
        if ax is None:
            _, ax = plt.subplots(figsize=_panel_size(coords), layout="constrained")
        _spatial_panel(ax, adata, coords, color, title=title, **options)
        return ax
    colors = list(color)
    if not colors:
        raise SpatiomeInputError("color is an empty list: name at least one gene or obs column")
    if ax is not None:
        raise SpatiomeInputError("ax= works with a single color; a list of colors draws a grid")
    fig, axes = _grid(len(colors), ncols, _panel_size(coords))
    # One column selection for all genes: each selection of a CSR matrix reads all of it.
    options["genes"] = _gene_columns(adata, colors, layer)
    for panel, key in zip(axes, colors, strict=False):
        _spatial_panel(panel, adata, coords, key, title=None, **options)
    for unused in axes[len(colors) :]:
        unused.set_visible(False)
    if title is not None:
        fig.suptitle(title, fontsize=TITLE_SIZE + 1)
    return fig


def _spatial_panel(
    ax: Axes,
    adata: AnnData,
    coords: np.ndarray,
    color: str,
    *,
    title,
    sample: PointSample,
    max_points,
    random_state,
    layer,
    spot_size,
    cmap,
    outline,
    outline_color,
    image,
    vmin,
    vmax,
    palette,
    scalebar,
    genes: Mapping[str, np.ndarray] | None = None,
) -> None:
    if genes and color in genes:
        kind, values, label = "numeric", genes[color], _expression_label(adata, layer)
    else:
        kind, values, label = _color_values(adata, color, layer=layer)
    if image is not None:
        picture, scale = image
        height, width = picture.shape[:2]
        ax.imshow(picture, extent=(0, width / scale, height / scale, 0), zorder=0)
    drawn_size = spot_size * sample.size_factor * (GRID_COVER if sample.subsampled else 1.0)
    spots = _spot_collection(ax, sample.take(coords), drawn_size, linewidths=0, zorder=1)
    if kind == "categorical":
        colors = _category_colors(adata, color, values.categories, palette)
        spots.set_facecolor(sample.take(_face_colors(values, colors)))
        ax.add_collection(spots)
        _add_legend(ax, values.categories, colors, color)
    else:
        spots.set_array(sample.take(values))
        spots.set_cmap(_missing_grey(cmap))
        spots.set_clim(*_limits(values, vmin, vmax))
        ax.add_collection(spots)
        _add_colorbar(ax, spots, label)
    if outline is not None and outline.any():
        # Flagged spots are few and the point of the map: outlined whether drawn or not.
        flagged = sample_points(np.flatnonzero(outline), max_points, random_state)
        ax.add_collection(
            _spot_collection(ax, flagged.take(coords), drawn_size, facecolors="none",
                             edgecolors=outline_color, linewidths=1.2, zorder=2)
        )  # fmt: skip
    _frame(ax, adata, coords, drawn_size, pixel=image is not None, scalebar=scalebar)
    ax.set_title(color if title is None else title, fontsize=TITLE_SIZE)
    annotate_sample(ax, sample, observation_noun(adata))


def _spot_collection(ax: Axes, offsets: np.ndarray, diameter: float, **style) -> EllipseCollection:
    """Circles of ``diameter`` (data units) at ``offsets``, rasterized when many."""
    n = offsets.shape[0]
    spots = EllipseCollection(
        widths=np.full(n, diameter),
        heights=np.full(n, diameter),
        angles=np.zeros(n),
        units="xy",
        offsets=offsets,
        offset_transform=ax.transData,
        **style,
    )
    # Many spots as a bitmap inside vector output (PDF/SVG) keep files small.
    rasterize(spots, n)
    return spots


def _color_values(
    adata: AnnData, color: str, *, layer: str | None = None
) -> tuple[str, pd.Categorical | np.ndarray, str]:
    """Return ``(kind, values, label)`` for an obs column or a gene.

    ``kind`` is ``"categorical"`` (values a pandas Categorical) or ``"numeric"`` (float
    array, NaN for missing); ``label`` names the quantity for a colour bar.

    Examples
    --------
    >>> import numpy as np, anndata as ad
    >>> adata = ad.AnnData(np.array([[1.0], [3.0]]))
    >>> adata.obs["group"] = ["a", "b"]
    >>> _color_values(adata, "group")[0], _color_values(adata, "0")[1].tolist()
    ('categorical', [1.0, 3.0])
    """
    if not isinstance(color, str):
        raise SpatiomeInputError(f"color must be a string, got {type(color).__name__}")
    if color in adata.obs.columns:
        column = adata.obs[color]
        if isinstance(column.dtype, pd.CategoricalDtype):
            return "categorical", pd.Categorical(column), color
        if pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column):
            return "categorical", pd.Categorical(column.astype(str).where(column.notna())), color
        return "numeric", column.to_numpy(dtype=np.float64, na_value=np.nan), _pretty(color)
    if color in adata.var_names:
        matrix = get_matrix(adata, layer)
        position = adata.var_names.get_loc(color)
        if not isinstance(position, int | np.integer):
            raise SpatiomeInputError(f"gene {color!r} appears more than once in adata.var_names")
        column = matrix[:, [position]]
        values = column.toarray().ravel() if sp.issparse(column) else np.asarray(column).ravel()
        return "numeric", values.astype(np.float64), _expression_label(adata, layer)
    raise SpatiomeInputError(
        f"color {color!r} is neither a column of adata.obs nor a gene in adata.var_names; "
        f"obs columns: {list(adata.obs.columns)[:10]}"
    )


def _gene_columns(adata: AnnData, names: Sequence[str], layer: str | None) -> dict[str, np.ndarray]:
    """Values of the genes among ``names`` (those not also obs columns), as
    :func:`_color_values` gives them, from one column selection of the matrix.

    Examples
    --------
    >>> import numpy as np, anndata as ad
    >>> adata = ad.AnnData(np.array([[1.0, 2.0], [3.0, 4.0]]))
    >>> {k: v.tolist() for k, v in _gene_columns(adata, ["1", "0"], None).items()}
    {'1': [2.0, 4.0], '0': [1.0, 3.0]}
    """
    if not adata.var_names.is_unique:
        return {}  # _color_values says which gene is repeated
    genes = [
        n
        for n in dict.fromkeys(names)
        if isinstance(n, str) and n not in adata.obs.columns and n in adata.var_names
    ]
    if len(genes) < 2:
        return {}
    block = get_matrix(adata, layer)[:, adata.var_names.get_indexer(genes)]
    block = block.toarray() if sp.issparse(block) else np.asarray(block)
    return {gene: block[:, i].astype(np.float64) for i, gene in enumerate(genes)}


def category_palette(names: Sequence) -> dict[str, str]:
    """One colour per name, fixed by the names alone, so that a label keeps its colour in
    every figure.

    The names are put in natural order (``"2"`` before ``"10"``, case ignored) and coloured
    from ``tab10`` (up to 10 names), ``tab20`` (up to 20: its ten strong colours, then
    their light partners) or evenly spaced ``turbo``. Two
    figures that draw the same names, or any subset drawn with the full set's palette, give
    each name the same colour.

    Parameters
    ----------
    names
        Category names (cell types, domains, clusters); duplicates and missing values are
        ignored.

    Returns
    -------
    dict
        Name (as text) -> hex colour.

    Examples
    --------
    >>> palette = category_palette(["Oligo", "Astro", "Neuron"])
    >>> palette == category_palette(["Neuron", "Oligo", "Astro"])
    True
    >>> list(category_palette(["10", "2", "1"]))
    ['1', '2', '10']
    """
    labels = sorted({str(n) for n in names if not pd.isna(n)}, key=natural_key)
    n = len(labels)
    if n <= 10:
        base = colormaps["tab10"].colors
    elif n <= 20:
        # The ten strong colours first, then their light partners: neighbours differ.
        pairs = colormaps["tab20"].colors
        base = [*pairs[0::2], *pairs[1::2]]
    else:
        base = colormaps["turbo"](np.linspace(0.05, 0.95, n))
    return {label: _hex(base[i]) for i, label in enumerate(labels)}


def natural_key(name: object) -> tuple:
    """Sort key that orders numbers inside names numerically.

    Examples
    --------
    >>> sorted(["module 10", "module 9", "Module 1"], key=natural_key)
    ['Module 1', 'module 9', 'module 10']
    """
    parts = re.split(r"(\d+)", str(name).casefold())
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p)


def _category_colors(
    adata: AnnData,
    key: str,
    categories: pd.Index,
    palette: Sequence[str] | Mapping[str, str] | None = None,
) -> list[str]:
    """Colours for ``categories``: ``palette``, ``adata.uns[f"{key}_colors"]`` or
    :func:`category_palette` of the categories."""
    n = len(categories)
    if isinstance(palette, Mapping):
        missing = [c for c in categories if str(c) not in palette]
        if missing:
            raise SpatiomeInputError(f"palette has no colour for {missing[:5]}")
        return [str(palette[str(c)]) for c in categories]
    if palette is not None:
        if len(palette) < n:
            raise SpatiomeInputError(f"palette has {len(palette)} colours for {n} categories")
        return list(palette)[:n]
    stored = adata.uns.get(f"{key}_colors")
    if stored is not None and len(stored) >= n:
        return [str(c) for c in stored][:n]
    colors = category_palette(categories)
    return [colors[str(c)] for c in categories]


def _add_legend(ax: Axes, categories: pd.Index, colors: Sequence[str], title: str) -> None:
    """Legend of round markers outside the right edge of ``ax``."""
    handles = [
        Line2D(
            [],
            [],
            marker="o",
            linestyle="",
            markersize=7,
            markerfacecolor=c,
            markeredgewidth=0,
            label=str(name),
        )
        for name, c in zip(categories, colors, strict=True)
    ]
    ax.legend(
        handles=handles,
        title=title,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        frameon=False,
        fontsize=LABEL_SIZE - 1,
        title_fontsize=LABEL_SIZE,
        ncols=1 if len(handles) <= 14 else 2,
        handletextpad=0.3,
        borderaxespad=0.0,
    )


def _add_colorbar(ax: Axes, mappable, label: str) -> None:
    """Slim colour bar beside ``ax`` with a label."""
    bar = ax.figure.colorbar(mappable, ax=ax, shrink=0.6, aspect=18, pad=0.02)
    bar.set_label(label, fontsize=LABEL_SIZE)
    bar.ax.tick_params(labelsize=LABEL_SIZE - 1)
    bar.outline.set_visible(False)


def _face_colors(values: pd.Categorical, colors: Sequence[str]) -> np.ndarray:
    table = np.array([to_rgba(c) for c in [*colors, MISSING_COLOR]])
    codes = np.asarray(values.codes)
    return table[np.where(codes < 0, len(colors), codes)]


def _missing_grey(cmap: str | Colormap) -> Colormap:
    base = colormaps[cmap] if isinstance(cmap, str) else cmap
    return base.with_extremes(bad=MISSING_COLOR)


def _limits(values: np.ndarray, vmin: float | None, vmax: float | None) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    low = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    high = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if high <= low:
        high = low + 1.0
    return low, high


def _default_spot_size(coords: np.ndarray, max_points: int | None = MAX_POINTS) -> float:
    """Median distance from a spot to its nearest other spot (1 when there is none).

    Beyond ``max_points`` spots the median is taken over the distances of a fixed random
    subset of ``max_points`` spots to their nearest spot among all.
    """
    if coords.shape[0] < 2:
        return 1.0
    queries = sample_points(coords.shape[0], max_points, random_state=0).take(coords)
    distances, _ = cKDTree(coords).query(queries, k=2)
    nearest = distances[:, 1]
    nearest = nearest[nearest > 0]
    return float(np.median(nearest)) if nearest.size else 1.0


def _outline_mask(adata: AnnData, outline: str | np.ndarray) -> np.ndarray:
    if isinstance(outline, str):
        if outline not in adata.obs.columns:
            raise SpatiomeInputError(f"outline={outline!r} is not a column of adata.obs")
        column = adata.obs[outline]
        if not pd.api.types.is_bool_dtype(column):
            raise SpatiomeInputError(
                f"adata.obs[{outline!r}] must be boolean to mark spots to outline, "
                f"got {column.dtype}"
            )
        # A missing flag (a spot left out of the step that set it) is not outlined.
        return column.to_numpy(dtype=bool, na_value=False)
    mask = np.asarray(outline)
    if mask.dtype != bool or mask.shape != (adata.n_obs,):
        raise SpatiomeInputError(
            f"outline must be a boolean mask of length {adata.n_obs} or a boolean obs column"
        )
    return mask


def _tissue_image(adata: AnnData) -> tuple[np.ndarray, float]:
    libraries = adata.uns.get("spatial")
    if not isinstance(libraries, dict) or not libraries:
        raise SpatiomeInputError(
            "show_image=True needs adata.uns['spatial'][library]['images']: read the data "
            "with spatiome.io.read_visium or pass show_image=False"
        )
    library = libraries[next(iter(libraries))]
    images = library.get("images", {})
    scales = library.get("scalefactors", {})
    for resolution in ("hires", "lowres"):
        if resolution in images and f"tissue_{resolution}_scalef" in scales:
            return np.asarray(images[resolution]), float(scales[f"tissue_{resolution}_scalef"])
    raise SpatiomeInputError(
        "adata.uns['spatial'] has no 'hires' or 'lowres' image with its scale factor; "
        "pass show_image=False"
    )


def _frame(
    ax: Axes, adata: AnnData, coords: np.ndarray, spot_size: float, *, pixel: bool, scalebar: bool
) -> None:
    low = coords.min(axis=0) - spot_size
    high = coords.max(axis=0) + spot_size
    ax.set_xlim(low[0], high[0])
    unit = adata.uns.get("spatial_unit")
    if pixel or unit == "pixel":
        ax.set_ylim(high[1], low[1])
    else:
        ax.set_ylim(low[1], high[1])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if scalebar and unit == "um":
        _scale_bar(ax, float(high[0] - low[0]), float(high[1] - low[1]))


def _scale_bar(ax: Axes, width: float, height: float) -> None:
    from matplotlib.font_manager import FontProperties
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    length = _round_length(width / 5)
    label = f"{length / 1000:g} mm" if length >= 1000 else f"{length:g} µm"
    # Anchored just below the lower right corner so that it never covers spots.
    bar = AnchoredSizeBar(
        ax.transData,
        length,
        label,
        loc="upper right",
        frameon=False,
        pad=0.1,
        borderpad=0.0,
        size_vertical=height / 150,
        sep=2,
        fontproperties=FontProperties(size=LABEL_SIZE - 1),
        bbox_to_anchor=(1.0, 0.0),
        bbox_transform=ax.transAxes,
    )
    ax.add_artist(bar)


def _round_length(target: float) -> float:
    """Largest 1, 2 or 5 times a power of ten not above ``target``."""
    if target <= 0:
        return 1.0
    power = 10.0 ** np.floor(np.log10(target))
    for step in (5.0, 2.0, 1.0):
        if step * power <= target:
            return step * power
    return power


def _panel_size(coords: np.ndarray) -> tuple[float, float]:
    span = np.ptp(coords, axis=0)
    ratio = float(span[0] / span[1]) if span[1] > 0 else 1.0
    width = float(np.clip(PANEL_INCHES * ratio, 2.5, 2.2 * PANEL_INCHES))
    # Room on the right for the colour bar or legend.
    return width + 1.2, PANEL_INCHES


def _grid(n: int, ncols: int, panel: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(panel[0] * ncols, panel[1] * nrows),
        layout="constrained",
        squeeze=False,
    )
    return fig, list(axes.ravel())


def _pretty(name: str) -> str:
    known = {
        "total_counts": "total counts",
        "n_genes_by_counts": "detected genes",
        "pct_counts_mt": "mitochondrial counts (%)",
        "pct_counts_ribo": "ribosomal counts (%)",
        "pct_counts_hb": "hemoglobin counts (%)",
    }
    return known.get(name, name.replace("_", " "))


def observation_noun(adata: AnnData, count: int = 2) -> str:
    """``"spot"``/``"spots"`` or ``"cell"``/``"cells"`` for the observations of ``adata``,
    as recorded in ``adata.uns["spatiome"]["observation"]`` (spots when not recorded).

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> adata = ad.AnnData(np.zeros((2, 1)))
    >>> observation_noun(adata), observation_noun(adata, 1)
    ('spots', 'spot')
    >>> adata.uns["spatiome"] = {"observation": "cell"}
    >>> observation_noun(adata)
    'cells'
    """
    info = adata.uns.get("spatiome", {})
    kind = info.get("observation") if isinstance(info, Mapping) else None
    noun = "cell" if kind == "cell" else "spot"
    return noun if count == 1 else f"{noun}s"


def _expression_label(adata: AnnData, layer: str | None) -> str:
    if layer is not None:
        return "counts" if layer == "counts" else layer
    method = adata.uns.get("spatiome", {}).get("normalize", {}).get("method")
    if method == "log1p":
        return "log-normalized expression"
    if method == "pearson":
        return "Pearson residual"
    return "expression"


def _hex(rgb) -> str:
    from matplotlib.colors import to_hex

    return to_hex(rgb)
