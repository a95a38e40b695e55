"""Several samples and several modalities: combine, correct, integrate, and check.

:func:`concat_samples` puts sections into one AnnData with their coordinates kept apart,
:func:`harmonize` corrects batch effects (Harmony, MNN, CCA-style alignment) and
:func:`mixing_metrics` shows what the correction did to sample mixing and to the
biological labels. :func:`multimodal` integrates RNA with a second modality measured on
the same spots (protein, chromatin accessibility, or :func:`image_features` of the
histology image), SpatialGlue-style; it needs ``spatiome[deep]``, imported only when it
runs.
"""

from .batch import concat_samples, harmonize
from .image import image_features
from .metrics import mixing_metrics
from .multimodal import multimodal

__all__ = ["concat_samples", "harmonize", "image_features", "mixing_metrics", "multimodal"]
