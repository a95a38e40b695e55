"""One quality-control call that combines every criterion: floors, sample-wide, local, regional.

:func:`quality_flags` judges each spot (or cell) by its library size, its number of detected
genes and its mitochondrial share, in four ways that catch different failures:

- **floors**: almost empty spots (a few counts where the sample's median is thousands);
- **sample-wide outliers** (scater's ``isOutlier``): far below (or, for the mitochondrial
  share, above) the rest of the sample;
- **local outliers** (SpotSweeper's ``localOutliers``): far below the spot's own
  neighbourhood, which a sample-wide test misses in a rich region;
- **regional defects**: a contiguous region whose level is far below the sample, which
  local tests miss because the neighbours fail together.

Every test also demands a minimum effect (``min_fold``), so that a tight distribution (a
targeted panel that detects nearly all its genes in every cell) does not turn small
differences into flags. Flags and reasons go to ``adata.obs``; nothing is removed.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import numba
import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from scipy.sparse.csgraph import connected_components

from .._core.neighbourhood import SPOT_BLOCK, spatial_knn
from .._core.parallel import map_gene_chunks, resolve_n_jobs
from .._core.validate import SpatiomeInputError, check_adata, get_spatial
from .qc import (
    MAD_SCALE,
    _check_count,
    _counts_found,
    _ensure_obs_columns,
    _metric_matrix,
    _robust_z,
    _sample_groups,
    _take,
)

#: Reason tokens written to ``obs["low_quality_reason"]``, in their fixed order, with titles.
QUALITY_REASONS: dict[str, str] = {
    "min_counts": "below the minimum library size",
    "min_genes": "below the minimum number of detected genes",
    "mad_counts": "library size far below the sample's",
    "mad_genes": "detected genes far below the sample's",
    "mad_mito": "mitochondrial share far above the sample's",
    "local_counts": "library size far below its neighbours'",
    "local_genes": "detected genes far below its neighbours'",
    "local_mito": "mitochondrial share far above its neighbours'",
    "region_counts": "inside a region of low library size",
    "region_genes": "inside a region of few detected genes",
    "region_mito": "inside a region of high mitochondrial share",
}

#: (short name, obs column, log1p before the statistics, flagged side)
METRICS = (
    ("counts", "total_counts", True, "lower"),
    ("genes", "n_genes_by_counts", True, "lower"),
    ("mito", "pct_counts_mt", False, "higher"),
)
#: Floors default to this share of the sample's median (and are at least 1).
FLOOR_SHARE = 0.01
#: Samples with fewer spots are judged by the floors and sample-wide tests only.
MIN_SPATIAL_SPOTS = 10
#: Neighbours (and their reach, in median nearest distances) that link spots into regions.
REGION_LINKS = 6
REGION_REACH = 1.5

_REASONS = tuple(QUALITY_REASONS)


@dataclass
class _Settings:
    min_counts: float | None
    min_genes: float | None
    nmads: float
    min_fold: float
    local: bool
    n_neighbors: int
    local_cutoff: float
    regional: bool
    scales: tuple[int, ...]
    min_region_size: int
    max_region_fraction: float
    n_jobs: int


@dataclass
class _Verdict:
    """Flags per reason (columns in ``_REASONS`` order) and severity of one sample."""

    flags: np.ndarray
    score: np.ndarray
    floors: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def quality_flags(
    adata: AnnData,
    *,
    min_counts: float | None = None,
    min_genes: float | None = None,
    nmads: float = 3.0,
    min_fold: float = 2.0,
    local: bool = True,
    n_neighbors: int = 36,
    local_cutoff: float = 3.0,
    regional: bool = True,
    scales: Sequence[int] = (7, 19, 37),
    min_region_size: int = 7,
    max_region_fraction: float = 0.25,
    sample_key: str | None = None,
    n_jobs: int = 1,
    copy: bool = False,
) -> AnnData | None:
    """Flag low-quality spots with every QC criterion at once, and say why.

    Three metrics are judged, per sample: library size (``total_counts``) and detected
    genes (``n_genes_by_counts``), both after ``log1p`` and flagged when low, and the
    mitochondrial share (``pct_counts_mt``), flagged when high. Four tests run on them:

    1. **Floors** (``min_counts``, ``min_genes``): fewer counts or genes than a floor, by
       default 1% of the sample's median (at least 1). Spots without counts are always
       flagged.
    2. **Sample-wide outliers** (``mad_*``; scater's ``isOutlier``): robust
       ``z = (x - median) / (1.4826 MAD)`` over the sample beyond ``nmads``, **and** an
       effect of at least ``min_fold`` (a value at most ``median / min_fold``; a
       mitochondrial share at least ``min_fold`` times the median share).
    3. **Local outliers** (``local_*``; SpotSweeper, as
       :func:`~spatiome.pp.local_outliers` with ``zscore="v2"``): against the
       ``n_neighbors`` nearest spots, the spot itself excluded,
       ``z = 0.6745 (x - median) / MAD`` beyond ``local_cutoff``, with the same
       ``min_fold`` guard relative to the neighbourhood median.
    4. **Regional defects** (``region_*``): at each scale ``k`` of ``scales`` (the ``k``
       nearest spots, the spot included: 7, 19 and 37 are one to three hexagonal rings) the
       neighbourhood median (edge-preserving) is the local level, and its regional
       ``z = (level - sample median) / (1.4826 MAD)``, with the sample's spot-level MAD.
       A spot is a candidate when, at some scale, that ``z`` is beyond ``nmads`` with the
       ``min_fold`` guard, and its own value lies on the same side of the sample median.
       Candidates linked in space (each spot to those of its 6 nearest within 1.5 times
       the median nearest-neighbour distance) form regions; regions of fewer than
       ``min_region_size`` spots are dropped, and when the regions hold more than
       ``max_region_fraction`` of the sample nothing is flagged by that test (a level of
       the whole tissue is not a defect) and a note says so.

    Mitochondrial tests run only in samples where mitochondrial genes carry counts; the
    local and regional tests need at least 10 spots. Skipped tests are noted in ``uns``.

    Where a MAD is 0 (more than half the values equal) the robust z is 0: only the floors
    act on that metric there.

    **What can flag biology, and how the defaults avoid it.** Library size and detected
    genes differ between tissue compartments: DLPFC Layer 1 holds about 0.4-0.5 and white
    matter about 0.85 of the median count, and a necrotic core or a muscle-rich region
    can carry a high mitochondrial share. Targeted panels (seqFISH, MERFISH, a few hundred
    genes) detect nearly every gene in every cell.

    - The **fold guard** (``min_fold = 2``) keeps small but "significant" differences out:
      on seqFISH field 43 (249 genes) the median cell detects 245 with a raw MAD of 0.016
      in log, and without the guard 57 of 257 cells fall 3 MADs below the median, at about
      231 genes; with it 7 cells are flagged for genes, all below half the median
      (:func:`~spatiome.pp.local_outliers` flags 53 cells).
    - The **regional test** measures a region's level against how much *single spots*
      vary, not against how little smoothed levels vary: on DLPFC (spot-level MAD of log
      counts 0.5-0.6) Layer 1 sits 1.3-1.7 MADs below the median, far from
      ``nmads = 3``, and no region is found in it. The region size and share guards keep
      a tissue-wide level from being called a defect.
    - The **sample-wide test** can still flag the low tail of a low compartment: on DLPFC
      sections 151673 and 151674 it flags 6% of the Layer 1 spots (those at 0.13-0.25 of
      the median count; 0.3% in 151675), and on simulated tissues whose spots vary little
      (log-normal library sizes with CV 0.3) 1-25% of a band kept at 0.4 of the depth;
      with DLPFC-like spread (CV 0.5), 1-6%. White matter is flagged in 0.2-2.7% of its
      spots against 0.9-1.6% of the cortical ones; its 2.7% in 151674 is mostly a region
      of 13 spots at 0.19 of the median count on the tissue border. Read
      ``low_quality_reason`` before removing spots; raise ``nmads`` or ``min_fold`` where
      a compartment is known to be sparse.
    - **Local tests** compare with neighbours, which share the biology, and keep the same
      fold guard.

    Parameters
    ----------
    adata
        Spots (or cells) x genes with coordinates in ``adata.obsm["spatial"]`` (needed by
        the local and regional tests). The obs columns ``total_counts``,
        ``n_genes_by_counts`` and ``pct_counts_mt`` are computed with
        :func:`~spatiome.pp.qc_metrics` from the raw counts (``adata.layers["counts"]``,
        else ``adata.X`` when it holds counts) when missing;
        without ``pct_counts_mt`` and without counts the mitochondrial tests are skipped.
    min_counts, min_genes
        Floors on library size and detected genes; None: 1% of the sample's median, at
        least 1.
    nmads
        Robust z beyond which the sample-wide and regional tests flag.
    min_fold
        Smallest effect flagged by the z-based tests: the value is at most the reference
        divided by ``min_fold`` (at least ``min_fold`` times it for the mitochondrial
        share). 1 turns the guard off.
    local
        Run the local test.
    n_neighbors
        Neighbours of the local test (36: three hexagonal rings); capped at the number of
        spots less one.
    local_cutoff
        Local robust z beyond which the local test flags.
    regional
        Run the regional test.
    scales
        Neighbourhood sizes, the spot included, of the regional test; capped at the number
        of spots.
    min_region_size
        Fewest linked spots that make a region.
    max_region_fraction
        Largest share of a sample that the regions of one metric may hold; beyond it that
        metric's regional flags are dropped in the sample.
    sample_key
        obs column naming the sample of each spot; every statistic is computed per sample.
        None: one sample.
    n_jobs
        Threads for the neighbour search and the neighbourhood statistics (-1: all cores).
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``; otherwise None. Writes ``adata.obs["low_quality"]``
        (bool), ``adata.obs["low_quality_reason"]`` (the reasons that fired, joined by
        ``";"`` in the order of :data:`QUALITY_REASONS`; ``""`` for kept spots) and
        ``adata.obs["low_quality_score"]`` (severity: over the tests, the largest
        ``min(|z| / cutoff, fold / min_fold)`` on the flagged side, a floor's ratio
        ``floor / value``, and for regional candidates left out of a region at most 1;
        above 1 only for flagged spots, at least 1 for every flagged spot). The parameters,
        ``n_flagged``, the count per reason (``n_by_reason``), the resolved ``floors`` per
        sample (``"all"`` without ``sample_key``) and ``notes`` go to
        ``adata.uns["spatiome"]["quality_flags"]``.

    References
    ----------
    McCarthy D.J. et al. (2017) Scater: pre-processing, quality control, normalization and
    visualization of single-cell RNA-seq data in R. Bioinformatics 33:1179-1186.
    Totty M. et al. (2025) SpotSweeper: spatially aware quality control for spatial
    transcriptomics. Nature Methods; preprint bioRxiv doi:10.1101/2024.06.06.597765.

    Examples
    --------
    A region at a tenth of the depth (mitochondrial share unchanged) and scattered failed
    spots in a simulated Visium tissue:

    >>> import pandas as pd
    >>> import spatiome as sm
    >>> tissue = sm.datasets.simulate_tissue(n_spots=1000, n_genes=60, random_state=0)
    >>> damaged = sm.datasets.inject_artifacts(
    ...     tissue, dry_patch_fraction=0.05, dry_patch_depth=0.1, dry_patch_mito_fraction=None,
    ...     edge_fraction=0, scattered_fraction=0.01, random_state=0)
    >>> sm.pp.quality_flags(damaged)
    >>> pd.crosstab(damaged.obs["injected"], damaged.obs["low_quality"]).loc[
    ...     ["none", "dry_patch", "scattered_failure"]].to_numpy().tolist()
    [[937, 3], [0, 50], [0, 10]]
    >>> reasons = damaged.obs.groupby("injected", observed=True)["low_quality_reason"]
    >>> reasons.agg(lambda r: r.value_counts().index[0]).to_dict()
    {'none': '', 'dry_patch': 'mad_counts;region_counts',
     'scattered_failure': 'mad_counts;local_counts'}
    """
    check_adata(adata)
    settings = _check_settings(
        min_counts, min_genes, nmads, min_fold, local, n_neighbors, local_cutoff, regional,
        scales, min_region_size, max_region_fraction, n_jobs,
    )  # fmt: skip
    if not isinstance(copy, bool | np.bool_):
        raise SpatiomeInputError(f"copy must be True or False, got {copy!r}")
    groups = _sample_groups(adata, sample_key)
    spatial = settings.local or settings.regional
    coords = get_spatial(adata) if spatial else None

    adata = adata.copy() if copy else adata
    values, notes = _quality_metrics(adata)
    flags = np.zeros((adata.n_obs, len(_REASONS)), dtype=bool)
    score = np.zeros(adata.n_obs)
    floors: dict[str, dict[str, float]] = {}
    for name, rows in groups:
        label = "all" if name is None else name
        sample_coords = None if coords is None else _take(coords, rows)
        verdict = _judge_sample(_take(values, rows), sample_coords, settings, label)
        flags[rows] = verdict.flags
        score[rows] = verdict.score
        floors[label] = verdict.floors
        notes += verdict.notes
    _write_results(adata, flags, score, settings, sample_key, floors, notes)
    return adata if copy else None


def _check_settings(
    min_counts, min_genes, nmads, min_fold, local, n_neighbors, local_cutoff, regional,
    scales, min_region_size, max_region_fraction, n_jobs,
) -> _Settings:  # fmt: skip
    for name, value in (("min_counts", min_counts), ("min_genes", min_genes)):
        if value is not None and not (_is_real(value) and 0 <= value < np.inf):
            raise SpatiomeInputError(
                f"{name} must be None (1% of the sample's median) or a non-negative number, "
                f"got {value!r}"
            )
    for name, value in (("nmads", nmads), ("local_cutoff", local_cutoff)):
        if not (_is_real(value) and 0 < value < np.inf):
            raise SpatiomeInputError(f"{name} must be a positive finite number, got {value!r}")
    if not (_is_real(min_fold) and 1 <= min_fold < np.inf):
        raise SpatiomeInputError(
            f"min_fold must be a finite number of at least 1 (1 turns the guard off), "
            f"got {min_fold!r}"
        )
    for name, value in (("local", local), ("regional", regional)):
        if not isinstance(value, bool | np.bool_):
            raise SpatiomeInputError(f"{name} must be True or False, got {value!r}")
    _check_count("n_neighbors", n_neighbors)
    _check_count("min_region_size", min_region_size)
    if not (_is_real(max_region_fraction) and 0 < max_region_fraction <= 1):
        raise SpatiomeInputError(
            f"max_region_fraction must be a number in (0, 1], got {max_region_fraction!r}"
        )
    return _Settings(
        min_counts=None if min_counts is None else float(min_counts),
        min_genes=None if min_genes is None else float(min_genes),
        nmads=float(nmads),
        min_fold=float(min_fold),
        local=bool(local),
        n_neighbors=int(n_neighbors),
        local_cutoff=float(local_cutoff),
        regional=bool(regional),
        scales=_check_scales(scales),
        min_region_size=int(min_region_size),
        max_region_fraction=float(max_region_fraction),
        n_jobs=resolve_n_jobs(n_jobs),
    )


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def _check_scales(scales: object) -> tuple[int, ...]:
    values = [scales] if _is_int(scales) else scales
    if isinstance(values, str) or not isinstance(values, Sequence | np.ndarray):
        values = []
    values = list(values)
    if (
        not values
        or not all(_is_int(k) and k >= 2 for k in values)
        or len(set(values)) < len(values)
    ):
        raise SpatiomeInputError(
            f"scales must be distinct integers of at least 2 (neighbourhood sizes, the spot "
            f"included), e.g. (7, 19, 37); got {scales!r}"
        )
    return tuple(sorted(int(k) for k in values))


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def _quality_metrics(adata: AnnData) -> tuple[np.ndarray, list[str]]:
    """(n_obs, 3) raw values of the three metrics; NaN mitochondrial share when unknown."""
    columns = [column for _, column, _, _ in METRICS]
    missing = [c for c in columns if c not in adata.obs.columns]
    if missing and _counts_found(adata):
        _ensure_obs_columns(adata, columns, caller="quality_flags", argument="obs")
        missing = []
    needed = [c for c in missing if c != "pct_counts_mt"]
    if needed:
        raise SpatiomeInputError(
            f"quality_flags needs adata.obs columns {needed}: keep the raw counts in "
            "adata.layers['counts'] (or adata.X) so that they are computed, or run "
            "spatiome.pp.qc_metrics(adata) first"
        )
    notes = []
    values = np.full((adata.n_obs, len(columns)), np.nan)
    present = [j for j, c in enumerate(columns) if c not in missing]
    values[:, present] = _metric_matrix(
        adata, [columns[j] for j in present], [False] * len(present)
    )
    if missing:
        notes.append("no adata.obs['pct_counts_mt'] and no raw counts: mitochondrial tests skipped")
    if not (values[:, :2] >= 0).all():
        raise SpatiomeInputError(
            "adata.obs['total_counts'] and adata.obs['n_genes_by_counts'] must not be "
            "negative or missing: recompute them with spatiome.pp.qc_metrics on raw counts"
        )
    return values, notes


def _judge_sample(
    values: np.ndarray, coords: np.ndarray | None, settings: _Settings, label: str
) -> _Verdict:
    """Run the four tests on one sample's raw metric values."""
    n = values.shape[0]
    where = "" if label == "all" else f" in sample {label!r}"
    verdict = _Verdict(flags=np.zeros((n, len(_REASONS)), dtype=bool), score=np.zeros(n))
    _floor_test(values, settings, verdict)
    has_mito = bool(np.nansum(values[:, 2]) > 0)
    if not has_mito:
        values = values.copy()
        values[:, 2] = np.nan
        verdict.notes.append(f"no mitochondrial counts{where}: mitochondrial tests skipped")
    scaled = np.column_stack([np.log1p(values[:, :2]), values[:, 2]])
    reference = _sample_reference(scaled, values[:, 0] > 0)
    _sample_test(scaled, reference, settings, verdict)
    if coords is None:
        return verdict
    if n < MIN_SPATIAL_SPOTS:
        verdict.notes.append(
            f"{n} spots{where}, fewer than {MIN_SPATIAL_SPOTS}: local and regional tests skipped"
        )
        return verdict
    _spatial_tests(scaled, reference, coords, settings, verdict, where)
    return verdict


def _floor_test(values: np.ndarray, settings: _Settings, verdict: _Verdict) -> None:
    """Floors on counts and genes (default 1% of the median); empty spots always fail."""
    positive = values[:, 0] > 0
    for j, (name, given) in enumerate(
        (("min_counts", settings.min_counts), ("min_genes", settings.min_genes))
    ):
        column = values[:, j]
        median = float(np.median(column[positive])) if positive.any() else 0.0
        floor = given if given is not None else max(1.0, FLOOR_SHARE * median)
        flagged = (column < floor) | ~positive
        verdict.flags[:, _REASONS.index(name)] = flagged
        ratio = floor / np.maximum(column, 0.5)
        verdict.score = np.maximum(verdict.score, np.where(flagged, np.maximum(ratio, 1.0), ratio))
        verdict.floors[name] = float(floor)


def _sample_reference(scaled: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """(2, 3) sample median and scaled MAD (1.4826 MAD) of each metric, over spots with counts."""
    reference = np.full((2, scaled.shape[1]), np.nan)
    for j in range(scaled.shape[1]):
        column = scaled[usable, j]
        column = column[np.isfinite(column)]
        if column.size:
            median = np.median(column)
            reference[:, j] = median, MAD_SCALE * np.median(np.abs(column - median))
    return reference


def _sample_test(
    scaled: np.ndarray, reference: np.ndarray, settings: _Settings, verdict: _Verdict
) -> None:
    median, spread = reference
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (scaled - median) / spread
    z[~np.isfinite(z)] = 0.0
    severity = _severity(z, scaled, _rows_like(median, z), settings.nmads, settings.min_fold)
    _record(verdict, "mad", severity, severity > 1.0)


def _rows_like(row: np.ndarray, like: np.ndarray) -> np.ndarray:
    return np.broadcast_to(row, like.shape)


def _severity(
    z: np.ndarray, scaled: np.ndarray, reference: np.ndarray, cutoff: float, min_fold: float
) -> np.ndarray:
    """``min(|z| / cutoff, fold / min_fold)`` on each metric's flagged side, 0 elsewhere.

    The flag of a z-based test is ``severity > 1``: z beyond the cutoff and an effect of at
    least ``min_fold``; the fold is taken on the raw scale (counts, genes, share).
    """
    severity = np.zeros_like(z)
    for j, (_, _, log, side) in enumerate(METRICS):
        value, level = scaled[:, j], reference[:, j]
        if log:
            value, level = np.expm1(value), np.expm1(level)
        with np.errstate(divide="ignore", invalid="ignore"):
            fold = level / value if side == "lower" else value / level
            signed = -z[:, j] if side == "lower" else z[:, j]
            column = np.minimum(signed / cutoff, fold / min_fold)
        severity[:, j] = np.where(column > 0, column, 0.0)  # NaN (no value) -> 0
    return severity


def _record(verdict: _Verdict, test: str, severity: np.ndarray, flagged: np.ndarray) -> None:
    for j, (name, _, _, _) in enumerate(METRICS):
        verdict.flags[:, _REASONS.index(f"{test}_{name}")] = flagged[:, j]
    verdict.score = np.maximum(verdict.score, severity.max(axis=1))


def _spatial_tests(
    scaled: np.ndarray,
    reference: np.ndarray,
    coords: np.ndarray,
    settings: _Settings,
    verdict: _Verdict,
    where: str,
) -> None:
    """Local and regional tests from one neighbour search at the largest size needed."""
    n = scaled.shape[0]
    n_local = min(settings.n_neighbors, n - 1) if settings.local else 0
    scales = sorted({min(k, n) for k in settings.scales}) if settings.regional else []
    k = max([n_local, REGION_LINKS, *(s - 1 for s in scales)])
    neighbours, distances = spatial_knn(coords, min(k, n - 1), n_jobs=settings.n_jobs)
    local_median, local_mad, levels = neighbourhood_levels(
        scaled, neighbours, n_local=n_local, scales=scales, n_jobs=settings.n_jobs
    )
    if settings.local:
        z = _robust_z(scaled, local_median, local_mad, legacy=False)
        severity = _severity(z, scaled, local_median, settings.local_cutoff, settings.min_fold)
        _record(verdict, "local", severity, severity > 1.0)
    if settings.regional:
        links = _region_links(neighbours, distances)
        _regional_test(scaled, reference, levels, links, settings, verdict, where)


def _regional_test(
    scaled: np.ndarray,
    reference: np.ndarray,
    levels: np.ndarray,
    links: sp.csr_matrix,
    settings: _Settings,
    verdict: _Verdict,
    where: str,
) -> None:
    median, spread = reference
    same_side = np.column_stack(
        [
            scaled[:, j] < median[j] if side == "lower" else scaled[:, j] > median[j]
            for j, (_, _, _, side) in enumerate(METRICS)
        ]
    )
    severity = np.zeros_like(scaled)
    for s in range(levels.shape[2]):
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (levels[:, :, s] - median) / spread
        z[~np.isfinite(z)] = 0.0
        level = levels[:, :, s]
        reference_rows = _rows_like(median, z)
        severity = np.maximum(
            severity, _severity(z, level, reference_rows, settings.nmads, settings.min_fold)
        )
    severity[~same_side] = 0.0
    flagged = np.zeros_like(same_side)
    for j, (name, _, _, _) in enumerate(METRICS):
        flagged[:, j] = _large_regions(severity[:, j] > 1.0, links, settings.min_region_size)
        share = flagged[:, j].mean()
        if share > settings.max_region_fraction:
            verdict.notes.append(
                f"regional {name} test{where}: {share:.0%} of the spots would be flagged, more "
                f"than max_region_fraction={settings.max_region_fraction:g}; a level of the "
                "whole tissue, not a defect: none flagged"
            )
            flagged[:, j] = False
    # Candidates left out of a region keep their severity, but never above a flagged spot.
    severity = np.where(flagged, severity, np.minimum(severity, 1.0))
    _record(verdict, "region", severity, flagged)


def _region_links(neighbours: np.ndarray, distances: np.ndarray) -> sp.csr_matrix:
    """Spatial graph linking each spot to its nearest spots within 1.5x the typical spacing."""
    n = neighbours.shape[0]
    k = min(REGION_LINKS, neighbours.shape[1])
    near, gap = neighbours[:, :k], distances[:, :k]
    reach = REGION_REACH * float(np.median(distances[:, 0]))
    keep = gap <= reach
    rows = np.repeat(np.arange(n), k)[keep.ravel()]
    return sp.csr_matrix((np.ones(rows.size, dtype=np.int8), (rows, near[keep])), shape=(n, n))


def _large_regions(candidate: np.ndarray, links: sp.csr_matrix, min_size: int) -> np.ndarray:
    """Candidates in connected groups (over ``links``) of at least ``min_size`` spots."""
    index = np.flatnonzero(candidate)
    if index.size < min_size:
        return np.zeros_like(candidate)
    _, component = connected_components(links[index][:, index], directed=True, connection="weak")
    sizes = np.bincount(component)
    result = np.zeros_like(candidate)
    result[index] = sizes[component] >= min_size
    return result


def neighbourhood_levels(
    values: np.ndarray,
    neighbours: np.ndarray,
    *,
    n_local: int,
    scales: Sequence[int],
    n_jobs: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local median and MAD, and medians at several scales, in one pass over the neighbours.

    Parameters
    ----------
    values
        (n_spots, n_metrics) values; NaN entries are ignored.
    neighbours
        (n_spots, k) neighbour indices ordered by distance (from
        :func:`~spatiome._core.neighbourhood.spatial_knn`).
    n_local
        The local statistics use the first ``n_local`` neighbours, the spot excluded (as
        :func:`~spatiome._core.neighbourhood.neighbourhood_median_mad`); 0 skips them.
    scales
        Neighbourhood sizes, the spot included: the median of the spot and its first
        ``scale - 1`` neighbours.
    n_jobs
        Threads over blocks of spots.

    Returns
    -------
    local_median, local_mad, levels
        Two (n_spots, n_metrics) arrays (raw MAD, NaN when ``n_local`` is 0) and a
        (n_spots, n_metrics, len(scales)) array of medians.

    Examples
    --------
    >>> values = np.array([[1.0], [2.0], [3.0], [100.0]])
    >>> neighbours = np.array([[1, 2, 3], [0, 2, 3], [1, 3, 0], [2, 1, 0]])
    >>> median, mad, levels = neighbourhood_levels(values, neighbours, n_local=2, scales=[2, 4])
    >>> median[:, 0].tolist(), mad[:, 0].tolist()
    ([2.5, 2.0, 51.0, 2.5], [0.5, 1.0, 49.0, 0.5])
    >>> levels[:, 0, :].tolist()
    [[1.5, 2.5], [1.5, 2.5], [2.5, 2.5], [51.5, 2.5]]
    """
    matrix = np.ascontiguousarray(values, dtype=np.float64)
    index = np.ascontiguousarray(neighbours, dtype=np.int64)
    sizes = np.asarray(sorted(scales), dtype=np.int64)
    if sizes.size and not (2 <= sizes[0] and sizes[-1] - 1 <= index.shape[1]):
        raise SpatiomeInputError(
            f"scales must lie between 2 and the number of neighbours + 1 "
            f"({index.shape[1] + 1}), got {list(scales)}"
        )
    if not 0 <= n_local <= index.shape[1]:
        raise SpatiomeInputError(
            f"n_local must lie between 0 and the number of neighbours ({index.shape[1]})"
        )

    def block(start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        median = np.empty((stop - start, matrix.shape[1]))
        mad = np.empty_like(median)
        levels = np.empty((stop - start, matrix.shape[1], sizes.size))
        _levels_kernel(matrix, index, n_local, sizes, start, stop, median, mad, levels)
        return median, mad, levels

    parts = map_gene_chunks(block, matrix.shape[0], chunk_size=SPOT_BLOCK, n_jobs=n_jobs)
    return tuple(np.concatenate([part[i] for part in parts]) for i in range(3))  # type: ignore[return-value]


@numba.njit(cache=True, nogil=True)
def _insert_sorted(buffer, count, value):  # pragma: no cover - compiled
    i = count
    while i > 0 and buffer[i - 1] > value:
        buffer[i] = buffer[i - 1]
        i -= 1
    buffer[i] = value
    return count + 1


@numba.njit(cache=True, nogil=True)
def _sorted_median(buffer, count):  # pragma: no cover - compiled
    if count == 0:
        return np.nan
    half = count // 2
    if count % 2 == 1:
        return buffer[half]
    return 0.5 * (buffer[half - 1] + buffer[half])


@numba.njit(cache=True, nogil=True)
def _sorted_mad(buffer, count, centre, deviations):  # pragma: no cover - compiled
    """Median of |x - centre| over a sorted buffer: merge outwards from the centre."""
    if count == 0:
        return np.nan
    left = (count - 1) // 2
    right = left + 1
    for out in range(count):
        if right >= count or (left >= 0 and centre - buffer[left] <= buffer[right] - centre):
            deviations[out] = centre - buffer[left]
            left -= 1
        else:
            deviations[out] = buffer[right] - centre
            right += 1
    return _sorted_median(deviations, count)


@numba.njit(cache=True, nogil=True)
def _levels_kernel(
    values, neighbours, n_local, scales, start, stop, median, mad, levels
):  # pragma: no cover - compiled
    k = neighbours.shape[1]
    with_self = np.empty(k + 1)
    without_self = np.empty(k)
    deviations = np.empty(k)
    for row in range(start, stop):
        out = row - start
        for m in range(values.shape[1]):
            count = 0
            own = values[row, m]
            if not np.isnan(own):
                count = _insert_sorted(with_self, count, own)
            median[out, m] = np.nan
            mad[out, m] = np.nan
            scale = 0
            for j in range(k + 1):
                # The buffer holds the spot and its first j neighbours, sorted.
                while scale < scales.size and scales[scale] - 1 == j:
                    levels[out, m, scale] = _sorted_median(with_self, count)
                    scale += 1
                if j == n_local and n_local > 0:
                    n_without = _drop_value(with_self, count, own, without_self)
                    centre = _sorted_median(without_self, n_without)
                    median[out, m] = centre
                    mad[out, m] = _sorted_mad(without_self, n_without, centre, deviations)
                if j == k or (scale == scales.size and j >= n_local):
                    break
                v = values[neighbours[row, j], m]
                if not np.isnan(v):
                    count = _insert_sorted(with_self, count, v)


@numba.njit(cache=True, nogil=True)
def _drop_value(buffer, count, value, out):  # pragma: no cover - compiled
    """Copy a sorted buffer without one occurrence of ``value`` (none when it is NaN)."""
    size = 0
    dropped = np.isnan(value)
    for i in range(count):
        if not dropped and buffer[i] == value:
            dropped = True
            continue
        out[size] = buffer[i]
        size += 1
    return size


def _write_results(
    adata: AnnData,
    flags: np.ndarray,
    score: np.ndarray,
    settings: _Settings,
    sample_key: str | None,
    floors: dict[str, dict[str, float]],
    notes: list[str],
) -> None:
    flagged = flags.any(axis=1)
    adata.obs["low_quality"] = flagged
    adata.obs["low_quality_reason"] = _reason_strings(flags)
    adata.obs["low_quality_score"] = score
    adata.uns.setdefault("spatiome", {})
    adata.uns["spatiome"]["quality_flags"] = {
        "min_counts": settings.min_counts,
        "min_genes": settings.min_genes,
        "nmads": settings.nmads,
        "min_fold": settings.min_fold,
        "local": settings.local,
        "n_neighbors": settings.n_neighbors,
        "local_cutoff": settings.local_cutoff,
        "regional": settings.regional,
        "scales": list(settings.scales),
        "min_region_size": settings.min_region_size,
        "max_region_fraction": settings.max_region_fraction,
        "sample_key": sample_key,
        "n_flagged": int(flagged.sum()),
        "n_by_reason": {r: int(flags[:, i].sum()) for i, r in enumerate(_REASONS)},
        "floors": floors,
        "notes": list(notes),
    }


def _reason_strings(flags: np.ndarray) -> np.ndarray:
    """``";"``-joined reason tokens per spot, built once per distinct pattern of flags."""
    codes = flags.astype(np.int64) @ (1 << np.arange(flags.shape[1], dtype=np.int64))
    patterns, inverse = np.unique(codes, return_inverse=True)
    texts = np.array(
        [";".join(r for i, r in enumerate(_REASONS) if code >> i & 1) for code in patterns],
        dtype=object,
    )
    return texts[inverse]


__all__ = ["QUALITY_REASONS", "neighbourhood_levels", "quality_flags"]
