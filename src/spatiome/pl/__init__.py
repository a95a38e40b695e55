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
from .deconv import cell_type_maps, dominant_cell_type, scatter_pies
from .domains import markers, module_scores
from .embedding import embedding
from .qc import qc_spatial, qc_violin
from .spatial import spatial

__all__ = [
    "cell_type_maps",
    "dominant_cell_type",
    "embedding",
    "figure_to_base64_png",
    "markers",
    "module_scores",
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


def figure_to_base64_png(fig: Figure | Axes, *, dpi: int = 110) -> str:
    """Encode a figure as base64 PNG text, for ``<img src="data:image/png;base64,...">``.

    Examples
    --------
    >>> import base64
    >>> import matplotlib.pyplot as plt
    >>> fig, ax = plt.subplots()
    >>> base64.b64decode(figure_to_base64_png(fig))[:4]
    b'\\x89PNG'
    >>> plt.close(fig)
    """
    buffer = io.BytesIO()
    _figure(fig).savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(fig: Figure | Axes) -> Figure:
    if isinstance(fig, Axes):
        return fig.figure
    if isinstance(fig, Figure):
        return fig
    raise SpatiomeInputError(f"expected a matplotlib Figure or Axes, got {type(fig).__name__}")
