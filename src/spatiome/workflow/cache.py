"""Step cache of the pipeline: what each step added to the data, keyed by what it depends on.

Every step of :func:`spatiome.workflow.run_pipeline` reads and writes one AnnData. The cache
stores, per step, the *delta* the step made (new or changed ``obs``/``var`` columns,
``obsm``/``obsp``/``layers`` entries, ``uns`` keys, and ``X`` when it changed) and the
step's return value, under a key that hashes

- the spatiome version,
- the parameters the step reads (:data:`STEP_PARAMETERS`),
- the keys of the steps whose outputs it reads (:data:`STEP_DEPENDS`), and through them,
  ultimately, a fingerprint of the input data.

A re-run with one changed parameter therefore recomputes the steps that read it and the
steps that depend on those, and restores the others. Entries are written atomically after
each step, so a run that is killed resumes from its last finished step.

Entries hold no pickles (JSON, npy and Arrow members in one zip file, see
:mod:`spatiome.workflow._archive`), so resuming from a results folder someone else wrote
never runs code from it. A step that stores or returns something this format cannot hold
fails with :class:`~spatiome.workflow._archive.ArchiveFormatError` when its entry is
written, naming the value.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._core.files import atomic_path
from ._archive import ArchiveFormatError, read_archive, write_archive

logger = logging.getLogger("spatiome")

CACHE_FOLDER = ".spatiome_cache"
#: One file per entry (see :class:`StepCache`); earlier versions wrote pickles.
ENTRY_SUFFIX = ".zip"
LEGACY_SUFFIX = ".pkl"

#: Configuration fields each step reads (prefix match on step names ending in "_").
STEP_PARAMETERS: dict[str, tuple[str, ...]] = {
    "qc": (),
    "spatial_qc": ("spatial_qc", "sample_key", "seed"),
    "doublets": ("doublets", "seed"),
    "normalize": ("target_sum",),
    "graph": ("graph_method", "n_spatial_neighbors"),
    "reduce": ("n_comps", "n_top_genes", "umap", "seed"),
    "integration": ("batch_correction", "sample_key", "umap", "seed"),
    "leiden": ("resolution", "n_domains", "seed"),
    "n_domains": ("n_domains", "n_top_genes", "seed"),
    # domain_methods: one method writes obs["spatial_domain"], several obs["domain_<method>"]
    "domains_": ("n_domains", "n_top_genes", "n_gene_groups", "batch_correction", "sample_key",
                 "seed", "domain_methods"),
    "markers": ("domain_methods",),
    "multimodal": ("modality", "modality_input", "n_domains", "seed"),
    "deconvolution": ("reference", "reference_labels", "deconv_method", "deconv_smoothing",
                      "seed"),
    "svg": ("fdr", "min_gene_counts", "trendseek_permutations", "seed"),
    "modules_": ("svg_methods", "max_module_genes", "n_patterns", "fdr", "seed"),
    "neighbourhoods": ("group_key", "label_key", "sample_key", "domain_methods", "n_niches",
                       "seed"),
    "interactions": ("group_key", "label_key", "sample_key", "domain_methods", "lr_resource",
                     "organism", "lr_permutations", "fdr", "seed", "n_top_maps"),
}  # fmt: skip

#: Steps whose outputs each step reads ("svg" stands for every SVG test).
STEP_DEPENDS: dict[str, tuple[str, ...]] = {
    "qc": (),
    "spatial_qc": ("qc",),
    "doublets": ("qc",),
    "normalize": ("qc",),
    "graph": (),
    "reduce": ("normalize",),
    "integration": ("reduce",),
    "leiden": ("reduce", "integration"),
    "n_domains": ("normalize", "graph"),
    "domains_": ("normalize", "graph", "leiden", "n_domains"),
    "markers": ("normalize", "domains_"),
    "multimodal": ("normalize", "leiden"),
    "deconvolution": ("normalize", "graph"),
    "svg": ("qc", "normalize", "graph"),
    "modules_": ("normalize", "graph", "svg_first"),
    "neighbourhoods": ("graph", "leiden", "domains_", "deconvolution"),
    "interactions": ("normalize", "graph", "leiden", "domains_", "deconvolution"),
}


def _lookup(table: dict[str, tuple[str, ...]], step: str, svg_methods) -> tuple[str, ...]:
    if step in svg_methods:
        return table["svg"]
    for name, value in table.items():
        if name.endswith("_") and step.startswith(name):
            return value
    return table[step]


def step_dependencies(step: str, steps: tuple[str, ...], svg_methods) -> list[str]:
    """The earlier steps of ``steps`` whose outputs ``step`` reads.

    Examples
    --------
    >>> steps = ("qc", "normalize", "graph", "reduce", "leiden", "domains_cluster", "markers",
    ...          "moran", "sparkx", "modules_stihc", "report")
    >>> step_dependencies("markers", steps, ("moran", "sparkx"))
    ['normalize', 'domains_cluster']
    >>> step_dependencies("modules_stihc", steps, ("moran", "sparkx"))
    ['normalize', 'graph', 'moran']
    """
    needed = []
    for name in _lookup(STEP_DEPENDS, step, svg_methods):
        if name == "svg_first":
            needed.append(svg_methods[0])
        elif name.endswith("_"):
            needed += [s for s in steps if s.startswith(name)]
        elif name in steps:
            needed.append(name)
    position = steps.index(step)
    return [s for s in needed if steps.index(s) < position]


def step_parameters(step: str, config: dict[str, Any], svg_methods) -> dict[str, Any]:
    """The configuration values ``step`` reads."""
    return {name: config.get(name) for name in _lookup(STEP_PARAMETERS, step, svg_methods)}


def fingerprint(adata: AnnData) -> str:
    """sha256 of the data a run starts from: matrices, names, coordinates and ``obs``.

    Examples
    --------
    >>> import spatiome as sm
    >>> a = sm.datasets.simulate_tissue(n_spots=100, n_genes=20, random_state=0)
    >>> b = a.copy(); b.obsm["spatial"][0, 0] += 1.0
    >>> fingerprint(a) == fingerprint(a.copy()), fingerprint(a) == fingerprint(b)
    (True, False)
    """
    digest = hashlib.sha256()
    for matrix in [adata.X, *(adata.layers[k] for k in sorted(adata.layers))]:
        _update_matrix(digest, matrix)
    for key in sorted(adata.obsm):
        _update_matrix(digest, adata.obsm[key])
    digest.update("\n".join(map(str, adata.obs_names)).encode())
    digest.update("\n".join(map(str, adata.var_names)).encode())
    digest.update(pd.util.hash_pandas_object(adata.obs, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def _update_matrix(digest, matrix) -> None:
    if matrix is None:
        return
    if isinstance(matrix, pd.DataFrame):
        digest.update(pd.util.hash_pandas_object(matrix).to_numpy().tobytes())
        return
    if sp.issparse(matrix):
        matrix = sp.csr_matrix(matrix)
        for part in (matrix.data, matrix.indices, matrix.indptr):
            digest.update(np.ascontiguousarray(part).tobytes())
        digest.update(str(matrix.shape).encode())
        return
    array = np.ascontiguousarray(np.asarray(matrix))
    digest.update(str((array.shape, array.dtype)).encode())
    digest.update(array.tobytes())


@dataclass
class _Snapshot:
    obs: pd.DataFrame
    var: pd.DataFrame
    x_digest: str
    slots: dict[str, dict[str, int]]
    uns: dict[str, int]
    spatiome_uns: dict[str, int]


@dataclass
class Delta:
    """What one step changed in the AnnData (see the module docstring)."""

    obs: dict[str, pd.Series] = field(default_factory=dict)
    var: dict[str, pd.Series] = field(default_factory=dict)
    x: Any = None
    slots: dict[str, dict[str, Any]] = field(default_factory=dict)
    uns: dict[str, Any] = field(default_factory=dict)
    spatiome_uns: dict[str, Any] = field(default_factory=dict)
    #: sha256 of ``X`` after the step, so the next step's snapshot need not hash it again
    x_digest: str | None = None
    #: When, where and how long the step was computed, and what it logged meanwhile
    record: dict[str, Any] | None = None


_SLOTS = ("obsm", "obsp", "varm", "layers")


def _x_digest(adata: AnnData) -> str:
    digest = hashlib.sha256()
    _update_matrix(digest, adata.X)
    return digest.hexdigest()


def snapshot(adata: AnnData, x_digest: str | None = None) -> _Snapshot:
    """What a step may change, recorded before it runs.

    ``x_digest``, the digest of ``X`` left by the previous step's delta, spares hashing
    ``X`` again (the largest cost of a snapshot).
    """
    return _Snapshot(
        obs=adata.obs.copy(),
        var=adata.var.copy(),
        x_digest=x_digest or _x_digest(adata),
        slots={s: {k: id(v) for k, v in getattr(adata, s).items()} for s in _SLOTS},
        uns={k: id(v) for k, v in adata.uns.items()},
        spatiome_uns={k: id(v) for k, v in adata.uns.get("spatiome", {}).items()},
    )


def _changed_columns(before: pd.DataFrame, after: pd.DataFrame) -> dict[str, pd.Series]:
    changed = {}
    for column in after.columns:
        if column not in before.columns or not after[column].equals(before[column]):
            changed[column] = after[column].copy()
    return changed


def delta_since(adata: AnnData, before: _Snapshot) -> Delta:
    """The changes ``adata`` went through since ``before`` was taken."""
    delta = Delta(
        obs=_changed_columns(before.obs, adata.obs),
        var=_changed_columns(before.var, adata.var),
        x_digest=_x_digest(adata),
    )
    if delta.x_digest != before.x_digest:
        delta.x = adata.X
    for slot in _SLOTS:
        current = getattr(adata, slot)
        delta.slots[slot] = {k: v for k, v in current.items() if before.slots[slot].get(k) != id(v)}
    delta.uns = {
        k: v for k, v in adata.uns.items() if k != "spatiome" and before.uns.get(k) != id(v)
    }
    delta.spatiome_uns = {
        k: v
        for k, v in adata.uns.get("spatiome", {}).items()
        if before.spatiome_uns.get(k) != id(v)
    }
    return delta


def apply_delta(adata: AnnData, delta: Delta) -> None:
    """Replay a stored step's changes onto ``adata`` (same spots and genes)."""
    for column, values in delta.obs.items():
        adata.obs[column] = values.reindex(adata.obs_names)
    for column, values in delta.var.items():
        adata.var[column] = values.reindex(adata.var_names)
    if delta.x is not None:
        adata.X = delta.x
    for slot, entries in delta.slots.items():
        for key, value in entries.items():
            getattr(adata, slot)[key] = value
    adata.uns.update(delta.uns)
    if delta.spatiome_uns:
        adata.uns.setdefault("spatiome", {}).update(delta.spatiome_uns)


