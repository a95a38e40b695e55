"""Simulated tissues with known ground truth.

:func:`simulate_tissue` lays spots on a Visium-like hexagonal lattice (or cells at
random positions), splits the tissue into domains, gives a chosen fraction of genes a
known spatial pattern and draws negative-binomial counts around spot-specific library
sizes. Every ingredient of the truth is stored in the returned AnnData, so methods can
be scored against it.

The counts are drawn spot by spot in compiled code and packed straight into a CSR
matrix: no dense spots x genes matrix is ever formed, and one million spots by one
thousand genes take well under a minute on two cores.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import ConvexHull

from .._core.random import check_random_state
from .._core.validate import SpatiomeInputError
from ..io._build import build_anndata

__all__ = ["simulate_tissue"]

PATTERNS = ("domain", "gradient", "hotspot", "stripe", "periodic")
LAYOUTS = ("hex", "random")
DOMAIN_KINDS = ("layers", "blobs")
SPOT_SPACING_UM = 100.0  # Visium centre-to-centre distance
CELL_SPACING_UM = 10.0  # typical distance between neighbouring cells
MAX_SPOTS = 10_000_000
MIN_SPOTS = 100
# log-normal spread (natural log) of the genes' relative abundances
ABUNDANCE_SD = 1.0
MITO_FRACTION = 0.05  # share of the counts taken by the mitochondrial genes together
MARKER_LOG_FOLD = 2.0  # cell-type marker genes: log fold change in their own type
_MITO_NAMES = (
    "MT-ND1", "MT-ND2", "MT-CO1", "MT-CO2", "MT-ATP8", "MT-ATP6", "MT-CO3",
    "MT-ND3", "MT-ND4L", "MT-ND4", "MT-ND5", "MT-ND6", "MT-CYB",
)  # fmt: skip
# matrix entries sampled per chunk of spots: bounds the scratch buffers (~32 MB)
_CHUNK_ENTRIES = 1 << 22


@dataclass
class _Genes:
    names: list[str]
    log_base: np.ndarray  # log relative abundance, sums to 1 over genes
    pattern: np.ndarray  # pattern name per gene ("none" for null genes)
    code: np.ndarray  # pattern code per gene (int64)
    effect: np.ndarray  # log fold change between pattern value 0 and 1
    params: np.ndarray  # (n_genes, _N_PARAMS) pattern parameters, unit coordinates
    levels: np.ndarray  # (n_genes, n_domains) domain levels in [0, 1]
    is_mito: np.ndarray


@dataclass
class _Mixture:
    names: list[str]
    proportions: np.ndarray  # (n_spots, n_types)
    marker: np.ndarray  # (n_genes,) type index of marker genes, -1 otherwise
    ratio: np.ndarray  # (n_types, n_genes) expression of each type relative to the base


def simulate_tissue(
    n_spots: int = 2000,
    n_genes: int = 200,
    *,
    layout: str = "hex",
    domains: str = "layers",
    n_domains: int = 5,
    frac_spatial: float = 0.25,
    patterns: Sequence[str] = PATTERNS,
    effect_size: float | Sequence[float] = 1.0,
    mean_depth: float = 2000.0,
    depth_cv: float = 0.3,
    depth_gradient: float = 0.0,
    dispersion: float = 0.1,
    n_mito_genes: int = 5,
    n_cell_types: int = 0,
    single_cells: bool = False,
    random_state: int | np.random.Generator | None = 0,
) -> AnnData:
    """Simulate a spatial transcriptomics tissue with known domains and spatial genes.

    Gene ``j`` in spot ``i`` has mean ``s_i * p_j * exp(effect_j * g_j(i)) * b_i``:
    ``s_i`` is the spot's library size, ``p_j`` the gene's relative abundance (log-normal
    across genes), ``g_j(i)`` in [0, 1] its spatial pattern (0 everywhere for null
    genes, whose mean is exactly ``s_i * p_j``) and ``b_i`` a per-spot factor applied to
    the patterned genes only, which keeps their summed expression equal to its tissue
    mean. Spot totals therefore carry the library size but no pattern, so null genes stay
    null after total-count normalization. Counts are negative binomial with variance
    ``mu + dispersion * mu**2``, drawn from a counter-based random stream per matrix
    entry (identical for any number of threads).

    Parameters
    ----------
    n_spots
        Number of spots (100 to 10,000,000).
    n_genes
        Number of genes, including the mitochondrial ones (at least 10).
    layout
        ``"hex"``: spots on a Visium-like hexagonal lattice, 100 um apart, filling a
        rounded tissue outline; ``obs['array_row']``/``obs['array_col']`` follow the
        Visium convention (neighbours in a row differ by 2 in ``array_col``, alternate
        rows are offset by 1). ``"random"``: cells at uniform random positions in a
        square, about 10 um apart.
    domains
        ``"layers"``: bands across the tissue along a random axis, with gently curved
        borders (like cortical layers). ``"blobs"``: irregular Voronoi regions of warped
        coordinates.
    n_domains
        Number of tissue domains (2 to 50, at most ``n_spots // 20``).
    frac_spatial
        Fraction of the non-mitochondrial genes given a spatial pattern.
    patterns
        Patterns handed out in turn to the spatial genes: ``"domain"`` (a different mean
        in each domain), ``"gradient"`` (linear trend across the tissue),
        ``"hotspot"`` (one or two Gaussian hot spots), ``"stripe"`` (a narrow band) and
        ``"periodic"`` (a sine wave along a random direction).
    effect_size
        Natural-log fold change between where the pattern is off (0) and fully on (1).
        A sequence is cycled over the spatial genes.
    mean_depth
        Mean library size (total expected counts) of a spot.
    depth_cv
        Coefficient of variation of the log-normal library sizes.
    depth_gradient
        Log fold change of library size from one side of the tissue to the other, along
        a random direction: a technical confounder of spatial expression.
    dispersion
        Negative-binomial dispersion (``1 / size``) of every gene; 0 gives Poisson counts.
    n_mito_genes
        Number of non-spatial mitochondrial genes (``"MT-..."``) taking together about 5%
        of the counts, so that QC mitochondrial fractions are meaningful.
    n_cell_types
        If > 0, each spot is a mixture of cell types with Dirichlet proportions that
        depend on its domain, and each type has marker genes (``MARKER_LOG_FOLD`` log
        fold change, pattern ``"cell_type"``, taken from the null genes) whose expected
        counts follow the mixture.
    single_cells
        With cell types: give each spot exactly one type, drawn from its domain's
        proportions (one-hot rows in ``obsm['cell_type_proportions']`` and the type in
        ``obs['cell_type']``), as in single-cell-resolution data (Xenium, MERFISH,
        segmented Visium HD; use ``layout="random"``).
    random_state
        Seed or numpy Generator; the same seed gives the same tissue and counts.

    Returns
    -------
    AnnData
        Spots x genes with integer CSR counts in ``X`` and ``layers['counts']``,
        coordinates in um in ``obsm['spatial']``, and the truth:
        ``obs['domain']`` (categorical), ``obs['library_size_factor']`` (``s_i /
        mean_depth``), ``var['is_spatial']``, ``var['pattern']`` (``"none"`` for null
        genes), ``var['effect_size']``, ``var['base_mean']`` (expected count at the mean
        depth, outside any pattern), ``uns['simulation']`` (every parameter plus the
        pattern parameters, in coordinates scaled to the unit square), and with cell
        types ``obsm['cell_type_proportions']`` (DataFrame, rows sum to 1),
        ``var['cell_type_marker']`` and ``uns['simulation']['cell_type_profiles']``
        (expected counts of a pure spot of each type at the mean depth).

    Raises
    ------
    SpatiomeInputError
        If an argument is out of range or unknown.

    Examples
    --------
    >>> adata = simulate_tissue(n_spots=500, n_genes=60, random_state=1)
    >>> adata.shape
    (500, 60)
    >>> adata.obs["domain"].cat.categories.tolist()
    ['Layer1', 'Layer2', 'Layer3', 'Layer4', 'Layer5']
    >>> int(adata.var["is_spatial"].sum()), adata.var_names[-1]
    (14, 'MT-ATP8')
    >>> mix = simulate_tissue(n_spots=300, n_genes=80, n_cell_types=3, domains="blobs")
    >>> mix.obsm["cell_type_proportions"].sum(axis=1).round(6).unique().tolist()
    [1.0]
    >>> cells = simulate_tissue(n_spots=300, n_genes=80, layout="random", n_cell_types=3,
    ...                         single_cells=True)
    >>> sorted(cells.obsm["cell_type_proportions"].to_numpy().max(axis=1).tolist())[0]
    1.0
    """
    pattern_list, effects = _check_arguments(
        n_spots, n_genes, layout, domains, n_domains, frac_spatial, patterns, effect_size,
        mean_depth, depth_cv, depth_gradient, dispersion, n_mito_genes, n_cell_types,
        random_state,
    )  # fmt: skip
    if not isinstance(single_cells, bool | np.bool_):
        raise SpatiomeInputError(f"single_cells must be True or False, got {single_cells!r}")
    rng = check_random_state(random_state)
    coords, obs, prefix = _layout(n_spots, layout, rng)
    origin = coords.min(axis=0)
    extent = float(np.ptp(coords, axis=0).max())
    unit = (coords - origin) / extent
    domain_codes, domain_names = _domains(unit, domains, n_domains, rng)
    log_size, depth_direction = _library_sizes(unit, mean_depth, depth_cv, depth_gradient, rng)
    genes = _genes(n_genes, n_mito_genes, frac_spatial, pattern_list, effects, unit, n_domains,
                   rng)  # fmt: skip
    mixture = _cell_types(n_cell_types, genes, domain_codes, n_domains, rng)
    if mixture is not None and single_cells:
        mixture.proportions = _one_type_per_cell(mixture.proportions, rng)
    key = int(rng.integers(0, np.iinfo(np.int64).max))
    arrays = _kernel_arrays(unit, domain_codes, genes, mixture)
    # The patterned genes share a fixed part of each spot's expected total (their summed
    # expression is rescaled to its tissue mean), so spot totals carry no pattern and a
    # null gene stays null even after total-count normalization.
    patterned = _patterned_sum(*arrays)
    balance = patterned.mean() / np.where(patterned > 0, patterned, 1.0)
    counts = _sample_counts(
        key, np.exp(log_size), balance, arrays, np.full(n_genes, float(dispersion))
    )

    width = len(str(n_spots))
    obs["domain"] = pd.Categorical.from_codes(domain_codes, categories=domain_names)
    obs["library_size_factor"] = np.exp(log_size) / mean_depth
    var = pd.DataFrame(
        {
            "is_spatial": genes.pattern != "none",
            "pattern": genes.pattern,
            "effect_size": genes.effect,
            "base_mean": mean_depth * np.exp(genes.log_base),
        }
    )
    if mixture is not None:
        var["cell_type_marker"] = np.where(
            mixture.marker >= 0, np.asarray(mixture.names + [""])[mixture.marker], ""
        )
    adata = build_anndata(
        counts,
        obs_names=[f"{prefix}{i + 1:0{width}d}" for i in range(n_spots)],
        var_names=genes.names,
        coordinates=coords,
        obs=obs,
        var=var,
        source={"reader": "simulate_tissue", "format": "simulated"},
        spatial_unit="um",
        where="simulate_tissue",
    )
    parameters = {
        "n_spots": n_spots,
        "n_genes": n_genes,
        "layout": layout,
        "domains": domains,
        "n_domains": n_domains,
        "frac_spatial": float(frac_spatial),
        "patterns": list(pattern_list),
        "effect_size": [float(e) for e in effects],
        "mean_depth": float(mean_depth),
        "depth_cv": float(depth_cv),
        "depth_gradient": float(depth_gradient),
        "dispersion": float(dispersion),
        "n_mito_genes": n_mito_genes,
        "n_cell_types": n_cell_types,
        "random_state": _describe_seed(random_state),
    }
    adata.uns["simulation"] = {
        **parameters,
        "spacing_um": SPOT_SPACING_UM if layout == "hex" else CELL_SPACING_UM,
        "unit_origin": origin,
        "unit_extent": extent,
        "depth_gradient_direction": depth_direction,
        "abundance_sd": ABUNDANCE_SD,
        "mito_fraction": MITO_FRACTION if n_mito_genes else 0.0,
        "pattern_parameters": _pattern_table(genes),
        "domain_levels": _domain_level_table(genes, domain_names),
    }
    if mixture is not None:
        adata.obsm["cell_type_proportions"] = pd.DataFrame(
            mixture.proportions, index=adata.obs_names, columns=mixture.names
        )
        profiles = mean_depth * np.exp(genes.log_base)[None, :] * mixture.ratio
        if single_cells:
            adata.obs["cell_type"] = pd.Categorical.from_codes(
                mixture.proportions.argmax(axis=1), categories=mixture.names
            )
        adata.uns["simulation"]["single_cells"] = bool(single_cells)
        adata.uns["simulation"]["cell_types"] = list(mixture.names)
        adata.uns["simulation"]["marker_log_fold"] = MARKER_LOG_FOLD
        adata.uns["simulation"]["cell_type_profiles"] = pd.DataFrame(
            profiles, index=mixture.names, columns=adata.var_names
        )
    return adata


def _check_arguments(
    n_spots, n_genes, layout, domains, n_domains, frac_spatial, patterns, effect_size,
    mean_depth, depth_cv, depth_gradient, dispersion, n_mito_genes, n_cell_types, random_state,
) -> tuple[tuple[str, ...], tuple[float, ...]]:  # fmt: skip
    """Validate every argument of simulate_tissue; return the patterns and effect sizes."""
    _check_int("n_spots", n_spots, MIN_SPOTS, MAX_SPOTS)
    _check_int("n_genes", n_genes, 10, 1_000_000)
    _check_choice("layout", layout, LAYOUTS)
    _check_choice("domains", domains, DOMAIN_KINDS)
    _check_int("n_domains", n_domains, 2, 50)
    if n_domains > n_spots // 20:
        raise SpatiomeInputError(
            f"n_domains={n_domains} is too many for {n_spots} spots: use at most "
            f"n_spots // 20 = {n_spots // 20} so that every domain has spots"
        )
    _check_int("n_mito_genes", n_mito_genes, 0, n_genes - 5)
    _check_int("n_cell_types", n_cell_types, 0, 50)
    _check_real("frac_spatial", frac_spatial, 0.0, 1.0)
    _check_real("mean_depth", mean_depth, 1.0, 1e8)
    _check_real("depth_cv", depth_cv, 0.0, 10.0)
    _check_real("depth_gradient", depth_gradient, -20.0, 20.0)
    _check_real("dispersion", dispersion, 0.0, 1e3)
    pattern_list = (patterns,) if isinstance(patterns, str) else tuple(patterns)
    unknown = [p for p in pattern_list if p not in PATTERNS]
    if not pattern_list or unknown:
        raise SpatiomeInputError(
            f"patterns must be a non-empty sequence of {PATTERNS}, got {patterns!r}"
        )
    effects = (effect_size,) if isinstance(effect_size, numbers.Real) else tuple(effect_size)
    if not effects:
        raise SpatiomeInputError("effect_size must be a number or a non-empty sequence of them")
    for value in effects:
        _check_real("effect_size", value, -20.0, 20.0)
    if not (
        random_state is None
        or isinstance(random_state, np.random.Generator)
        or (isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool))
    ):
        raise SpatiomeInputError(
            f"random_state must be an int, a numpy Generator or None, got {random_state!r}"
        )
    n_null = round((n_genes - n_mito_genes) * (1.0 - frac_spatial))
    if n_cell_types and n_null < 2 * n_cell_types:
        raise SpatiomeInputError(
            f"n_cell_types={n_cell_types} needs at least {2 * n_cell_types} non-spatial genes "
            f"for markers but there are {n_null}: raise n_genes or lower frac_spatial"
        )
    return pattern_list, effects


def _check_int(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SpatiomeInputError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise SpatiomeInputError(f"{name} must be between {low} and {high}, got {value}")


def _check_real(name: str, value, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SpatiomeInputError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and low <= value <= high):
        raise SpatiomeInputError(f"{name} must be between {low:g} and {high:g}, got {value}")


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SpatiomeInputError(f"{name} must be one of {choices}, got {value!r}")


def _describe_seed(random_state) -> int | str:
    if random_state is None:
        return 0  # check_random_state maps None to seed 0
    if isinstance(random_state, np.random.Generator):
        return "numpy.random.Generator"
    return int(random_state)


def _layout(n_spots: int, layout: str, rng: np.random.Generator):
    """Coordinates in um, the obs frame (array_row/array_col for hex) and the id prefix."""
    if layout == "hex":
        rows, cols = _hex_lattice(n_spots, rng)
        obs = pd.DataFrame({"array_row": rows, "array_col": cols})
        coords = np.column_stack(
            [cols * (SPOT_SPACING_UM / 2), rows * (SPOT_SPACING_UM * math.sqrt(3) / 2)]
        )
        return coords, obs, "Spot"
    side = CELL_SPACING_UM * math.sqrt(n_spots)
    coords = rng.uniform(0.0, side, size=(n_spots, 2))
    return coords, pd.DataFrame(index=pd.RangeIndex(n_spots)), "Cell"


def _hex_lattice(n_spots: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_spots`` lattice points inside a rounded, slightly lobed tissue outline."""
    # radius (in spacings) of a disc holding n_spots lattice points, with room for the outline
    radius = math.sqrt(n_spots * math.sqrt(3) / (2 * math.pi)) * 1.7
    n_rows = int(radius / (math.sqrt(3) / 2)) + 1
    n_cols = int(radius * 2) + 1
    rows, cols = np.meshgrid(
        np.arange(-n_rows, n_rows + 1), np.arange(-n_cols, n_cols + 1), indexing="ij"
    )
    on_lattice = (rows - cols) % 2 == 0
    rows, cols = rows[on_lattice], cols[on_lattice]
    stretch = math.exp(rng.uniform(-0.2, 0.2))
    lobes, phase = int(rng.integers(2, 5)), rng.uniform(0, 2 * math.pi)
    x = cols / 2 / stretch
    y = rows * (math.sqrt(3) / 2) * stretch
    outline = 1.0 + 0.08 * np.sin(lobes * np.arctan2(y, x) + phase)
    chosen = np.argsort(np.hypot(x, y) / outline, kind="stable")[:n_spots]
    rows, cols = rows[chosen], cols[chosen]
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    row_shift, col_shift = rows.min(), cols.min()
    if (row_shift - col_shift) % 2:
        col_shift -= 1  # keep Visium parity: array_col is even on even rows
    return (rows - row_shift).astype(np.int64), (cols - col_shift).astype(np.int64)


def _domains(unit: np.ndarray, kind: str, n_domains: int, rng: np.random.Generator):
    if kind == "layers":
        return _layers(unit, n_domains, rng), [f"Layer{k + 1}" for k in range(n_domains)]
    return _blobs(unit, n_domains, rng), [f"Region{k + 1}" for k in range(n_domains)]


def _layers(unit: np.ndarray, n_domains: int, rng: np.random.Generator) -> np.ndarray:
    """Bands of random widths along a random axis, borders bent by a gentle wave."""
    angle = rng.uniform(0, math.pi)
    along = unit @ np.array([math.cos(angle), math.sin(angle)])
    across = unit @ np.array([-math.sin(angle), math.cos(angle)])
    wave = 0.04 * np.sin(2 * math.pi * rng.uniform(0.8, 1.6) * across + rng.uniform(0, 2 * math.pi))
    widths = rng.dirichlet(np.full(n_domains, 12.0))
    n = unit.shape[0]
    sizes = np.maximum(1, np.floor(widths * n).astype(np.int64))
    sizes[np.argmax(sizes)] += n - sizes.sum()
    codes = np.empty(n, dtype=np.int64)
    codes[np.argsort(along + wave, kind="stable")] = np.repeat(np.arange(n_domains), sizes)
    return codes


def _blobs(unit: np.ndarray, n_domains: int, rng: np.random.Generator) -> np.ndarray:
    """Voronoi regions of k-means centres in smoothly warped coordinates."""
    freq = rng.uniform(1.0, 2.5, size=(2, 2)) * rng.choice([-1.0, 1.0], size=(2, 2))
    phase = rng.uniform(0, 2 * math.pi, size=2)
    warped = unit + 0.06 * np.sin(2 * math.pi * (unit @ freq.T) + phase)
    sample = warped[rng.choice(unit.shape[0], min(unit.shape[0], 5000), replace=False)]
    centres = _kmeans(sample, n_domains, rng)
    codes = np.empty(unit.shape[0], dtype=np.int64)
    step = 200_000
    for start in range(0, unit.shape[0], step):
        block = warped[start : start + step]
        dist = ((block[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
        codes[start : start + step] = dist.argmin(axis=1)
    for k in np.setdiff1d(np.arange(n_domains), codes):
        # an empty region takes the spot nearest its centre
        codes[((warped - centres[k]) ** 2).sum(axis=1).argmin()] = k
    return codes


def _kmeans(points: np.ndarray, k: int, rng: np.random.Generator, n_iter: int = 30):
    """Lloyd's algorithm from a farthest-point start (spreads the centres over the tissue)."""
    centres = [points[rng.integers(points.shape[0])]]
    nearest = ((points - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        centres.append(points[nearest.argmax()])
        nearest = np.minimum(nearest, ((points - centres[-1]) ** 2).sum(axis=1))
    centres = np.array(centres)
    for _ in range(n_iter):
        labels = ((points[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
        for c in range(k):
            members = points[labels == c]
            if len(members):
                centres[c] = members.mean(axis=0)
    return centres


def _library_sizes(unit, mean_depth, depth_cv, depth_gradient, rng):
    """Log library sizes: log-normal noise times a gradient along a random direction."""
    sigma = math.sqrt(math.log1p(depth_cv**2))
    noise = rng.standard_normal(unit.shape[0])
    angle = rng.uniform(0, 2 * math.pi)
    direction = np.array([math.cos(angle), math.sin(angle)])
    along = unit @ direction
    position = (along - along.min()) / max(np.ptp(along), 1e-12)
    log_size = (
        math.log(mean_depth) - sigma**2 / 2 + sigma * noise + depth_gradient * (position - 0.5)
    )
    return log_size, direction


def _genes(n_genes, n_mito, frac_spatial, patterns, effects, unit, n_domains, rng) -> _Genes:
    n_regular = n_genes - n_mito
    width = max(4, len(str(n_regular)))
    names = [f"Gene{i + 1:0{width}d}" for i in range(n_regular)]
    names += [
        _MITO_NAMES[k] if k < len(_MITO_NAMES) else f"MT-ORF{k - len(_MITO_NAMES) + 1}"
        for k in range(n_mito)
    ]
    abundance = np.exp(rng.normal(0.0, ABUNDANCE_SD, n_regular))
    abundance *= (1.0 - (MITO_FRACTION if n_mito else 0.0)) / abundance.sum()
    mito = np.exp(rng.normal(0.0, 0.5, n_mito))
    mito *= MITO_FRACTION / max(mito.sum(), 1e-300)
    log_base = np.log(np.concatenate([abundance, mito]))

    pattern = np.full(n_genes, "none", dtype=object)
    code = np.zeros(n_genes, dtype=np.int64)
    effect = np.zeros(n_genes)
    params = np.zeros((n_genes, _N_PARAMS))
    levels = np.zeros((n_genes, n_domains))
    spatial = rng.choice(n_regular, round(frac_spatial * n_regular), replace=False)
    hull = unit[ConvexHull(unit).vertices]
    for rank, j in enumerate(spatial):
        name = patterns[rank % len(patterns)]
        pattern[j], code[j] = name, _CODES[name]
        effect[j] = effects[rank % len(effects)]
        params[j], levels[j] = _pattern_parameters(name, unit, hull, n_domains, rng)
    is_mito = np.arange(n_genes) >= n_regular
    return _Genes(names, log_base, pattern, code, effect, params, levels, is_mito)


def _pattern_parameters(name, unit, hull, n_domains, rng):
    """Random parameters of one pattern (unit coordinates); see _pattern_values."""
    params = np.zeros(_N_PARAMS)
    levels = np.zeros(n_domains)
    if name == "domain":
        levels = rng.permutation(np.linspace(0.0, 1.0, n_domains))
        return params, levels
    if name == "hotspot":
        n_hot = int(rng.integers(1, 3))
        params[2] = n_hot
        for h in range(n_hot):
            params[3 + 3 * h : 5 + 3 * h] = unit[rng.integers(unit.shape[0])]
            params[5 + 3 * h] = rng.uniform(0.07, 0.12)
        return params, levels
    angle = rng.uniform(0, 2 * math.pi if name == "gradient" else math.pi)
    params[:2] = math.cos(angle), math.sin(angle)
    projected = hull @ params[:2]
    low, high = projected.min(), projected.max()
    if name == "gradient":
        params[2:4] = low, high
    elif name == "stripe":
        params[2] = low + (high - low) * rng.uniform(0.25, 0.75)
        params[3] = (high - low) * rng.uniform(0.04, 0.08)
    else:  # periodic
        params[2] = (high - low) / rng.uniform(2.0, 4.0)
        params[3] = rng.uniform(0, 2 * math.pi)
    return params, levels


def _cell_types(n_types, genes: _Genes, domain_codes, n_domains, rng) -> _Mixture | None:
    """Dirichlet mixtures whose concentrations favour one or two types per domain."""
    if n_types == 0:
        return None
    names = [f"CellType{t + 1}" for t in range(n_types)]
    alpha = np.full((n_domains, n_types), 0.3)
    alpha[np.arange(n_domains), np.arange(n_domains) % n_types] += 4.0
    alpha[np.arange(n_domains), rng.integers(0, n_types, n_domains)] += 2.0
    draws = rng.standard_gamma(alpha[domain_codes])
    totals = draws.sum(axis=1, keepdims=True)
    # all draws can underflow to 0 for tiny concentrations: use the domain's mean then
    fallback = (alpha / alpha.sum(axis=1, keepdims=True))[domain_codes]
    proportions = np.where(totals > 0, draws / np.where(totals > 0, totals, 1.0), fallback)

    pool = np.flatnonzero((genes.pattern == "none") & ~genes.is_mito)
    per_type = max(1, min(10, len(pool) // (2 * n_types)))
    markers = rng.choice(pool, per_type * n_types, replace=False).reshape(n_types, per_type)
    marker = np.full(len(genes.names), -1, dtype=np.int64)
    ratio = np.ones((n_types, len(genes.names)))
    for t in range(n_types):
        marker[markers[t]] = t
        ratio[t, markers[t]] = math.exp(MARKER_LOG_FOLD)
    genes.pattern[marker >= 0] = "cell_type"
    genes.effect[marker >= 0] = MARKER_LOG_FOLD
    return _Mixture(names, proportions, marker, ratio)


def _one_type_per_cell(proportions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One-hot rows: each cell's type drawn from its (domain-dependent) proportions."""
    cumulative = np.cumsum(proportions, axis=1)
    draws = rng.random(proportions.shape[0]) * cumulative[:, -1]
    types = np.minimum((cumulative < draws[:, None]).sum(axis=1), proportions.shape[1] - 1)
    one_hot = np.zeros_like(proportions)
    one_hot[np.arange(proportions.shape[0]), types] = 1.0
    return one_hot


def _kernel_arrays(unit, domain_codes, genes: _Genes, mixture: _Mixture | None) -> tuple:
    """The per-spot and per-gene arrays the compiled code reads, in its argument order."""
    n_spots, n_genes = unit.shape[0], len(genes.names)
    if mixture is None:
        marker = np.full(n_genes, -1, dtype=np.int64)
        proportions, ratio = np.zeros((n_spots, 0)), np.zeros((0, n_genes))
    else:
        marker, proportions, ratio = mixture.marker, mixture.proportions, mixture.ratio
    ux, uy = np.ascontiguousarray(unit[:, 0]), np.ascontiguousarray(unit[:, 1])
    base = np.exp(genes.log_base)
    return (ux, uy, domain_codes, base, genes.code, genes.effect, genes.params, genes.levels,
            marker, proportions, ratio)  # fmt: skip


def _sample_counts(key, size_factor, balance, arrays, dispersion):
    """CSR counts, drawn chunk by chunk of spots and packed without a dense matrix."""
    n_spots, n_genes = size_factor.shape[0], arrays[3].shape[0]
    rows_per_chunk = max(1, _CHUNK_ENTRIES // n_genes)
    buffer_values = np.empty(rows_per_chunk * n_genes, dtype=np.int32)
    buffer_indices = np.empty(rows_per_chunk * n_genes, dtype=np.int32)
    row_nnz = np.empty(n_spots, dtype=np.int64)
    data = indices = None
    filled = 0
    for start in range(0, n_spots, rows_per_chunk):
        stop = min(n_spots, start + rows_per_chunk)
        nnz = row_nnz[start:stop]
        _sample_rows(
            start, stop, np.uint64(key), size_factor, balance, dispersion, *arrays,
            buffer_values, buffer_indices, nnz,
        )  # fmt: skip
        chunk_nnz = int(nnz.sum())
        if data is None:
            # size the output from the first chunk's density; untouched pages cost nothing
            estimate = chunk_nnz / (stop - start) * n_spots * 1.05 + 1024
            capacity = int(min(n_spots * n_genes, estimate))
            data, indices = _empty_large(capacity), _empty_large(capacity)
        if filled + chunk_nnz > data.shape[0]:
            capacity = int(max(filled + chunk_nnz, 1.25 * data.shape[0]))
            data = _grow(data, filled, capacity)
            indices = _grow(indices, filled, capacity)
        offsets = np.empty(stop - start, dtype=np.int64)
        offsets[0] = filled
        np.cumsum(nnz[:-1], out=offsets[1:])
        offsets[1:] += filled
        _compact_rows(buffer_values, buffer_indices, nnz, offsets, n_genes, data, indices)
        filled += chunk_nnz
    data, indices = data[:filled], indices[:filled]
    index_dtype = np.int32 if filled < np.iinfo(np.int32).max else np.int64
    indptr = np.zeros(n_spots + 1, dtype=index_dtype)
    np.cumsum(row_nnz, out=indptr[1:])
    return sp.csr_matrix(
        (data, indices.astype(index_dtype, copy=False), indptr), shape=(n_spots, n_genes)
    )


def _empty_large(n_items: int) -> np.ndarray:
    """Uninitialised int32 array on anonymous memory, with transparent huge pages asked for.

    Filling gigabytes of fresh memory is dominated by page faults; 2 MB pages make them
    hundreds of times rarer where the kernel allows it.
    """
    nbytes = max(n_items, 1) * 4
    if nbytes < (64 << 20):
        return np.empty(n_items, dtype=np.int32)
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):
            buffer.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(buffer, dtype=np.int32, count=n_items)


def _grow(array: np.ndarray, filled: int, capacity: int) -> np.ndarray:
    larger = _empty_large(capacity)
    larger[:filled] = array[:filled]
    return larger


def _pattern_table(genes: _Genes) -> pd.DataFrame:
    """Parameters of every patterned gene (unit coordinates), as stored in uns."""
    rows = np.flatnonzero(genes.code != _CODES["none"])
    table = pd.DataFrame(
        genes.params[rows],
        index=pd.Index(np.asarray(genes.names, dtype=object)[rows], dtype=object),
        columns=["direction_x", "direction_y", *[f"p{k}" for k in range(2, _N_PARAMS)]],
    )
    table.insert(0, "pattern", genes.pattern[rows].astype(str))
    return table


def _domain_level_table(genes: _Genes, domain_names: list[str]) -> pd.DataFrame:
    rows = np.flatnonzero(genes.code == _CODES["domain"])
    return pd.DataFrame(
        genes.levels[rows],
        index=pd.Index(np.asarray(genes.names, dtype=object)[rows], dtype=object),
        columns=domain_names,
    )


def _pattern_values(adata: AnnData, gene: str) -> np.ndarray:
    """True pattern value in [0, 1] of ``gene`` at every spot, rebuilt from ``uns``.

    A plain numpy restatement of the compiled pattern code, used to check the counts
    against the truth.
    """
    sim = adata.uns["simulation"]
    unit = (np.asarray(adata.obsm["spatial"]) - np.asarray(sim["unit_origin"])) / float(
        sim["unit_extent"]
    )
    table = sim["pattern_parameters"]
    if gene not in table.index:
        return np.zeros(adata.n_obs)
    row = table.loc[gene]
    params = row.drop("pattern").to_numpy(dtype=float)
    kind = row["pattern"]
    if kind == "domain":
        levels = sim["domain_levels"].loc[gene]
        return levels.loc[adata.obs["domain"].astype(str)].to_numpy()
    projected = unit @ params[:2]
    if kind == "gradient":
        return np.clip((projected - params[2]) / (params[3] - params[2]), 0.0, 1.0)
    if kind == "stripe":
        return np.exp(-0.5 * ((projected - params[2]) / params[3]) ** 2)
    if kind == "periodic":
        return 0.5 * (1.0 + np.sin(2 * np.pi * projected / params[2] + params[3]))
    if kind == "hotspot":
        value = np.zeros(adata.n_obs)
        for h in range(int(params[2])):
            centre, radius = params[3 + 3 * h : 5 + 3 * h], params[5 + 3 * h]
            distance2 = ((unit - centre) ** 2).sum(axis=1)
            value = np.maximum(value, np.exp(-0.5 * distance2 / radius**2))
        return value
    return np.zeros(adata.n_obs)  # cell-type markers follow the mixture, not a pattern


# ---------------------------------------------------------------------------------------
# Compiled sampling. Each matrix entry gets its own random stream from a counter-based
# generator (splitmix64 keyed by the seed and the entry's position), so the counts do not
# depend on the number of threads or on how the spots are split into chunks.

_CODES = {name: code for code, name in enumerate(("none", *PATTERNS))}
CODE_NONE, CODE_DOMAIN, CODE_GRADIENT, CODE_HOTSPOT, CODE_STRIPE, CODE_PERIODIC = (
    _CODES[name] for name in ("none", "domain", "gradient", "hotspot", "stripe", "periodic")
)
_N_PARAMS = 10
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = 1.0 / 9007199254740992.0  # 2**-53
# Means up to this are drawn by inverting the NB distribution function directly; above
# it a gamma-Poisson draw costs O(1) instead of O(mean) steps.
_INVERSION_MAX_MEAN = 30.0
# 1/k for the inversion walk: a multiplication instead of a division per step
_N_RECIPROCALS = 256
_RECIPROCALS = np.concatenate([[0.0], 1.0 / np.arange(1, _N_RECIPROCALS)])


@numba.njit(inline="always", cache=True)
def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@numba.njit(inline="always", cache=True)
def _uniform(state):
    """Next splitmix64 output as a float in (0, 1), and the advanced state."""
    state = state + _GOLDEN
    return ((_mix64(state) >> np.uint64(11)) + 0.5) * _TO_UNIT, state


@numba.njit(cache=True)
def _normal(state):
    u1, state = _uniform(state)
    u2, state = _uniform(state)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2), state


@numba.njit(cache=True)
def _gamma(shape, state):
    """Gamma(shape, 1) by Marsaglia and Tsang's squeeze method (boosted for shape < 1)."""
    boost = 1.0
    if shape < 1.0:
        u, state = _uniform(state)
        boost = u ** (1.0 / shape)
        shape += 1.0
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x, state = _normal(state)
        v = 1.0 + c * x
        if v <= 0.0:
            continue
        v = v * v * v
        u, state = _uniform(state)
        if u < 1.0 - 0.0331 * x * x * x * x:
            return d * v * boost, state
        if math.log(u) < 0.5 * x * x + d * (1.0 - v + math.log(v)):
            return d * v * boost, state


@numba.njit(cache=True)
def _poisson(lam, state):
    """Poisson(lam): inversion for small means, Hoermann's PTRS rejection for large ones."""
    if lam <= 0.0:
        return 0, state
    if lam < 10.0:
        u, state = _uniform(state)
        p = math.exp(-lam)
        cdf = p
        k = 0
        while u > cdf and p > 0.0:
            k += 1
            p *= lam / k
            cdf += p
        return k, state
    slam = math.sqrt(lam)
    loglam = math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
    v_r = 0.9277 - 3.6224 / (b - 2.0)
    while True:
        u, state = _uniform(state)
        u -= 0.5
        v, state = _uniform(state)
        us = 0.5 - abs(u)
        k = math.floor((2.0 * a / us + b) * u + lam + 0.43)
        if us >= 0.07 and v <= v_r:
            return int(k), state
        if k < 0.0 or (us < 0.013 and v > us):
            continue
        log_accept = math.log(v) + math.log(inv_alpha) - math.log(a / (us * us) + b)
        if log_accept <= -lam + k * loglam - math.lgamma(k + 1.0):
            return int(k), state


@numba.njit(cache=True)
def _nb_draw(mu, dispersion, state):
    """One negative-binomial draw with mean ``mu`` and variance ``mu + dispersion * mu**2``."""
    if mu <= 0.0:
        return 0, state
    if mu > _INVERSION_MAX_MEAN:
        if dispersion <= 0.0:
            return _poisson(mu, state)
        size = 1.0 / dispersion
        g, state = _gamma(size, state)
        return _poisson(g * mu / size, state)
    u, state = _uniform(state)
    # P(0) >= exp(-mu) >= 1 - mu + mu^2/2 - mu^3/6: most zeros need no logarithm
    if u <= 1.0 - mu * (1.0 - mu * (0.5 - mu / 6.0)):
        return 0, state
    if dispersion <= 0.0:
        p = math.exp(-mu)
        step_a, step_b = 0.0, mu  # Poisson: p(k) = p(k-1) * mu / k
    else:
        size = 1.0 / dispersion
        ratio = mu / (size + mu)
        p = math.exp(-size * math.log1p(mu / size))
        if p == 0.0:
            g, state = _gamma(size, state)
            return _poisson(g * mu / size, state)
        # NB: p(k) = p(k-1) * ratio * (k - 1 + size) / k = p(k-1) * (a + b / k)
        step_a, step_b = ratio, ratio * (size - 1.0)
    cdf = p
    k = 0
    while u > cdf and p > 0.0:
        k += 1
        p *= step_a + step_b * (_RECIPROCALS[k] if k < _N_RECIPROCALS else 1.0 / k)
        cdf += p
    return k, state


@numba.njit(cache=True)
def _pattern_value(code, params, levels, j, x, y, domain):
    """Value in [0, 1] of gene ``j``'s spatial pattern at unit coordinates (x, y).

    Takes the whole parameter tables and a row number: slicing rows out of them in the
    hot loop would update a shared reference count from every thread.
    """
    if code == CODE_DOMAIN:
        return levels[j, domain]
    proj = x * params[j, 0] + y * params[j, 1]
    if code == CODE_GRADIENT:
        g = (proj - params[j, 2]) / (params[j, 3] - params[j, 2])
        return min(1.0, max(0.0, g))
    if code == CODE_STRIPE:
        z = (proj - params[j, 2]) / params[j, 3]
        return math.exp(-0.5 * z * z)
    if code == CODE_PERIODIC:
        return 0.5 * (1.0 + math.sin(2.0 * math.pi * proj / params[j, 2] + params[j, 3]))
    if code == CODE_HOTSPOT:
        best = 0.0
        for h in range(int(params[j, 2])):
            dx = x - params[j, 3 + 3 * h]
            dy = y - params[j, 4 + 3 * h]
            r = params[j, 5 + 3 * h]
            best = max(best, math.exp(-0.5 * (dx * dx + dy * dy) / (r * r)))
        return best
    return 0.0


@numba.njit(parallel=True, cache=True)
def _sample_rows(
    start,
    stop,
    key,
    size,
    balance,
    dispersion,
    ux,
    uy,
    domain,
    base,
    code,
    effect,
    params,
    levels,
    marker,
    proportions,
    marker_ratio,
    values,
    indices,
    row_nnz,
):
    """Counts of spots ``start:stop``; row ``i`` fills ``values/indices[i*G : i*G + row_nnz[i]]``.

    ``marker[j] >= 0`` marks a cell-type marker gene whose mean is scaled by the spot's
    mixture ``proportions[i] @ marker_ratio[:, j]``.
    """
    n_genes = base.shape[0]
    key = np.uint64(key)
    for r in numba.prange(stop - start):
        i = start + r
        offset = r * n_genes
        nnz = 0
        for j in range(n_genes):
            mu = size[i] * base[j]
            if code[j] != CODE_NONE:
                mu *= math.exp(
                    effect[j] * _pattern_value(code[j], params, levels, j, ux[i], uy[i], domain[i])
                )
            if marker[j] >= 0:
                mix = 0.0
                for t in range(proportions.shape[1]):
                    mix += proportions[i, t] * marker_ratio[t, j]
                mu *= mix
            if code[j] != CODE_NONE or marker[j] >= 0:
                mu *= balance[i]
            entry = np.uint64(i) * np.uint64(n_genes) + np.uint64(j)
            state = _mix64(key ^ _mix64(entry + _GOLDEN))
            count, state = _nb_draw(mu, dispersion[j], state)
            if count > 0:
                values[offset + nnz] = count
                indices[offset + nnz] = j
                nnz += 1
        row_nnz[r] = nnz


@numba.njit(parallel=True, cache=True)
def _compact_rows(values, indices, row_nnz, row_offsets, n_genes, out_values, out_indices):
    """Copy each row's filled prefix to ``row_offsets[r]`` in the packed output arrays."""
    for r in numba.prange(row_nnz.shape[0]):
        source = r * n_genes
        target = row_offsets[r]
        for k in range(row_nnz[r]):
            out_values[target + k] = values[source + k]
            out_indices[target + k] = indices[source + k]


@numba.njit(parallel=True, cache=True)
def _patterned_sum(ux, uy, domain, base, code, effect, params, levels, marker, proportions, ratio):
    """Each spot's summed relative expression of the patterned and marker genes."""
    active = np.flatnonzero((code != CODE_NONE) | (marker >= 0))
    out = np.empty(ux.shape[0])
    for i in numba.prange(ux.shape[0]):
        total = 0.0
        for jj in range(active.shape[0]):
            j = active[jj]
            value = base[j]
            if code[j] != CODE_NONE:
                value *= math.exp(
                    effect[j] * _pattern_value(code[j], params, levels, j, ux[i], uy[i], domain[i])
                )
            if marker[j] >= 0:
                mix = 0.0
                for t in range(proportions.shape[1]):
                    mix += proportions[i, t] * ratio[t, j]
                value *= mix
            total += value
        out[i] = total
    return out
