"""The first pipeline slice: QC, normalize, reduce, domains, Moran, report.

Everything here composes public functions; a notebook user gets the same results by
calling them in the same order.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._core.files import atomic_path, write_text_atomic
from .._core.progress import listen
from .._core.validate import SpatiomeInputError, check_adata, get_spatial
from .cache import (
    CACHE_FOLDER,
    StepCache,
    apply_delta,
    delta_since,
    fingerprint,
    snapshot,
    step_dependencies,
    step_parameters,
)
from .dask_cluster import check_scheduler_address, cluster_summary, connect_scheduler
from .inputs import check_writable, load_reference, output_errors, reference_files
from .integration import (
    BATCH_METHODS,
    MODALITY_TITLES,
    correct_domain_features,
    load_modality,
    mixing_table,
    run_batch_correction,
    run_multimodal,
)
from .integration import (
    n_samples as count_samples,
)
from .interactions import run_interactions, run_neighbourhoods, write_interaction_tables
from .names import (
    DECONV_METHODS,
    DECONV_TITLES,
    DOMAIN_METHODS,
    DOMAIN_TITLES,
    MODULE_METHODS,
    MODULE_TITLES,
    MULTIMODAL_DOMAIN_KEY,
    ORGANISM_CHOICES,
    OUTPUT_FORMATS,
    SVG_METHODS,
    SVG_TITLES,
    domain_key,
)
from .outputs import (
    LOG_NAME,
    StepLog,
    attach_log,
    prepare_output_folder,
    previous_outputs,
    publish,
    staged_outputs,
    where,
)
from .provenance import Provenance, peak_rss_gb
from .removal import (
    Removal,
    remove_low_quality,
    restore_matrices,
    restore_removed,
    restore_source,
    share_counts,
)
from .report import write_report
from .sections import module_column, report_sections, subtitle

logger = logging.getLogger("spatiome")


@dataclass
class PipelineConfig:
    """Parameters of the pipeline; every field is recorded in the provenance.

    Attributes
    ----------
    seed
        Random seed for every stochastic step (PCA solver, UMAP, Leiden).
    target_sum
        Library size after normalization (None: the median total count).
    n_comps, n_top_genes, umap
        PCA components, highly variable genes (None: all genes), whether to run UMAP, for
        the expression embedding. The domain methods keep their own benchmark-chosen
        features (``domains.cluster``: 3,000 genes, 30 components).
    graph_method
        Spatial graph: "auto" (the 10x array grid when array_row/array_col exist: hex for
        Visium, square for Visium HD bins; else kNN),
        "grid", "knn", "radius" or "delaunay".
    n_spatial_neighbors
        k of the kNN spatial graph.
    resolution, n_domains
        Leiden resolution, or a target number of clusters (overrides the resolution).
    svg_methods
        Spatially variable gene tests to run, in order; the first one drives ``svg.csv``,
        the summary and the maps. Any of "moran", "geary", "sparkx", "spatialde",
        "trendseek".
    fdr
        q-value threshold for calling spatially variable genes.
    min_gene_counts
        Genes with fewer counts in total over the analysed spots are not tested for
        spatial variation (SpatialDE's rule: on the mouse olfactory bulb, genes seen once or
        twice make up 22 of SpatialDE's 90 calls without it).
    n_top_maps
        How many top spatial genes the report maps.
    trendseek_permutations
        Permutations per gene for trendseek (with early stopping).
    spatial_qc
        Flag low-quality spots with :func:`spatiome.pp.quality_flags` (floors, sample-wide
        MAD outliers, SpotSweeper local outliers, regional defects) into
        ``obs["low_quality"]`` and ``obs["low_quality_reason"]``.
    qc_remove
        Leave the flagged spots out of normalization and every statistic (``[qc] remove``
        in a configuration file). They stay in ``results.h5ad`` with their counts, flags
        and reasons, and missing values for the statistics. False keeps them in.
    doublets
        Score doublets: True, False, or None to decide from the data (single-cell
        resolution: Xenium input, or a median nearest-neighbour distance under 20 um).
    domain_methods
        Spatial domain methods, in order; the first one drives the markers. Any of
        "cluster" (smoothed principal components + Gaussian mixture; the default, the best
        and fastest method across three DLPFC sections, see docs/domains.md), "bison",
        "gnn" (needs torch).
        One method writes ``obs["spatial_domain"]`` (the API's ``key_added`` default),
        several write ``obs[f"domain_{method}"]`` each
        (:func:`spatiome.workflow.names.domain_key`); the number of domains is
        ``n_domains``, or the number of Leiden clusters when that is None.
    n_gene_groups
        BISON's number of discriminating gene groups.
    n_markers
        Marker genes per domain shown in the report.
    module_methods
        Gene co-expression module methods run on the spatially variable genes of the first
        SVG test (at most ``max_module_genes``, most significant first): "stihc", "aeh".
    n_patterns
        Number of AEH patterns.
    max_module_genes
        Largest number of spatially variable genes grouped into modules.
    reference
        Path of a labelled single-cell reference (``.h5ad``, raw counts) for cell-type
        deconvolution; None skips the step.
    reference_labels
        Cell-type column of the reference's ``obs``.
    deconv_method
        Deconvolution method: "rctd" (default), "nnls" or "nb_vi" (needs torch).
    deconv_smoothing
        Strength of the CAR spatial prior on the fractions (0: off; "rctd"/"nnls" only).
    sample_key
        ``obs`` column naming each spot's sample; with two or more samples (see
        :func:`spatiome.integrate.concat_samples`) the run corrects sample effects.
    batch_correction
        How sample effects are corrected: "harmony" (default), "mnn", "cca" or "none". The
        PCA embedding is corrected before the expression graph, UMAP and Leiden; the
        features of the "cluster" domain method are corrected the same way.
    label_key
        ``obs`` column of biological labels against which the report measures how well
        correction keeps them apart (default: simulated domains, else the first domain
        method's labels, else Leiden).
    modality
        Kind of a second modality on the same spots: "protein", "atac" or "image"; None
        (default) for RNA alone. Integrated with the RNA SpatialGlue-style (needs torch)
        into ``obs["domain_multimodal"]``.
    modality_input
        ``.h5ad`` with the second modality (same spot names). With ``modality="image"``
        and no input, features are computed from the histology image stored with the data.
    group_key
        ``obs`` column of the groups whose neighbourhoods are compared (cell types,
        clusters). Default: ``label_key``, else an ``obs["cell_type"]`` column, else the
        most abundant cell type of each spot from deconvolution, else the first domain
        method's domains (see :func:`spatiome.workflow.interactions.interaction_groups`).
        The ``neighbourhoods`` step runs when one of these can exist: with a domain
        method, a reference, ``group_key`` or ``label_key``.
    n_niches
        Number of niches (clusters of neighbourhood composition); None chooses it by
        silhouette. Niches need cell types: labels, ``group_key`` or deconvolution.
    interactions
        Score ligand-receptor pairs for spatial co-expression
        (:func:`spatiome.interactions.ligrec`; ``[interactions] run``, ``--interactions``).
    lr_resource
        Ligand-receptor pairs: a resource name of liana's table ("consensus") or the path
        of a CSV with ``ligand`` and ``receptor`` columns.
    organism
        "human", "mouse", or "auto" (from the case of the gene symbols).
    lr_permutations
        Spot permutations of the ligand-receptor tests between pairs of groups (0: no
        group p-values); the tissue-wide test of each pair is analytic.
    output_format
        How the annotated data are written: "h5ad" (``results.h5ad``, default),
        "spatialdata" (a SpatialData zarr store ``results.zarr`` instead, needs the
        ``spatialdata`` extra) or "both".
    dask_scheduler
        Address of a running Dask scheduler (``"tcp://host:8786"``; ``[dask] scheduler`` in
        a configuration file, ``--dask-scheduler`` on the command line); None (default)
        runs everything in this process. The per-gene and per-block work of the steps in
        :data:`spatiome.workflow.dask_cluster.CLUSTER_STEPS` then runs on the cluster, with
        results identical to a local run: the address is recorded in the provenance but
        keys no cached step. Needs the ``dask`` extra.
    """

    seed: int = 0
    target_sum: float | None = None
    n_comps: int = 30
    n_top_genes: int | None = 2000
    umap: bool = True
    graph_method: str = "auto"
    n_spatial_neighbors: int = 6
    resolution: float = 1.0
    n_domains: int | None = None
    svg_methods: tuple[str, ...] = ("moran", "sparkx")
    fdr: float = 0.05
    min_gene_counts: int = 3
    n_top_maps: int = 6
    trendseek_permutations: int = 500
    spatial_qc: bool = True
    qc_remove: bool = True
    doublets: bool | None = None
    domain_methods: tuple[str, ...] = ("cluster",)
    n_gene_groups: int = 4
    n_markers: int = 3
    module_methods: tuple[str, ...] = ("stihc",)
    n_patterns: int = 5
    max_module_genes: int = 300
    reference: str | None = None
    reference_labels: str = "cell_type"
    deconv_method: str = "rctd"
    deconv_smoothing: float = 0.0
    sample_key: str = "sample"
    batch_correction: str = "harmony"
    label_key: str | None = None
    modality: str | None = None
    modality_input: str | None = None
    group_key: str | None = None
    n_niches: int | None = None
    interactions: bool = False
    lr_resource: str = "consensus"
    organism: str = "auto"
    lr_permutations: int = 199
    output_format: str = "h5ad"
    dask_scheduler: str | None = None

    def __post_init__(self) -> None:
        if self.dask_scheduler is not None:
            self.dask_scheduler = check_scheduler_address(self.dask_scheduler)
        if self.output_format not in OUTPUT_FORMATS:
            raise SpatiomeInputError(
                f"output_format must be one of {OUTPUT_FORMATS}, got {self.output_format!r}"
            )
        if self.batch_correction not in BATCH_METHODS:
            raise SpatiomeInputError(
                f"batch_correction must be one of {BATCH_METHODS}, got {self.batch_correction!r}"
            )
        if self.modality is not None and self.modality not in MODALITY_TITLES:
            raise SpatiomeInputError(
                f"modality must be one of {tuple(MODALITY_TITLES)} or None, got {self.modality!r}"
            )
        if self.modality_input is not None:
            if self.modality is None:
                raise SpatiomeInputError(
                    "modality_input is set but modality is not: say which kind it is "
                    f"({tuple(MODALITY_TITLES)})"
                )
            self.modality_input = str(self.modality_input)
        if self.deconv_method not in DECONV_METHODS:
            raise SpatiomeInputError(
                f"deconv_method must be one of {DECONV_METHODS}, got {self.deconv_method!r}"
            )
        if not (self.deconv_smoothing >= 0):
            raise SpatiomeInputError(
                f"deconv_smoothing must be >= 0, got {self.deconv_smoothing!r}"
            )
        if self.reference is not None:
            self.reference = str(self.reference)
        if self.organism not in ORGANISM_CHOICES:
            raise SpatiomeInputError(
                f"organism must be one of {ORGANISM_CHOICES}, got {self.organism!r}"
            )
        self.lr_resource = str(self.lr_resource)
        self.svg_methods = _method_names("svg_methods", self.svg_methods, SVG_METHODS, True)
        self.domain_methods = _method_names(
            "domain_methods", self.domain_methods, DOMAIN_METHODS, False
        )
        self.module_methods = _method_names(
            "module_methods", self.module_methods, MODULE_METHODS, False
        )
        if self.graph_method not in GRAPH_METHODS:
            raise SpatiomeInputError(
                f"graph_method must be one of {GRAPH_METHODS}, got {self.graph_method!r}"
            )
        for name, (low, high, integer) in NUMERIC_RANGES.items():
            _check_range(name, getattr(self, name), low, high, integer)


#: Allowed values of the numeric parameters: (lowest, highest, integer); None is open.
#: Bounds are inclusive, except fdr's, which lies strictly between 0 and 1.
NUMERIC_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "seed": (0, 2**32 - 1, True),
    "target_sum": (1e-300, None, False),
    "n_comps": (2, None, True),
    "n_top_genes": (2, None, True),
    "n_spatial_neighbors": (1, None, True),
    "resolution": (1e-300, None, False),
    "n_domains": (2, None, True),
    "fdr": (0.0, 1.0, False),
    "min_gene_counts": (0, None, True),
    "n_top_maps": (0, None, True),
    "trendseek_permutations": (19, None, True),
    "n_gene_groups": (1, None, True),
    "n_markers": (1, None, True),
    "n_patterns": (1, None, True),
    "max_module_genes": (4, None, True),
    "deconv_smoothing": (0.0, None, False),
    "n_niches": (2, None, True),
    "lr_permutations": (0, None, True),
}
GRAPH_METHODS = ("auto", "grid", "knn", "radius", "delaunay")


def _check_range(
    name: str, value: Any, low: float | None, high: float | None, integer: bool
) -> None:
    """Raise unless ``value`` is None or a number of the right kind within [low, high].

    Examples
    --------
    >>> try:
    ...     PipelineConfig(fdr=2.0)
    ... except SpatiomeInputError as err:
    ...     print(err)
    fdr must be a number strictly between 0 and 1, got 2.0
    """
    if value is None:
        return
    kind = "an integer" if integer else "a number"
    if name == "fdr":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
            raise SpatiomeInputError(
                f"fdr must be a number strictly between 0 and 1, got {value!r}"
            )
        return
    wrong_type = isinstance(value, bool) or not isinstance(
        value, int | np.integer if integer else int | float | np.integer | np.floating
    )
    if low is not None and low == 1e-300:
        bounds = "greater than 0"
    elif high is None:
        bounds = f"at least {low}"
    else:
        bounds = f"between {low} and {high}"
    if (
        wrong_type
        or not np.isfinite(value)
        or (low is not None and value < low)
        or (high is not None and value > high)
    ):
        raise SpatiomeInputError(f"{name} must be {kind} {bounds}, got {value!r}")


def _method_names(field_name: str, names, allowed: tuple[str, ...], required: bool):
    methods = (names,) if isinstance(names, str) else tuple(names)
    unknown = [m for m in methods if m not in allowed]
    if (required and not methods) or unknown or len(set(methods)) != len(methods):
        raise SpatiomeInputError(
            f"{field_name} must be distinct names from {allowed}, got {list(methods)}"
        )
    return methods


@dataclass
class PipelineResult:
    """What a run produced: the annotated data, the SVG tables, a summary and file paths.

    ``svg`` is the table of the first method in ``config.svg_methods``; ``svg_tables``
    holds every method's table by name.
    """

    adata: AnnData
    svg: pd.DataFrame
    summary: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    svg_tables: dict[str, pd.DataFrame] = field(default_factory=dict)


def pipeline_steps(config: PipelineConfig, n_samples: int = 1) -> tuple[str, ...]:
    """The steps a run with ``config`` on ``n_samples`` samples performs, in order.

    Examples
    --------
    >>> pipeline_steps(PipelineConfig(svg_methods=("sparkx",)))[-6:]
    ('domains_cluster', 'markers', 'neighbourhoods', 'sparkx', 'modules_stihc', 'report')
    >>> pipeline_steps(PipelineConfig(interactions=True))[-6:]
    ('neighbourhoods', 'interactions', 'moran', 'sparkx', 'modules_stihc', 'report')
    >>> pipeline_steps(PipelineConfig(modality="image"), n_samples=2)[5:8]
    ('reduce', 'integration', 'leiden')
    """
    domain_steps = tuple(f"domains_{m}" for m in config.domain_methods)
    correct = n_samples > 1 and config.batch_correction != "none"
    has_groups = bool(domain_steps or config.reference or config.group_key or config.label_key)
    return (
        "qc",
        "spatial_qc",
        "doublets",
        "normalize",
        "graph",
        "reduce",
        *(("integration",) if correct else ()),
        "leiden",
        *(("n_domains",) if domain_steps and config.n_domains is None else ()),
        *domain_steps,
        *(("markers",) if domain_steps else ()),
        *(("multimodal",) if config.modality else ()),
        *(("deconvolution",) if config.reference else ()),
        *(("neighbourhoods",) if has_groups else ()),
        *(("interactions",) if config.interactions else ()),
        *config.svg_methods,
        *(f"modules_{m}" for m in config.module_methods),
        "report",
    )


def make_names_unique(data: AnnData) -> list[str]:
    """Make repeated gene and spot names unique in place (as scanpy's ``var_names_make_unique``
    does: ``-1``, ``-2`` ... appended to the repeats); one note per kind of name changed.

    Examples
    --------
    >>> import anndata, numpy as np
    >>> a = anndata.AnnData(np.ones((2, 3)))
    >>> a.var_names = ["Actb", "Gapdh", "Actb"]
    >>> make_names_unique(a)
    ['1 gene name occurs more than once (Actb): the repeats were renamed Actb-1 and so on']
    >>> list(a.var_names)
    ['Actb', 'Gapdh', 'Actb-1']
    """
    notes = []
    for axis, noun in (("var", "gene"), ("obs", "spot")):
        names = getattr(data, f"{axis}_names")
        if names.is_unique:
            continue
        repeated = list(dict.fromkeys(names[names.duplicated()]))
        shown = ", ".join(map(str, repeated[:5])) + (", ..." if len(repeated) > 5 else "")
        plural = (
            f"{len(repeated)} {noun} names occur" if len(repeated) > 1 else f"1 {noun} name occurs"
        )
        getattr(data, f"{axis}_names_make_unique")()
        notes.append(
            f"{plural} more than once ({shown}): the repeats were renamed {repeated[0]}-1 and so on"
        )
        logger.warning("input: %s", notes[-1])
    return notes


#: Below this median distance (um) to the nearest neighbour, observations are single cells.
SINGLE_CELL_SPACING_UM = 20.0
#: Readers whose observations are known: cells, or spots/bins on an array.
_READER_OBSERVATIONS = {"read_xenium": "cell", "read_visium": "spot", "read_visium_hd": "spot"}


def observation_kind(data: AnnData) -> str:
    """Whether the observations are single cells (``"cell"``) or spots of several (``"spot"``).

    In order: ``uns["spatiome"]["observation"]`` when set; the reader (Xenium: cells;
    Visium, Visium HD: spots); with coordinates in micrometres, a median nearest-neighbour
    distance under 20 um means cells; otherwise the geometry decides: spots sit on a
    regular array (most nearest-neighbour distances within 5% of the median: ST, Visium,
    Visium HD), while cells (seqFISH, MERFISH, CosMx, segmented images) and Slide-seq beads
    are scattered irregularly. Slide-seq's 10 um beads count as cells: most hold one.

    Examples
    --------
    >>> import spatiome as sm
    >>> spots = sm.datasets.simulate_tissue(n_spots=300, n_genes=20)
    >>> cells = sm.datasets.simulate_tissue(n_spots=300, n_genes=20, layout="random")
    >>> observation_kind(spots), observation_kind(cells)
    ('spot', 'cell')
    """
    from scipy.spatial import cKDTree

    info = data.uns.get("spatiome", {})
    stated = info.get("observation") if isinstance(info, dict) else None
    if stated in ("cell", "spot"):
        return str(stated)
    source = info.get("source", {}) if isinstance(info, dict) else {}
    reader = source.get("reader") if isinstance(source, dict) else None
    if reader in _READER_OBSERVATIONS:
        return _READER_OBSERVATIONS[reader]
    if data.n_obs < 3:
        return "spot"
    coords = get_spatial(data)
    sample = coords[:: max(1, data.n_obs // 5000)]
    distances, _ = cKDTree(coords).query(sample, k=2)
    nearest = distances[:, 1]
    median = float(np.median(nearest))
    if data.uns.get("spatial_unit") == "um":
        return "cell" if median < SINGLE_CELL_SPACING_UM else "spot"
    on_lattice = float(np.mean(np.abs(nearest - median) <= 0.05 * median))
    return "spot" if on_lattice >= 0.5 else "cell"


def run_spatial_qc(data: AnnData, config: PipelineConfig) -> list[str]:
    """Flag low-quality spots the way the pipeline does; return notes for the report.

    Runs :func:`spatiome.pp.quality_flags` with its defaults (per sample when the data
    holds several), which writes ``obs["low_quality"]`` and ``obs["low_quality_reason"]``.
    Whether the flagged spots are removed is decided afterwards (``config.qc_remove``).

    Examples
    --------
    >>> import spatiome as sm
    >>> tissue = sm.datasets.simulate_tissue(n_spots=400, n_genes=30, random_state=0)
    >>> sm.pp.qc_metrics(tissue)
    >>> notes = run_spatial_qc(tissue, PipelineConfig())
    >>> tissue.obs["low_quality"].dtype
    dtype('bool')
    """
    from .. import pp
    from ..pp.quality import QUALITY_REASONS

    if not config.spatial_qc:
        return ["spatial QC switched off"]
    sample_key = config.sample_key if count_samples(data, config) > 1 else None
    pp.quality_flags(data, sample_key=sample_key)
    record = data.uns["spatiome"]["quality_flags"]
    notes = [str(note) for note in record.get("notes", [])]
    unit = data.uns["spatiome"].get("observation", "spot")
    flagged = int(data.obs["low_quality"].sum())
    counted = record.get("n_by_reason", {})
    detail = ", ".join(
        f"{QUALITY_REASONS.get(reason, reason)}: {n}" for reason, n in counted.items() if n
    )
    notes.append(
        f"{flagged} {unit}{'s' if flagged != 1 else ''} flagged as low quality"
        + (f" ({detail})" if detail else "")
    )
    for note in notes:
        logger.info("spatial QC: %s", note)
    return notes


def run_doublets(data: AnnData, config: PipelineConfig) -> list[str]:
    """Score doublets when asked, or automatically on single-cell-resolution data."""
    from .. import pp

    if config.doublets is None:
        wanted = data.uns["spatiome"].get("observation", observation_kind(data)) == "cell"
    else:
        wanted = config.doublets
    if not wanted:
        reason = "switched off" if config.doublets is False else (
            "each spot holds several cells, so a doublet is not defined; set doublets = true "
            "to score single-cell data that was not recognized as such"
        )  # fmt: skip
        return [f"doublet scoring skipped: {reason}"]
    pp.doublets(data, random_state=config.seed)
    note = f"{int(data.obs['doublet'].sum())} doublets called"
    logger.info("doublets: %s", note)
    return [note]


def run_domain_method(
    data: AnnData, method: str, n_domains: int, config: PipelineConfig
) -> list[str]:
    """Run one spatial domain method into ``obs[domain_key(config, method)]``; return notes.

    The column is ``"spatial_domain"`` when ``config`` has one domain method and
    ``f"domain_{method}"`` when it has several (:func:`spatiome.workflow.names.domain_key`).

    ``"cluster"`` reads the log-normalized ``X``; BISON reads the raw counts; the graph
    attention autoencoder preprocesses the counts itself.

    Examples
    --------
    >>> import spatiome as sm
    >>> tissue = sm.datasets.simulate_tissue(n_spots=300, n_genes=40, random_state=0)
    >>> sm.pp.normalize(tissue)
    >>> notes = run_domain_method(tissue, "cluster", 3, PipelineConfig())
    >>> tissue.obs["spatial_domain"].nunique()
    3
    """
    from .. import domains

    key = domain_key(config, method)
    if method == "cluster":
        domains.cluster(data, n_domains, key_added=key, random_state=config.seed)
        corrected = correct_domain_features(data, key, config)
        if corrected is not None:
            domains.cluster(
                data, n_domains, use_rep=corrected, key_added=key, random_state=config.seed
            )
    elif method == "bison":
        domains.bison(
            data, n_domains, config.n_gene_groups, layer="counts", key_added=key,
            random_state=config.seed,
        )  # fmt: skip
    elif method == "gnn":
        from ..domains.gnn import gnn

        gnn(data, n_domains, layer="counts", key_added=key, random_state=config.seed)
    else:
        raise SpatiomeInputError(f"unknown domain method {method!r}; choose from {DOMAIN_METHODS}")
    notes = []
    if method != "cluster":  # cluster refits around tiny domains itself
        before = int(data.obs[key].nunique())
        domains.merge_small_domains(data, key)
        merged = before - int(data.obs[key].nunique())
        if merged:
            notes.append(
                f"{DOMAIN_TITLES[method]}: {merged} domain(s) of fewer than 5 spots merged "
                "into their spatial neighbours"
            )
    found = int(data.obs[key].nunique())
    return [f"{DOMAIN_TITLES[method]}: {found} domains", *notes]


def run_choose_n_domains(data: AnnData, config: PipelineConfig) -> tuple[int, list[str]]:
    """The number of domains when the run does not set one: chosen from the data by
    :func:`spatiome.domains.choose_n_domains` (eigengap of the feature graph, or the
    mixture's BIC elbow); the number and a note with the reason.

    Examples
    --------
    >>> import spatiome as sm
    >>> tissue = sm.datasets.simulate_tissue(n_spots=400, n_genes=60, random_state=0)
    >>> sm.pp.normalize(tissue)
    >>> k, notes = run_choose_n_domains(tissue, PipelineConfig())
    >>> 2 <= k <= 15 and notes[0].startswith(f"{k} domains")
    True
    """
    from .. import domains

    chosen = domains.choose_n_domains(data, random_state=config.seed)
    reason = str(data.uns["spatiome"]["n_domains"].get("reason", "")).rstrip(".")
    reason = reason.removeprefix(f"{chosen} domains:").strip()
    note = f"{chosen} domains, a number chosen from the data" + (f": {reason}" if reason else "")
    logger.info("n_domains: %s", note)
    return chosen, [note + ". Set n_domains to choose it yourself."]


def run_markers(data: AnnData, config: PipelineConfig) -> pd.DataFrame:
    """Marker genes of the first domain method's domains (Wilcoxon rank-sum, equal to scanpy's)."""
    from .. import domains

    key = domain_key(config, config.domain_methods[0])
    bison_key = domain_key(config, "bison") if "bison" in config.domain_methods else None
    return domains.markers(data, key, bison_key=bison_key)


def run_deconvolution(data: AnnData, reference: AnnData, config: PipelineConfig) -> list[str]:
    """Cell-type fractions of every spot into ``obsm['cell_type_fractions']``; notes."""
    from .. import deconv

    signatures = deconv.reference_signatures(reference, config.reference_labels)
    fractions = deconv.deconvolve(
        data, signatures, method=config.deconv_method, layer="counts",
        smoothing=config.deconv_smoothing, random_state=config.seed,
    )  # fmt: skip
    info = data.uns["spatiome"]["cell_type_fractions"]
    notes = [
        f"{DECONV_TITLES[config.deconv_method]} against {signatures.shape[1]} cell types on "
        f"{info['n_genes']} informative genes shared with the reference."
    ]
    if "sigma" in info:
        notes.append(
            f"Per-gene platform effect sd {info['platform_effect_sd']:.2f} (natural log); "
            f"gene-level noise sigma {info['sigma']:.2f}."
        )
    missing = int(fractions.isna().any(axis=1).sum())
    if missing:
        notes.append(f"{missing} spots have no counts in the shared genes and no estimate.")
    return notes


def module_genes(data: AnnData, table: pd.DataFrame, config: PipelineConfig) -> list[str]:
    """The spatially variable genes grouped into modules: significant, most significant first.

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"qval": [0.5, 0.01, 0.001, 0.02, 0.03, 0.04]}, index=list("abcdef"))
    >>> module_genes(None, table, PipelineConfig(max_module_genes=4))
    ['c', 'b', 'd', 'e']
    """
    called = table[table["qval"] < config.fdr].sort_values("qval", kind="stable")
    return [str(g) for g in called.index[: config.max_module_genes]]


def run_module_method(
    data: AnnData, method: str, genes: list[str], config: PipelineConfig
) -> tuple[pd.DataFrame | None, list[str]]:
    """Group ``genes`` into spatial co-expression modules; the table (or None) and notes."""
    if len(genes) < 4:
        return None, [f"{MODULE_TITLES[method]} skipped: {len(genes)} spatially variable genes"]
    from .. import modules

    key = f"module_{method}"
    if method == "stihc":
        table = modules.stihc(data, genes=genes, random_state=config.seed, key_added=key)
    elif method == "aeh":
        table = modules.aeh(
            data, min(config.n_patterns, len(genes)), aeh_length_scale(data, genes),
            layer="counts", genes=genes, random_state=config.seed, key_added=key,
        )  # fmt: skip
    else:
        raise SpatiomeInputError(f"unknown module method {method!r}; choose from {MODULE_METHODS}")
    n_modules, n_unassigned = count_modules(data, key, genes)
    note = f"{MODULE_TITLES[method]}: {n_modules} modules of two or more genes from {len(genes)}"
    note += " genes" + (f" ({n_unassigned} genes in no module)" if n_unassigned else "")
    return table, [note]


def count_modules(data: AnnData, key: str, genes: Sequence[str] | None = None) -> tuple[int, int]:
    """Modules of two or more genes in ``var[f"{key}_module"]`` (or ``_pattern``), and the
    number of analysed genes left in no module (unassigned, or alone in a module of one).

    ``genes`` are the genes the method analysed (default: those with a module value).

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd
    >>> a = anndata.AnnData(np.zeros((2, 6)))
    >>> a.var["module_stihc_module"] = [1.0, 1.0, 2.0, -1.0, 3.0, np.nan]
    >>> count_modules(a, "module_stihc")
    (1, 3)
    """
    from ..pl.domains import module_labels

    labels = module_labels(data.var[module_column(data, key)], genes)
    unassigned = int((labels == "unassigned").sum())
    return int(labels[labels != "unassigned"].nunique()), unassigned


def aeh_length_scale(data: AnnData, genes: list[str]) -> float:
    """AEH's length scale: the median SpatialDE length scale of ``genes`` when SpatialDE ran,
    otherwise a tenth of the tissue's larger side (SpatialDE's tutorial uses the former).

    Examples
    --------
    >>> import numpy as np, spatiome as sm
    >>> tissue = sm.datasets.simulate_tissue(n_spots=200, n_genes=10, random_state=0)
    >>> coords = tissue.obsm["spatial"]
    >>> bool(abs(aeh_length_scale(tissue, []) - 0.1 * np.ptp(coords, axis=0).max()) < 1e-9)
    True
    """
    column = "spatialde_length_scale"
    if column in data.var and genes:
        values = data.var.loc[genes, column].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if values.size:
            return float(np.median(values))
    return float(0.1 * np.ptp(get_spatial(data), axis=0).max())


def run_svg_method(
    data: AnnData,
    method: str,
    config: PipelineConfig,
    genes: list[str] | None = None,
    *,
    client: Any | None = None,
) -> pd.DataFrame:
    """Run one spatially variable gene test the way the pipeline does.

    Moran's I, Geary's C and trendsceek read the log-normalized ``X`` (trendsceek's marks
    are log expression); SPARK-X and SpatialDE read the raw counts layer, as the originals.
    ``genes`` limits the test to those genes (see :func:`tested_genes`); None tests all.
    With a ``distributed.Client`` the gene chunks (SPARK-X: spot blocks) run on its
    cluster, with identical results.

    Examples
    --------
    >>> import spatiome as sm
    >>> tissue = sm.datasets.simulate_tissue(n_spots=300, n_genes=20, random_state=0)
    >>> bool(run_svg_method(tissue, "sparkx", PipelineConfig())["qval"].notna().all())
    True
    """
    from .. import svg

    if method in ("moran", "geary"):
        return getattr(svg, method)(data, genes=genes, random_state=config.seed, client=client)
    if method == "sparkx":
        return svg.sparkx(data, layer="counts", genes=genes, client=client)
    if method == "spatialde":
        return svg.spatialde(
            data, layer="counts", genes=genes, random_state=config.seed, client=client
        )
    if method == "trendseek":
        return svg.trendseek(
            data,
            genes=genes,
            n_permutations=config.trendseek_permutations,
            random_state=config.seed,
            client=client,
        )
    raise SpatiomeInputError(f"unknown SVG method {method!r}; choose from {SVG_METHODS}")


def tested_genes(data: AnnData, min_counts: int) -> list[str] | None:
    """Genes with at least ``min_counts`` counts over the spots of ``data``; None when that
    is every gene (test them all).

    Examples
    --------
    >>> import anndata, numpy as np
    >>> a = anndata.AnnData(np.array([[0, 1, 5], [0, 1, 0]]))
    >>> a.var_names = ["absent", "twice", "five"]
    >>> a.layers["counts"] = a.X.copy()
    >>> tested_genes(a, 3)
    ['five']
    """
    from .._core.sums import column_sums

    totals = column_sums(data.layers["counts"])
    kept = totals >= min_counts
    if kept.all():
        return None
    if not kept.any():
        raise SpatiomeInputError(
            f"no gene has {min_counts} or more counts over the {data.n_obs} analysed spots: "
            "nothing to test for spatial variation; lower min_gene_counts"
        )
    return [str(g) for g in data.var_names[kept]]


def evaluate_truth(
    adata: AnnData,
    svg: pd.DataFrame,
    *,
    fdr: float = 0.05,
    domain_key: str = "domain",
    label_key: str = "leiden",
) -> dict[str, float]:
    """Compare calls with simulated truth: SVG power and FDR at ``fdr``, ARI of domains.

    Parameters
    ----------
    adata
        Data carrying the truth (``var['is_spatial']``, ``obs[domain_key]``) and the
        cluster labels in ``obs[label_key]``.
    svg
        Per-gene table with a ``qval`` column, indexed by gene.
    fdr
        q-value threshold for a call.

    Returns
    -------
    dict
        ``svg_power``, ``svg_fdr``, ``n_called``, ``n_true`` and, when both label columns
        exist, ``domain_ari``.

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd
    >>> a = anndata.AnnData(np.zeros((2, 3)))
    >>> a.var_names = ["g1", "g2", "g3"]
    >>> a.var["is_spatial"] = [True, True, False]
    >>> table = pd.DataFrame({"qval": [0.01, 0.5, 0.01]}, index=a.var_names)
    >>> evaluate_truth(a, table)["svg_power"]
    0.5
    """
    from sklearn.metrics import adjusted_rand_score

    result: dict[str, float] = {}
    if "is_spatial" in adata.var:
        truth = adata.var["is_spatial"].reindex(svg.index).fillna(False).to_numpy(bool)
        called = (svg["qval"] < fdr).to_numpy()
        result["n_true"] = int(truth.sum())
        result["n_called"] = int(called.sum())
        result["svg_power"] = float(called[truth].mean()) if truth.any() else float("nan")
        result["svg_fdr"] = float((~truth[called]).mean()) if called.any() else 0.0
    if domain_key in adata.obs and label_key in adata.obs:
        known = adata.obs[domain_key].notna().to_numpy()
        result["domain_ari"] = float(
            adjusted_rand_score(
                adata.obs[domain_key].to_numpy()[known].astype(str),
                adata.obs[label_key].to_numpy()[known].astype(str),
            )
        )
    return result


class _Progress:
    """Step-by-step progress on stderr (a tqdm bar when attached to a terminal).

    Long steps report their own progress (epochs, sweeps, genes) through
    :mod:`spatiome._core.progress`; :meth:`inner` shows it beside the step's name. The bar
    shows elapsed time only: steps differ too much in length for a remaining-time guess.
    """

    def __init__(self, steps: Sequence[str], enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=len(steps),
            desc="spatiome",
            unit="step",
            disable=not enabled,
            file=sys.stderr,
            leave=True,
            bar_format="{desc}: {n_fmt}/{total_fmt} steps |{bar:20}| {elapsed}{postfix}",
        )
        self.current = ""

    def start(self, name: str) -> None:
        self.current = name
        self.bar.set_postfix_str(name)
        logger.info("step %s: start", name)

    def inner(self, task: str, done: int, total: int, unit: str, details: str) -> None:
        """Show a long step's own progress (a :mod:`spatiome._core.progress` listener)."""
        text = f"{task}: {unit} {done:,}/{total:,}" + (f", {details}" if details else "")
        self.bar.set_postfix_str(text)

    def done(self, name: str, seconds: float) -> None:
        self.bar.update(1)
        peak = peak_rss_gb()
        memory = "" if peak is None else f" (memory peak so far {peak:.1f} GB)"
        logger.info("step %s: done in %.2f s%s", name, seconds, memory)

    def close(self) -> None:
        self.bar.close()


