"""Plotting: every function reads an AnnData and returns matplotlib Axes or a Figure.

Nothing here calls ``plt.show()`` or selects a backend; figures can be written with
:func:`save` or embedded in HTML with :func:`figure_to_base64_png`.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._core.files import atomic_path
from .._core.validate import SpatiomeInputError
from .deconv import cell_type_colors, cell_type_maps, dominant_cell_type, scatter_pies
from .domains import markers, module_scores
from .embedding import embedding
from .interactions import ligrec_local, nhood_enrichment, niche_composition
from .qc import qc_spatial, qc_violin
from .spatial import category_palette, spatial

__all__ = [
    "category_palette",
    "cell_type_colors",
    "cell_type_maps",
    "dominant_cell_type",
    "embedding",
    "figure_to_base64_png",
    "ligrec_local",
    "markers",
    "module_scores",
    "nhood_enrichment",
    "niche_composition",
    "qc_spatial",
    "qc_violin",
    "save",
    "scatter_pies",
    "spatial",
]


def save(
    fig: Figure | Axes, path: str | os.PathLike[str], *, dpi: int = 200, **savefig_kwargs
) -> Path:
    """Write a figure atomically; the format follows the file suffix (png, pdf, svg, ...).

    The figure is written to a temporary file in the same folder and moved into place with
    ``os.replace``, so a reader never sees a half-written file.

    Parameters
    ----------
    fig
        Figure, or Axes whose figure is written.
    path
        Destination file.
    dpi
        Resolution for raster formats.
    **savefig_kwargs
        Passed to :meth:`matplotlib.figure.Figure.savefig`.

    Returns
    -------
    pathlib.Path
        The written path.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import matplotlib.pyplot as plt
    >>> fig, ax = plt.subplots()
    >>> path = save(fig, pathlib.Path(tempfile.mkdtemp()) / "plot.png")
    >>> path.read_bytes()[:4]
    b'\\x89PNG'
    >>> plt.close(fig)
    """
    figure = _figure(fig)
    target = Path(path)
    fmt = target.suffix.lstrip(".").lower() or "png"
    savefig_kwargs.setdefault("bbox_inches", "tight")
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format=fmt, dpi=dpi, **savefig_kwargs)
    return target


def figure_to_base64_png(
    fig: Figure | Axes,
    *,
    dpi: int = 100,
    max_width: int | None = None,
    colors: int | None = None,
) -> str:
    """Encode a figure as base64 PNG text, for ``<img src="data:image/png;base64,...">``.

    Parameters
    ----------
    fig
        Figure, or Axes whose figure is encoded.
    dpi
        Resolution.
    max_width
        Widest image in pixels: a wider figure is drawn at a lower resolution (never
        below 60 dpi), since a page would only shrink it.
    colors
        Reduce the image to a palette of this many colours (at most 256), which makes
        plots of many spots several times smaller with no visible change; ``None`` keeps
        full colour.

    Returns
    -------
    str

    Examples
    --------
    >>> import base64
    >>> import matplotlib.pyplot as plt
    >>> fig, ax = plt.subplots()
    >>> base64.b64decode(figure_to_base64_png(fig))[:4]
    b'\\x89PNG'
    >>> small = figure_to_base64_png(fig, max_width=300, colors=64)
    >>> len(small) < len(figure_to_base64_png(fig))
    True
    >>> plt.close(fig)
    """
    figure = _figure(fig)
    if max_width is not None:
        width_inches = float(figure.get_size_inches()[0])
        dpi = int(max(60, min(dpi, max_width / max(width_inches, 1e-9))))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    if colors is not None:
        buffer = _reduce_colors(buffer, colors)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _reduce_colors(png: io.BytesIO, colors: int) -> io.BytesIO:
    from PIL import Image

    if not 2 <= colors <= 256:
        raise SpatiomeInputError(f"colors must be between 2 and 256, got {colors!r}")
    png.seek(0)
    with Image.open(png) as image:
        # Octree quantization without dithering keeps flat areas flat (small, sharp files).
        reduced = image.convert("RGB").quantize(
            colors=colors, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE
        )
    out = io.BytesIO()
    reduced.save(out, format="PNG")
    return out


def _figure(fig: Figure | Axes) -> Figure:
    if isinstance(fig, Axes):
        return fig.figure
    if isinstance(fig, Figure):
        return fig
    raise SpatiomeInputError(f"expected a matplotlib Figure or Axes, got {type(fig).__name__}")
