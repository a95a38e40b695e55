"""Pipeline steps for several samples and for a second modality, and their report section.

Several samples (``obs[config.sample_key]`` with two or more values, as made by
:func:`spatiome.integrate.concat_samples`): the PCA embedding is corrected for sample
effects (:func:`spatiome.integrate.harmonize`) before the expression graph, UMAP and
Leiden, and the domain features of ``cluster`` are corrected the same way before they are
clustered. A second modality (``config.modality``): :func:`spatiome.integrate.multimodal`
integrates it with the RNA into ``obs["domain_multimodal"]`` and per-spot modality weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._core.validate import SpatiomeInputError
from .names import MULTIMODAL_DOMAIN_KEY, domain_key
from .report import Section

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import PipelineConfig

logger = logging.getLogger("spatiome")

BATCH_METHODS = ("harmony", "mnn", "cca", "none")
BATCH_TITLES = {
    "harmony": "Harmony",
    "mnn": "mutual nearest neighbours (MNN)",
    "cca": "CCA-style alignment",
}
MODALITY_TITLES = {
    "protein": "protein",
    "atac": "chromatin accessibility",
    "image": "histology image features",
}
#: Neighbours of the expression graph, as :func:`spatiome.pp.reduce` builds it.
_EXPRESSION_NEIGHBORS = 15


def n_samples(data: AnnData, config: PipelineConfig) -> int:
    """Number of samples in ``obs[config.sample_key]`` (1 when the column is absent)."""
    if config.sample_key not in data.obs:
        return 1
    return int(data.obs[config.sample_key].astype(str).nunique())


def corrects_batches(data: AnnData, config: PipelineConfig) -> bool:
    """True when the run holds several samples and a correction method is chosen."""
    return config.batch_correction != "none" and n_samples(data, config) > 1


def run_batch_correction(data: AnnData, config: PipelineConfig) -> list[str]:
    """Correct ``obsm["X_pca"]`` for samples; rebuild the expression graph and UMAP on it.

    The uncorrected embeddings stay in ``obsm["X_pca_uncorrected"]`` (and
    ``["X_umap_uncorrected"]``) so the report can show both.

    Examples
    --------
    >>> import spatiome as sm
    >>> from spatiome.workflow import PipelineConfig
    >>> a = sm.datasets.simulate_tissue(n_spots=300, n_genes=40, random_state=0)
    >>> b = sm.datasets.simulate_tissue(n_spots=300, n_genes=40, random_state=1)
    >>> both = sm.integrate.concat_samples({"a": a, "b": b})
    >>> sm.pp.normalize(both); sm.pp.reduce(both, n_comps=10, umap=False)
    >>> notes = run_batch_correction(both, PipelineConfig(batch_correction="mnn", umap=False))
    >>> both.obsm["X_mnn"].shape, "X_pca_uncorrected" in both.obsm
    ((600, 10), True)
    """
    import scanpy as sc

    from .. import integrate
    from ..pp.reduce import UMAP_MAX_SPOTS, embed_umap

    method = config.batch_correction
    data.obsm["X_pca_uncorrected"] = np.asarray(data.obsm["X_pca"]).copy()
    if "X_umap" in data.obsm:
        data.obsm["X_umap_uncorrected"] = np.asarray(data.obsm["X_umap"]).copy()
    integrate.harmonize(
        data, method=method, sample_key=config.sample_key, use_rep="X_pca",
        random_state=config.seed,
    )  # fmt: skip
    corrected = f"X_{method}"
    k = min(_EXPRESSION_NEIGHBORS, data.n_obs - 1)
    sc.pp.neighbors(data, n_neighbors=k, use_rep=corrected, random_state=config.seed)
    if config.umap:
        embed_umap(
            data, corrected, max_spots=UMAP_MAX_SPOTS, random_state=config.seed, n_neighbors=k
        )
    samples = data.obs[config.sample_key].astype(str).value_counts().sort_index()
    note = (
        f"{len(samples)} samples ({', '.join(f'{s}: {n} spots' for s, n in samples.items())}) "
        f"corrected by {BATCH_TITLES[method]} on the PCA embedding (obsm['{corrected}'])."
    )
    logger.info("integration: %s", note)
    return [note]


def correct_domain_features(data: AnnData, key: str, config: PipelineConfig) -> str | None:
    """Correct a domain method's features (``obsm[f"X_{key}"]``) for samples, in place.

    Returns the ``obsm`` key of the corrected features, or None when nothing was done
    (one sample, or no correction chosen).
    """
    from .. import integrate

    if not corrects_batches(data, config) or f"X_{key}" not in data.obsm:
        return None
    corrected = f"X_{key}_{config.batch_correction}"
    integrate.harmonize(
        data, method=config.batch_correction, sample_key=config.sample_key,
        use_rep=f"X_{key}", key_added=corrected, random_state=config.seed,
    )  # fmt: skip
    return corrected


def load_modality(data: AnnData, config: PipelineConfig) -> AnnData | None:
    """The second modality of the run's spots, or None when the config names none.

    ``modality_input`` is read as an ``.h5ad`` (spots x features, the same spot names
    as the RNA); with ``modality="image"`` and no input, features are computed from the
    histology image stored with the RNA (:func:`spatiome.integrate.image_features`).
    """
    if config.modality is None:
        return None
    if config.modality_input is None:
        if config.modality != "image":
            raise SpatiomeInputError(
                f"modality {config.modality!r} needs modality_input: the path of an .h5ad "
                "with the second modality's counts on the same spots"
            )
        from ..integrate import image_features

        return image_features(data)
    from ..io import read_h5ad

    path = Path(config.modality_input)
    if not path.is_file():
        raise SpatiomeInputError(
            f"modality_input {path} does not exist: pass the path of an .h5ad with the "
            f"{MODALITY_TITLES[config.modality]} data of the same spots"
        )
    other = read_h5ad(path)
    shared = data.obs_names.intersection(other.obs_names)
    if shared.size == 0:
        raise SpatiomeInputError(
            f"modality_input {path} shares no spot names with the RNA data: use the same "
            "barcodes (obs_names) in both"
        )
    return other


def run_multimodal(
    data: AnnData, other: AnnData, n_domains: int, config: PipelineConfig
) -> list[str]:
    """Integrate the RNA with the second modality into ``obs["domain_multimodal"]``."""
    from ..integrate import multimodal

    if not other.obs_names.equals(data.obs_names) and data.obs_names.isin(other.obs_names).all():
        other = other[data.obs_names].copy()  # the spots quality control kept
    multimodal(
        data, other, modality=config.modality, n_domains=n_domains,
        cluster_key=MULTIMODAL_DOMAIN_KEY, random_state=config.seed,
    )  # fmt: skip
    weights = data.obsm["X_multimodal_weights"]
    mean = weights.mean(axis=0)
    info = data.uns["spatiome"]["X_multimodal"]
    return [
        f"RNA + {MODALITY_TITLES[config.modality]} ({other.n_vars} features): "
        f"{int(data.obs[MULTIMODAL_DOMAIN_KEY].nunique())} domains; mean modality weights "
        + ", ".join(f"{name} {value:.2f}" for name, value in mean.items())
        + f"; {info['n_epochs']} epochs in {info['train_seconds']:.1f} s."
    ]


def label_column(data: AnnData, config: PipelineConfig) -> str | None:
    """The biological labels against which conservation is measured."""
    if config.label_key is not None:
        if config.label_key not in data.obs:
            raise SpatiomeInputError(
                f"label_key {config.label_key!r} is not a column of the data's obs "
                f"(columns: {list(data.obs.columns)[:10]})"
            )
        return config.label_key
    for key in ("domain", *(domain_key(config, m) for m in config.domain_methods), "leiden"):
        if key in data.obs:
            return key
    return None


def mixing_table(data: AnnData, config: PipelineConfig) -> pd.DataFrame:
    """Batch mixing and label conservation before and after correction (rows: embeddings)."""
    from ..integrate import mixing_metrics

    label = label_column(data, config)
    rows = {}
    embeddings = {"uncorrected PCA": "X_pca_uncorrected"}
    embeddings[f"{BATCH_TITLES[config.batch_correction]}"] = f"X_{config.batch_correction}"
    for name, key in embeddings.items():
        metrics = mixing_metrics(
            data, key, sample_key=config.sample_key, label_key=label, random_state=config.seed
        )
        rows[name] = metrics
    table = pd.DataFrame(rows).T.rename_axis("embedding")
    table.attrs["label_key"] = label
    return table


def integration_section(
    data: AnnData,
    notes: list[str],
    mixing: pd.DataFrame | None,
    config: PipelineConfig,
    figure: Callable[[Any], str],
) -> Section:
    """The report's "Integration" section: samples, mixing metrics, modality weights."""
    from .. import pl

    section = Section("Integration", "integration")
    for note in notes:
        section.add_text(note)
    if mixing is not None:
        label = mixing.attrs.get("label_key")
        section.add_html("<h3>Sample mixing and label conservation</h3>")
        section.add_table(mixing.round(3), sortable=False, css_class="metrics")
        section.add_text(
            "ilisi and clisi are harmonypy's median LISI of the samples and of the labels "
            "(ilisi: 1 when samples stay apart, up to the number of samples when fully "
            "mixed); batch_mixing and label_purity rescale them to 0-1 as scIB does, and "
            "batch_silhouette also goes from 0 (samples apart) to 1 (mixed); label_purity "
            f"and label_silhouette measure how well the labels in obs['{label}'] stay apart "
            "(1: kept). Good correction raises mixing without lowering the label scores."
        )
        for key, title in (("X_umap_uncorrected", "before"), ("X_umap", "after")):
            if key in data.obsm:
                basis = key.removeprefix("X_")
                section.add_figure(
                    figure(pl.embedding(data, config.sample_key, basis=basis).figure),
                    f"UMAP {title} correction, coloured by sample.",
                )
    if "X_multimodal_weights" in data.obsm:
        weights = data.obsm["X_multimodal_weights"]
        section.add_html("<h3>Second modality</h3>")
        section.add_figure(
            figure(pl.spatial(data, MULTIMODAL_DOMAIN_KEY).figure),
            "Domains of the integrated RNA and second-modality embedding.",
        )
        column = f"weight_{weights.columns[0]}"
        data.obs[column] = weights.iloc[:, 0].to_numpy()
        section.add_figure(
            figure(pl.spatial(data, column).figure),
            f"Per-spot weight of the {weights.columns[0]} modality in the integrated embedding "
            f"(the {weights.columns[1]} weight is one minus it).",
        )
        section.add_table(
            weights.describe().loc[["mean", "25%", "50%", "75%"]].T.round(3),
            sortable=False,
            css_class="metrics",
        )
    return section