def run_pipeline(
    adata: AnnData,
    out_dir: str | Path,
    config: PipelineConfig | None = None,
    *,
    command: str = "run",
    inputs: Sequence[str | Path] = (),
    title: str = "spatiome report",
    truth: bool = False,
    progress: bool = True,
    config_file: str | Path | None = None,
    cache: bool = True,
    force: bool = False,
    until: str | None = None,
    copy_input: bool = True,
) -> PipelineResult:
    """Run QC, normalization, reduction, clustering, domains, SVG tests and modules.

    Writes ``results.h5ad``, ``svg.csv`` (the first of ``config.svg_methods``),
    ``svg_<method>.csv`` for each further method, ``markers.csv`` (domain markers),
    ``neighbourhood_enrichment.csv``, ``niches.csv``, ``ligand_receptor.csv`` and
    ``ligand_receptor_groups.csv`` (see :mod:`spatiome.workflow.interactions`),
    ``modules_<method>.csv``, ``provenance.json``, ``report.html`` and ``spatiome.log`` to
    ``out_dir``, each atomically. The input AnnData is not modified.

    Parameters
    ----------
    adata
        Spots x genes with raw counts in ``layers['counts']`` (or integer ``X``) and
        coordinates in ``obsm['spatial']``.
    out_dir
        Output folder (created if missing).
    config
        Pipeline parameters; defaults to :class:`PipelineConfig`.
    command
        Name recorded in the provenance ("demo", "run").
    inputs
        Input files or folders whose sha256 go into the provenance.
    title
        Report title.
    truth
        Evaluate against simulated truth and add a recovery section to the report.
    progress
        Show a progress bar on stderr.
    config_file
        The TOML configuration the parameters came from, recorded with its sha256.
    cache
        Store what each step added under ``out_dir/.spatiome_cache`` and restore the steps
        whose inputs and parameters are unchanged (see :mod:`spatiome.workflow.cache`): a
        re-run with one changed parameter recomputes only the steps that depend on it,
        and a killed run resumes after its last finished step.
    force
        Recompute every step (the cache is refreshed).
    until
        Stop after this step (one of :func:`pipeline_steps`), leaving its result in the
        cache and a marker ``out_dir/steps/<step>.done``; the outputs and the report are
        written only by a run to the end. This is how a workflow manager runs one step per
        rule.
    copy_input
        Work on a copy of ``adata`` (default), leaving it unchanged. ``False`` works on
        ``adata`` itself and leaves it in an unspecified state: for a caller that holds the
        only reference (``spatiome run`` passes the object it read), which saves one copy
        of the counts, the largest object of a run.

    Returns
    -------
    PipelineResult

    Examples
    --------
    >>> import tempfile
    >>> import spatiome as sm
    >>> tissue = sm.datasets.simulate_tissue(n_spots=400, n_genes=60, random_state=0)
    >>> result = run_pipeline(tissue, tempfile.mkdtemp(), PipelineConfig(umap=False),
    ...                       progress=False)
    >>> sorted(result.files)  # doctest: +NORMALIZE_WHITESPACE
    ['log', 'markers', 'modules_stihc', 'neighbourhood_enrichment', 'provenance', 'report',
     'results', 'svg', 'svg_sparkx']
    """
    from .. import domains, graph, pp

    config = config or PipelineConfig()
    check_adata(adata)
    get_spatial(adata)
    client = connect_scheduler(config.dask_scheduler)  # before any work: fails fast
    out = prepare_output_folder(out_dir)
    previous = previous_outputs(out)
    log_handler = attach_log(out)
    if client is not None:
        logger.info("%s", cluster_summary(client))
    record = Provenance(command=command, parameters=asdict(config), seed=config.seed)
    for path in inputs:
        record.add_input(path)
    if config_file is not None:
        record.add_input(config_file)
        record.parameters["config_file"] = str(Path(config_file).resolve())
    reference = load_reference(config)
    side_inputs = []
    for path in reference_files(reference) if reference is not None else []:
        record.add_input(path)
        side_inputs.append(str(Path(path).resolve()))
    other = load_modality(adata, config)
    if config.modality_input is not None:
        record.add_input(config.modality_input)
        side_inputs.append(str(Path(config.modality_input).resolve()))
    if config.interactions and Path(config.lr_resource).is_file():
        # the pairs' table is an input: its sha256 is recorded and keys the cache
        record.add_input(config.lr_resource)
        side_inputs.append(str(Path(config.lr_resource).resolve()))

    data = adata.copy() if copy_input else adata
    input_notes = make_names_unique(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # each change is also returned, for the report
        input_notes += check_writable(data)
    share_counts(data)
    data.uns.setdefault("spatiome", {})["observation"] = observation_kind(data)
    graph_method = (
        graph.default_method(data) if config.graph_method == "auto" else config.graph_method
    )
    record.parameters["graph_method"] = graph_method
    n_clusters = config.n_domains
    steps = pipeline_steps(config, count_samples(data, config))
    record.parameters["steps"] = list(steps)
    step_cache = StepCache(out / CACHE_FOLDER, enabled=cache)
    root = (
        fingerprint(data) + json.dumps({p: record.inputs[p] for p in side_inputs}) if cache else ""
    )
    config_values = asdict(config)

    actions: dict[str, Callable[[], Any]] = {
        "qc": lambda: pp.qc_metrics(data),
        "spatial_qc": lambda: run_spatial_qc(data, config),
        "doublets": lambda: run_doublets(data, config),
        "normalize": lambda: pp.normalize(data, target_sum=config.target_sum),
        "graph": lambda: graph.spatial_neighbors(
            data, method=graph_method, n_neighbors=config.n_spatial_neighbors
        ),
        "reduce": lambda: pp.reduce(
            data,
            n_comps=config.n_comps,
            n_top_genes=config.n_top_genes,
            umap=config.umap,
            random_state=config.seed,
        ),
        "integration": lambda: run_batch_correction(data, config),
        "leiden": lambda: domains.leiden(
            data,
            resolution=config.resolution,
            n_clusters=n_clusters,
            random_state=config.seed,
        ),
    }
    actions["n_domains"] = lambda: run_choose_n_domains(data, config)
    for method in config.domain_methods:
        actions[f"domains_{method}"] = lambda method=method: run_domain_method(
            data, method, n_clusters or outputs["n_domains"][0], config
        )
    if config.domain_methods:
        actions["markers"] = lambda: run_markers(data, config)
    if other is not None:
        actions["multimodal"] = lambda: run_multimodal(
            data,
            other,
            n_clusters or outputs.get("n_domains", (int(data.obs["leiden"].nunique()),))[0],
            config,
        )
    if reference is not None:
        actions["deconvolution"] = lambda: run_deconvolution(data, reference, config)
    actions["neighbourhoods"] = lambda: run_neighbourhoods(data, config)
    actions["interactions"] = lambda: run_interactions(data, config, client=client)
    for method in config.svg_methods:
        actions[method] = lambda method=method: _run_svg_step(data, method, config, client)
    for method in config.module_methods:
        actions[f"modules_{method}"] = lambda method=method: run_module_method(
            data, method, module_genes(data, outputs[config.svg_methods[0]][0], config), config
        )
    actions = {name: actions[name] for name in steps if name in actions}
    if until is not None and until not in actions:
        raise SpatiomeInputError(
            f"until={until!r} is not a step of this run; the steps are {list(actions)}"
        )
    bar = _Progress(steps, progress)
    outputs: dict[str, Any] = {}
    full, removal = data, Removal(n_input=int(data.n_obs))
    keys: dict[str, str] = {}
    skipped: dict[str, str] = {}
    x_digest = None  # of X after the last step, carried so X is hashed once per step
    try:
        for name, action in actions.items():
            dependencies = step_dependencies(name, steps, config.svg_methods)
            keys[name] = step_cache.key(
                name,
                step_parameters(name, config_values, config.svg_methods),
                [keys[d] for d in dependencies],
                root=root,
            )
            missing = [d for d in dependencies if d in skipped]
            bar.start(name)
            with record.step(name) as entry, listen(bar.inner):
                if missing:
                    skipped[name] = f"it needs the {missing[0]} step, which was skipped"
                    entry["skipped"] = skipped[name]
                    logger.warning("step %s skipped: %s", name, skipped[name])
                    bar.done(name, 0.0)
                    continue
                stored = None if force else step_cache.load(keys[name])
                if stored is not None:
                    apply_delta(data, stored[0])
                    outputs[name] = stored[1]
                    x_digest = stored[0].x_digest
                    _restored(name, entry, stored[0])
                else:
                    before = snapshot(data, x_digest) if cache else None
                    tic = time.perf_counter()
                    with StepLog().capture() as lines:
                        done, outputs[name] = _attempt(name, action)
                    if not done:
                        skipped[name] = entry["skipped"] = outputs.pop(name)
                        x_digest = None
                    elif before is not None:
                        delta = delta_since(data, before)
                        delta.record = {**where(), "start": entry["start"], "out": str(out),
                                        "seconds": round(time.perf_counter() - tic, 3),
                                        "log": lines}  # fmt: skip
                        x_digest = delta.x_digest
                        step_cache.save(keys[name], delta, outputs[name])
            bar.done(name, entry["seconds"])
            if name == "spatial_qc" and config.qc_remove and name not in skipped:
                full, (data, removal) = data, remove_low_quality(data)
                if removal.n_removed:
                    full = restore_source(full, data)  # drops the second copy of the counts
                    # Every later step works on the kept spots: their cache keys say which.
                    root += json.dumps({"removed": removal.removed})
                    x_digest = None
            if name == until:
                marker = write_text_atomic(
                    out / "steps" / f"{name}.done",
                    json.dumps({"step": name, "key": keys[name], **entry}, default=str) + "\n",
                )
                return PipelineResult(
                    adata=data, svg=pd.DataFrame(), summary={"stopped_after": name},
                    files={"step": marker},
                )  # fmt: skip
        ran = [m for m in config.svg_methods if m in outputs]
        tables = {method: outputs[method][0] for method in ran}
        notes = {method: outputs[method][1] for method in ran}
        notes["qc"] = [
            *(
                n
                for n in outputs.get("spatial_qc", [])
                if not removal.n_removed or "flagged as low quality" not in n
            ),
            *([removal.note] if removal.note else []),
            *outputs.get("doublets", []),
        ]
        notes["domains"] = [
            *outputs.get("n_domains", (None, []))[1],
            *(n for m in config.domain_methods for n in outputs.get(f"domains_{m}", [])),
        ]
        marker_note = getattr(outputs.get("markers"), "attrs", {}).get("note")
        if marker_note:
            notes["domains"].append(marker_note)
        modules = {
            m: outputs[f"modules_{m}"] for m in config.module_methods if f"modules_{m}" in outputs
        }
        notes["modules"] = [n for table_notes in modules.values() for n in table_notes[1]]
        notes["deconvolution"] = outputs.get("deconvolution", [])
        notes["integration"] = [*outputs.get("integration", []), *outputs.get("multimodal", [])]
        notes["skipped"] = [f"{step}: {why}" for step, why in skipped.items()]
        notes["input"] = input_notes
        extra = {
            "markers": outputs.get("markers"),
            "modules": {m: value[0] for m, value in modules.items()},
            "mixing": mixing_table(data, config) if "integration" in outputs else None,
            "skipped": dict(skipped),
            "neighbourhoods": outputs.get("neighbourhoods"),
            "interactions": outputs.get("interactions"),
        }
        summary = _summary(data, tables, config, truth)
        results = data
        if removal.n_removed:
            summary.update(removal_summary(removal))
            # The expression is added after the figures, moving each matrix out of `data`.
            results = restore_removed(data, full, matrices=False)
            extra["all_observations"] = results
            extra["complete_results"] = functools.partial(
                restore_matrices, results, data, full, _normalize_like(data), release=True
            )
        bar.start("report")
        with record.step("report") as entry, output_errors(out), staged_outputs(out) as staging:
            names = _write_outputs(
                data, results, tables, notes, summary, record, staging, title, config, extra
            )
            published = publish(staging, out, previous)
            files = {key: published[name] for key, name in names.items()}
        bar.done("report", entry["seconds"])
    finally:
        bar.close()
        logging.getLogger("spatiome").removeHandler(log_handler)
        log_handler.close()
        if client is not None:
            client.close()
    files["log"] = out / LOG_NAME
    primary = next(iter(tables.values()), pd.DataFrame(columns=["statistic", "pval", "qval"]))
    return PipelineResult(
        adata=results, svg=primary, summary=summary, files=files, svg_tables=tables
    )


def removal_summary(removal: Removal) -> dict[str, Any]:
    """Summary entries for the spots quality control removed (reasons in plain words).

    Examples
    --------
    >>> summary = removal_summary(Removal(n_input=10, removed=["a"], reasons={"min_counts": 1}))
    >>> summary["n_obs_removed"], summary["removed_reasons"]
    (1, {'below the minimum library size': 1})
    """
    from ..pp.quality import QUALITY_REASONS

    return {
        "n_obs_input": removal.n_input,
        "n_obs_removed": removal.n_removed,
        "removed_reasons": {QUALITY_REASONS.get(k, k): v for k, v in removal.reasons.items()},
    }


def _normalize_like(data: AnnData) -> Callable[[AnnData], Any] | None:
    """Normalizes removed spots as the kept ones were (same target), for ``results.h5ad``."""
    from .. import pp

    used = data.uns.get("spatiome", {}).get("normalize", {})
    if used.get("method") != "log1p":
        return None

    def normalize(part: AnnData) -> Any:
        pp.normalize(part, target_sum=used["target_sum"])
        return part.X

    return normalize


def _run_svg_step(
    data: AnnData, method: str, config: PipelineConfig, client: Any | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """Run one SVG test (on ``client``'s Dask cluster when given); its warnings go to the
    log and the report instead of stderr."""
    genes = tested_genes(data, config.min_gene_counts)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = run_svg_method(data, method, config, genes, client=client)
    notes = list(dict.fromkeys(str(w.message) for w in caught))
    if genes is not None:
        notes.insert(
            0,
            f"{data.n_vars - len(genes):,} genes with fewer than {config.min_gene_counts} "
            f"counts over the analysed spots were not tested ({len(genes):,} were)",
        )
    for note in notes:
        logger.warning("%s: %s", method, note)
    return _sorted(table), notes


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    """Most significant first: by q-value, then by p-value (log10 when available)."""
    order = "log10_pval" if "log10_pval" in table else "pval"
    return table.sort_values(["qval", order], kind="mergesort")


#: Steps without which no result can be computed: their errors end the run.
ESSENTIAL_STEPS = ("qc", "normalize")


def _attempt(name: str, action: Callable[[], Any]) -> tuple[bool, Any]:
    """Run one step: (True, its value), or (False, why it could not run on this data).

    A step that is not essential and fails is skipped: the reason goes to the report, the
    full traceback to the log, and the steps that need its result are skipped too.
    """
    try:
        return True, action()
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as err:
        if name in ESSENTIAL_STEPS:
            raise
        if isinstance(err, SpatiomeInputError):
            reason = str(err)
        else:
            reason = f"it failed on this data ({type(err).__name__}: {err}); see spatiome.log"
        logger.warning("step %s skipped: %s", name, reason, exc_info=True)
        return False, reason


def _restored(name: str, entry: dict[str, Any], delta: Any) -> None:
    """Record in the provenance and the log that ``name`` came from the cache, and when,
    where and how the cached result was computed (with that computation's log lines)."""
    entry["cached"] = True
    computed = dict(getattr(delta, "record", None) or {})
    lines = computed.pop("log", [])
    if computed:
        entry["computed"] = computed
        logger.info(
            "step %s: restored from the cache (computed %s on %s in %.2f s)",
            name, computed.get("start"), computed.get("host"), computed.get("seconds", 0.0),
        )  # fmt: skip
    else:
        logger.info("step %s: restored from the cache", name)
    for line in lines:
        logger.info("step %s [as computed then]: %s", name, line)


def _summary(
    data: AnnData, tables: dict[str, pd.DataFrame], config: PipelineConfig, truth: bool
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "observation": data.uns.get("spatiome", {}).get("observation", "spot"),
        "n_spots": int(data.n_obs),
        "n_genes": int(data.n_vars),
        "fdr": config.fdr,
    }
    primary = next(iter(tables), None)
    if primary is not None:
        summary["n_genes_tested"] = int(len(tables[primary]))
        summary["svg_method"] = primary
        summary["n_svg"] = int((tables[primary]["qval"] < config.fdr).sum())
    if "leiden" in data.obs:
        summary["n_clusters"] = int(data.obs["leiden"].nunique())
    for method in config.module_methods:
        key = f"module_{method}"
        if any(f"{key}{suffix}" in data.var for suffix in ("_module", "_pattern")):
            summary[f"n_modules_{method}"] = count_modules(data, key)[0]
    if "niche" in data.obs:
        summary["n_niches"] = int(data.obs["niche"].nunique())
    if isinstance(data.uns.get("ligrec"), pd.DataFrame):
        summary["n_lr_pairs_tested"] = int(len(data.uns["ligrec"]))
        summary["n_lr_pairs"] = int((data.uns["ligrec"]["qvalue"] < config.fdr).sum())
    n_samples = count_samples(data, config)
    if n_samples > 1:
        summary["n_samples"] = n_samples
        summary["batch_correction"] = config.batch_correction
    if MULTIMODAL_DOMAIN_KEY in data.obs:
        summary["modality"] = config.modality
    if "cell_type_fractions" in data.obsm:
        summary["deconv_method"] = config.deconv_method
        summary["n_cell_types"] = int(data.obsm["cell_type_fractions"].shape[1])
        if truth and "cell_type_proportions" in data.obsm:
            from ..deconv import compare_fractions

            agreement = compare_fractions(
                data.obsm["cell_type_fractions"], data.obsm["cell_type_proportions"]
            )
            summary["deconv_rmse"] = float(agreement.loc["all", "rmse"])
    from sklearn.metrics import adjusted_rand_score

    for method in [*config.domain_methods, *(["multimodal"] if config.modality else [])]:
        key = domain_key(config, method)
        if key not in data.obs:  # the step was skipped; the report says why
            continue
        summary[f"n_domains_{method}"] = int(data.obs[key].nunique())
        if truth and "domain" in data.obs:
            summary[f"domain_ari_{method}"] = float(
                adjusted_rand_score(data.obs["domain"], data.obs[key])
            )
    if truth:
        summary.update(evaluate_truth(data, tables[primary], fdr=config.fdr))
    for method, table in tables.items():
        summary[f"n_svg_{method}"] = int((table["qval"] < config.fdr).sum())
        if truth and "is_spatial" in data.var:
            found = evaluate_truth(data, table, fdr=config.fdr, label_key="")
            summary[f"svg_power_{method}"] = found["svg_power"]
            summary[f"svg_fdr_{method}"] = found["svg_fdr"]
    return summary


def _write_outputs(
    data: AnnData,
    results: AnnData,
    tables: dict[str, pd.DataFrame],
    notes: dict[str, list[str]],
    summary: dict[str, Any],
    record: Provenance,
    out: Path,
    title: str,
    config: PipelineConfig,
    extra: dict[str, Any],
) -> dict[str, str]:
    """Write every output into ``out`` (the staging folder); their names by kind.

    ``data`` holds the analysed spots; ``results`` (written to ``results.h5ad``) every
    input spot, with missing statistics on those quality control removed.
    """
    from ..io import write_h5ad, write_spatialdata

    files = {
        **_results_files(out, config.output_format),
        "provenance": out / "provenance.json",
        "report": out / "report.html",
    }
    for rank, (method, table) in enumerate(tables.items()):
        key = "svg" if rank == 0 else f"svg_{method}"
        files[key] = out / f"{key}.csv"
        with atomic_path(files[key]) as tmp:
            table.to_csv(tmp, index_label="gene")
    if extra.get("markers") is not None:
        files["markers"] = out / "markers.csv"
        with atomic_path(files["markers"]) as tmp:
            extra["markers"].to_csv(tmp, index=False)
    if "cell_type_fractions" in data.obsm:
        files["cell_type_fractions"] = out / "cell_type_fractions.csv"
        with atomic_path(files["cell_type_fractions"]) as tmp:
            data.obsm["cell_type_fractions"].to_csv(tmp, index_label="spot")
    if extra.get("mixing") is not None:
        files["integration_metrics"] = out / "integration_metrics.csv"
        with atomic_path(files["integration_metrics"]) as tmp:
            extra["mixing"].to_csv(tmp)

    def write_table(name: str, table: pd.DataFrame, options: dict[str, Any]) -> None:
        files[name] = out / f"{name}.csv"
        with atomic_path(files[name]) as tmp:
            table.to_csv(tmp, **options)

    write_interaction_tables(extra, write_table)
    for method, table in extra.get("modules", {}).items():
        if table is not None:
            files[f"modules_{method}"] = out / f"modules_{method}.csv"
            with atomic_path(files[f"modules_{method}"]) as tmp:
                table.to_csv(tmp, index_label="gene")
    record.finished = None
    record.outputs = sorted(p.name for p in files.values())
    provenance = record.to_dict()
    sections = report_sections(data, tables, notes, summary, provenance, config, extra)
    write_report(files["report"], title, subtitle(summary), sections)
    record.write(files["provenance"])
    info = results.uns.setdefault("spatiome", {})
    info["provenance"] = json.dumps(record.to_dict(), default=str)
    info["summary"] = {k: v for k, v in summary.items() if v is not None}
    if extra.get("complete_results") is not None:
        extra["complete_results"]()
    if "results" in files:
        write_h5ad(results, files["results"])
    if "results_spatialdata" in files:
        write_spatialdata(results, files["results_spatialdata"])
    return {key: path.name for key, path in files.items()}


def _results_files(out: Path, output_format: str) -> dict[str, Path]:
    """The annotated data's files for ``output_format`` (see :class:`PipelineConfig`)."""
    files = {}
    if output_format in ("h5ad", "both"):
        files["results"] = out / "results.h5ad"
    if output_format in ("spatialdata", "both"):
        files["results_spatialdata"] = out / "results.zarr"
    return files


def demo_tissue(seed: int = 0, n_spots: int = 3000, n_genes: int = 300) -> AnnData:
    """The built-in example: a simulated Visium-like tissue with known truth.

    Examples
    --------
    >>> demo_tissue(n_spots=500, n_genes=50).shape
    (500, 50)
    """
    from ..datasets import simulate_tissue

    return simulate_tissue(n_spots=n_spots, n_genes=n_genes, random_state=seed)


def console_summary(summary: dict[str, Any]) -> str:
    """The run's results in one line for the terminal, at the configured FDR.

    Examples
    --------
    >>> console_summary({"observation": "cell", "n_spots": 257, "fdr": 0.1, "svg_method": "moran",
    ...                  "n_svg": 12, "n_domains_cluster": 4, "n_clusters": 5})
    "257 cells; 12 spatially variable genes (Moran's I, q < 0.1); 4 domains; 5 clusters"
    """
    noun = summary.get("observation", "spot")
    parts = [f"{summary.get('n_spots', 0):,} {noun}s"]
    if "n_svg" in summary:
        title = SVG_TITLES.get(summary["svg_method"], summary["svg_method"])
        parts.append(
            f"{summary['n_svg']:,} spatially variable genes ({title}, q < {summary['fdr']:g})"
        )
    domains = [v for k, v in summary.items() if k.startswith("n_domains_")]
    if domains:
        parts.append(f"{domains[0]} domains")
    if "n_clusters" in summary:
        parts.append(f"{summary['n_clusters']} clusters")
    return "; ".join(parts)


def format_recovery(summary: dict[str, Any]) -> str:
    """One line per truth metric, for the terminal.

    Examples
    --------
    >>> print(format_recovery({"n_true": 10, "n_svg_moran": 9, "svg_power_moran": 0.9,
    ...                        "svg_fdr_moran": 0.0, "domain_ari": 0.7, "fdr": 0.1}))
    Moran's I at q < 0.1: power 0.900 (9 called, 10 truly spatial), observed FDR 0.000
    Leiden vs true domains: ARI 0.700
    """
    lines = []
    fdr = summary.get("fdr", 0.05)
    for method in SVG_METHODS:
        if f"svg_power_{method}" in summary:
            lines.append(
                f"{SVG_TITLES[method]} at q < {fdr:g}: power {summary[f'svg_power_{method}']:.3f} "
                f"({summary[f'n_svg_{method}']} called, {summary['n_true']} truly spatial), "
                f"observed FDR {summary[f'svg_fdr_{method}']:.3f}"
            )
    if "domain_ari" in summary:
        lines.append(f"Leiden vs true domains: ARI {summary['domain_ari']:.3f}")
    for method in DOMAIN_METHODS:
        if f"domain_ari_{method}" in summary:
            lines.append(
                f"{DOMAIN_TITLES[method]} vs true domains: ARI "
                f"{summary[f'domain_ari_{method}']:.3f}"
            )
    return "\n".join(lines)


__all__ = [
    "PipelineConfig",
    "PipelineResult",
    "run_pipeline",
    "evaluate_truth",
    "demo_tissue",
    "format_recovery",
    "console_summary",
    "pipeline_steps",
    "run_svg_method",
    "SVG_METHODS",
    "DOMAIN_METHODS",
    "MODULE_METHODS",
    "run_domain_method",
    "run_markers",
    "run_module_method",
    "module_genes",
    "DECONV_METHODS",
    "load_reference",
    "run_deconvolution",
]