class StepCache:
    """Stored step results under ``folder``; ``enabled=False`` stores and finds nothing.

    Each entry is one file, ``<key>.zip``, in the pickle-free format of
    :mod:`spatiome.workflow._archive` (JSON, npy and Arrow members): reading an entry never
    runs code, so a results folder from someone else is safe to resume from. Entries an
    earlier spatiome wrote with pickle (``<key>.pkl``) are never opened.

    Examples
    --------
    >>> import tempfile
    >>> cache = StepCache(Path(tempfile.mkdtemp()))
    >>> key = cache.key("qc", {}, [], root="abc")
    >>> cache.load(key) is None
    True
    >>> cache.save(key, Delta(), ["notes"])
    >>> cache.load(key)[1]
    ['notes']
    """

    def __init__(self, folder: Path, enabled: bool = True) -> None:
        self.folder = Path(folder)
        self.enabled = enabled

    def key(self, step: str, parameters: dict[str, Any], dependencies: list[str], *,
            root: str) -> str:  # fmt: skip
        """Hash of the step, its parameters, its dependencies' keys and the input."""
        from .. import __version__

        record = {
            "step": step,
            "parameters": parameters,
            "dependencies": dependencies,
            "root": root,
            "spatiome": __version__,
        }
        text = json.dumps(record, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        """The file that holds the entry of ``key``."""
        return self.folder / f"{key}{ENTRY_SUFFIX}"

    def load(self, key: str) -> tuple[Delta, Any] | None:
        """The stored (delta, return value) of ``key``, or None.

        An entry that cannot be read (truncated, corrupted, or not of this format) is
        reported in a warning and counts as absent, so the step is recomputed.
        """
        path = self.path(key)
        if not self.enabled:
            return None
        if not path.is_file():
            if (self.folder / f"{key}{LEGACY_SUFFIX}").is_file():
                logger.info(
                    "cache entry %s%s was written with pickle by an earlier spatiome and is "
                    "not read: recomputing", key, LEGACY_SUFFIX,
                )  # fmt: skip
            return None
        try:
            stored = read_archive(path)
            return _delta_from(stored), stored["value"]
        except MemoryError:
            raise
        except Exception as err:  # any defect of the file: the step is recomputed
            logger.warning("cache entry %s is unreadable (%s): recomputing", path.name, err)
            return None

    def save(self, key: str, delta: Delta, value: Any) -> None:
        """Store a step's delta and return value, atomically.

        Raises
        ------
        ArchiveFormatError
            If the step stored in the AnnData, or returned, a value of a type the cache
            cannot hold (see :mod:`spatiome.workflow._archive`); the entry is not written.
        """
        if not self.enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_path(self.path(key)) as tmp:
                write_archive(tmp, {**_delta_values(delta), "value": value})
        except ArchiveFormatError as err:
            raise ArchiveFormatError(
                f"the step cache cannot store this step's results: {err}. "
                "Run without the cache (cache=False, --no-cache) to skip storing them."
            ) from err


def _delta_values(delta: Delta) -> dict[str, Any]:
    return {f"delta.{item.name}": getattr(delta, item.name) for item in fields(Delta)}


def _delta_from(stored: dict[str, Any]) -> Delta:
    names = [item.name for item in fields(Delta)]
    return Delta(**{name: stored[f"delta.{name}"] for name in names if f"delta.{name}" in stored})
