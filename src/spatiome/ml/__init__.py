"""Supervised models on spots with honest validation.

:func:`classify` and :func:`regress` score a model under spatially blocked folds
(:func:`spatial_folds`) next to random folds, with permutation importance;
:func:`transfer_labels` carries labels to a new section and
:func:`cross_sample_validate` measures what that costs.
"""

from .folds import spatial_folds
from .models import CrossValidation, classify, regress
from .transfer import cross_sample_validate, transfer_labels

__all__ = [
    "CrossValidation",
    "classify",
    "cross_sample_validate",
    "regress",
    "spatial_folds",
    "transfer_labels",
]
