"""Cell-type deconvolution of spots against a labelled single-cell reference.

:func:`reference_signatures` turns the reference into expected counts per cell type,
:func:`deconvolve` estimates each spot's cell-type fractions (NNLS, RCTD-style
Poisson-log-normal, cell2location-style variational NB; optional CAR smoothing),
:func:`pseudo_spots` and :func:`compare_fractions` measure accuracy on spots of known
composition.
"""

from .deconvolve import deconvolve
from .metrics import compare_fractions
from .reference import reference_signatures
from .simulate import pseudo_spots, split_reference

__all__ = [
    "compare_fractions",
    "deconvolve",
    "pseudo_spots",
    "reference_signatures",
    "split_reference",
]
