"""spatiome: spatial transcriptomics on AnnData.

Subpackages are imported lazily so that ``import spatiome`` stays fast and never
pulls in optional extras (torch, dask, spatialdata).

Examples
--------
>>> import spatiome as sm
>>> adata = sm.datasets.simulate_tissue(n_spots=400, n_genes=50, random_state=0)
>>> adata.n_obs
400
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_SUBMODULES = (
    "io",
    "datasets",
    "graph",
    "pp",
    "svg",
    "modules",
    "domains",
    "deconv",
    "integrate",
    "interactions",
    "ml",
    "pl",
    "workflow",
)

__all__ = ["__version__", *_SUBMODULES]

if TYPE_CHECKING:  # pragma: no cover
    from . import (  # noqa: F401
        datasets,
        deconv,
        domains,
        graph,
        integrate,
        interactions,
        io,
        ml,
        modules,
        pl,
        pp,
        svg,
        workflow,
    )


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'spatiome' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
