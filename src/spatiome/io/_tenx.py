"""Shared reading of 10x Genomics count matrices (HDF5 and Matrix Market folders).

Both layouts store genes x barcodes; everything here returns barcodes x features
CSR matrices so that callers never transpose again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from .._core.validate import SpatiomeInputError, check_counts, check_unique

GENE_EXPRESSION = "Gene Expression"
_CORRUPT = "file is truncated or not a 10x HDF5 matrix"


@dataclass
class TenxMatrix:
    """Barcodes x features counts with the feature table of a 10x matrix."""

    counts: sp.csr_matrix
    barcodes: pd.Index
    features: pd.DataFrame  # columns gene_ids, name, feature_types, genome
    path: Path
    format: str
    metadata: dict[str, Any] = field(default_factory=dict)


def find_first(folder: Path, names: tuple[str, ...], *, what: str) -> Path:
    """Return ``folder / name`` for the first name that exists, else one clear error."""
    for name in names:
        candidate = folder / name
        if candidate.exists():
            return candidate
    raise SpatiomeInputError(
        f"{folder}: no {what} found; looked for {', '.join(names)}: "
        "pass the folder that holds it or the file name explicitly"
    )


def read_tenx_matrix(folder: Path, h5_name: str, mtx_folder: str | None = None) -> TenxMatrix:
    """Read ``folder / h5_name`` or, when absent, the MTX folder named like it without ``.h5``."""
    h5_path = folder / h5_name
    if h5_path.is_file():
        return read_tenx_h5(h5_path)
    mtx_dir = folder / (mtx_folder or h5_name.removesuffix(".h5"))
    if mtx_dir.is_dir():
        return read_tenx_mtx(mtx_dir)
    raise SpatiomeInputError(
        f"{folder}: no count matrix found; looked for {h5_name} and the folder {mtx_dir.name}/ "
        "(matrix.mtx.gz, features.tsv.gz, barcodes.tsv.gz): pass the Space Ranger / Xenium "
        "output folder or set count_file"
    )


def _strings(dataset) -> np.ndarray:
    values = dataset[()]
    if values.dtype.kind in "SO":
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values])
    return values.astype(str)


def read_tenx_h5(path: Path) -> TenxMatrix:
    """Read a 10x HDF5 feature-barcode matrix (Cell Ranger >= 3 schema, or the v2 genome groups)."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            if "matrix" in handle:
                group = handle["matrix"]
                feats = group["features"]
                n_feat = int(group["shape"][0])
                features = pd.DataFrame(
                    {
                        "gene_ids": _strings(feats["id"]),
                        "name": _strings(feats["name"]),
                        "feature_types": _strings(feats["feature_type"])
                        if "feature_type" in feats
                        else np.full(n_feat, GENE_EXPRESSION),
                        "genome": _strings(feats["genome"])
                        if "genome" in feats
                        else np.full(n_feat, ""),
                    }
                )
            else:
                # Cell Ranger 2: one group per genome with genes / gene_names
                genome = next(iter(handle.keys()))
                group = handle[genome]
                n_feat = int(group["shape"][0])
                features = pd.DataFrame(
                    {
                        "gene_ids": _strings(group["genes"]),
                        "name": _strings(group["gene_names"]),
                        "feature_types": np.full(n_feat, GENE_EXPRESSION),
                        "genome": np.full(n_feat, genome),
                    }
                )
            shape = tuple(int(s) for s in group["shape"][()])
            barcodes = _strings(group["barcodes"])
            data = group["data"][()]
            indices = group["indices"][()]
            indptr = group["indptr"][()]
            metadata = {
                key: _attr(value)
                for key, value in handle.attrs.items()
                if key in ("chemistry_description", "software_version", "library_ids")
            }
    except (OSError, KeyError, StopIteration, TypeError) as err:
        raise SpatiomeInputError(f"{path}: {_CORRUPT} ({err})") from None
    n_feat, n_bc = shape
    if len(barcodes) != n_bc or len(features) != n_feat or len(indptr) != n_bc + 1:
        raise SpatiomeInputError(
            f"{path}: {_CORRUPT} (shape {shape} but {len(features)} features, "
            f"{len(barcodes)} barcodes, {len(indptr)} indptr entries)"
        )
    if data.dtype.kind not in "iuf":
        raise SpatiomeInputError(f"{path}: matrix/data must be numeric, got dtype {data.dtype}")
    try:
        # CSC over barcodes read as CSR over barcodes: the transpose comes for free
        counts = sp.csr_matrix((data, indices, indptr), shape=(n_bc, n_feat))
        counts.check_format(full_check=True)
    except ValueError as err:
        raise SpatiomeInputError(f"{path}: {_CORRUPT} ({err})") from None
    return TenxMatrix(counts, pd.Index(barcodes), features, path, "10x_h5", metadata)


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [v.decode() if isinstance(v, bytes) else str(v) for v in value.ravel()]
    return str(value)


def read_tenx_mtx(folder: Path) -> TenxMatrix:
    """Read a 10x Matrix Market folder: matrix.mtx, features.tsv or genes.tsv, barcodes.tsv."""
    matrix_path = find_first(folder, ("matrix.mtx.gz", "matrix.mtx"), what="Matrix Market file")
    feature_path = find_first(
        folder,
        ("features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv"),
        what="feature table",
    )
    barcode_path = find_first(folder, ("barcodes.tsv.gz", "barcodes.tsv"), what="barcode list")
    genes_x_barcodes = read_mtx(matrix_path)
    features = read_feature_table(feature_path)
    barcodes = read_name_list(barcode_path)
    n_feat, n_bc = genes_x_barcodes.shape
    if len(features) != n_feat or len(barcodes) != n_bc:
        raise SpatiomeInputError(
            f"{matrix_path}: matrix is {n_feat} features x {n_bc} barcodes but "
            f"{feature_path.name} lists {len(features)} and {barcode_path.name} {len(barcodes)}: "
            "the three files must come from the same run"
        )
    counts = genes_x_barcodes.T.tocsr()
    return TenxMatrix(counts, barcodes, features, matrix_path, "10x_mtx")


def read_mtx(path: Path) -> sp.coo_matrix:
    """Read a Matrix Market file (plain or gzip) as COO, with a clear error when malformed."""
    try:
        matrix = scipy.io.mmread(str(path))
    except (OSError, ValueError, EOFError, IndexError) as err:
        raise SpatiomeInputError(
            f"{path}: not a readable Matrix Market file ({err}): check that it is complete"
        ) from None
    if not sp.issparse(matrix):
        matrix = sp.coo_matrix(matrix)
    return sp.coo_matrix(matrix)


def read_name_list(path: Path) -> pd.Index:
    """First column of a header-less TSV (barcodes.tsv, genes.tsv) as a string Index."""
    try:
        table = pd.read_csv(path, sep="\t", header=None, dtype=str, usecols=[0])
    except pd.errors.EmptyDataError:
        raise SpatiomeInputError(f"{path}: the file is empty") from None
    return pd.Index(table.iloc[:, 0].to_numpy(dtype=str))


def read_feature_table(path: Path) -> pd.DataFrame:
    """features.tsv (id, name, type) or the older genes.tsv (id[, name]) as a feature table."""
    try:
        table = pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise SpatiomeInputError(f"{path}: the file is empty") from None
    n = len(table)
    ids = table.iloc[:, 0].to_numpy(dtype=str)
    names = table.iloc[:, 1].to_numpy(dtype=str) if table.shape[1] > 1 else ids
    types = table.iloc[:, 2].to_numpy(dtype=str) if table.shape[1] > 2 else None
    return pd.DataFrame(
        {
            "gene_ids": ids,
            "name": names,
            "feature_types": types if types is not None else np.full(n, GENE_EXPRESSION),
            "genome": np.full(n, ""),
        }
    )


def check_matrix(matrix: TenxMatrix) -> None:
    """Reject empty matrices, bad counts and duplicated barcodes, naming the file."""
    where = str(matrix.path)
    if matrix.counts.shape[0] == 0 or matrix.counts.shape[1] == 0:
        raise SpatiomeInputError(
            f"{where}: the count matrix is empty (shape {matrix.counts.shape})"
        )
    check_counts(matrix.counts, where=f"{where}: counts")
    check_unique(matrix.barcodes, what="barcodes", where=where)


def split_features(
    matrix: TenxMatrix, keep: str = GENE_EXPRESSION
) -> tuple[sp.csr_matrix, pd.DataFrame, pd.DataFrame | None]:
    """Split ``keep`` features from the rest.

    Returns the kept counts, their var table (gene symbols as index candidates, ids in
    ``gene_ids``) and a dense barcodes x other-features DataFrame (None when there are none).
    """
    is_kept = (matrix.features["feature_types"] == keep).to_numpy()
    if not is_kept.any():
        found = sorted(matrix.features["feature_types"].unique())[:5]
        raise SpatiomeInputError(
            f"{matrix.path}: no '{keep}' features (feature types found: {found})"
        )
    kept = matrix.counts[:, np.flatnonzero(is_kept)].tocsr()
    var = matrix.features.loc[is_kept].reset_index(drop=True)
    other = None
    if not is_kept.all():
        rest = matrix.features.loc[~is_kept]
        block = matrix.counts[:, np.flatnonzero(~is_kept)].toarray()
        names = pd.Index(rest["name"].to_numpy(dtype=str))
        if not names.is_unique:
            names = pd.Index(rest["gene_ids"].to_numpy(dtype=str))
        other = pd.DataFrame(
            _int_values(block), index=matrix.barcodes.copy(), columns=names.rename(None)
        )
    return kept, var, other


def _int_values(block: np.ndarray) -> np.ndarray:
    high = block.max(initial=0)
    return block.astype(np.int32 if high < np.iinfo(np.int32).max else np.int64)


def var_table(var: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """Gene symbols (var_names) and the var columns gene_ids / feature_types / genome."""
    names = var["name"].to_numpy(dtype=str)
    frame = var[["gene_ids", "feature_types", "genome"]].copy()
    if (frame["genome"] == "").all():
        frame = frame.drop(columns="genome")
    return names, frame


def read_json(path: Path) -> dict[str, Any]:
    """Read a small JSON file, re-raising parse errors with the file name."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SpatiomeInputError(f"{path}: not valid JSON ({err})") from None


def match_ids(
    ids: pd.Index,
    table_ids: pd.Index,
    *,
    matrix_where: str,
    table_where: str,
    allow_extra: bool,
    what: str = "barcodes",
) -> np.ndarray:
    """Positions of ``ids`` in ``table_ids``; missing ids (and extra ones unless allowed) raise."""
    check_unique(table_ids, what=what, where=table_where)
    indexer = table_ids.get_indexer(ids)
    missing = ids[indexer < 0]
    if len(missing):
        raise SpatiomeInputError(
            f"{table_where}: {len(missing)} of {len(ids)} {what} in {matrix_where} have no row "
            f"here (e.g. {missing[:3].tolist()}): use the position table from the same run"
        )
    if not allow_extra and len(table_ids) > len(ids):
        extra = table_ids[~table_ids.isin(ids)]
        raise SpatiomeInputError(
            f"{table_where}: {len(extra)} {what} are not in {matrix_where} "
            f"(e.g. {extra[:3].tolist()}): drop them or use the matching count matrix"
        )
    return indexer


def numeric_columns(table: pd.DataFrame, columns: list[str], *, where: str) -> np.ndarray:
    """Columns as a float64 array, naming the column and bad values when non-numeric or NaN."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise SpatiomeInputError(
            f"{where}: column(s) {missing} not found; available columns: {list(table.columns)[:20]}"
        )
    out = np.empty((len(table), len(columns)), dtype=np.float64)
    for j, column in enumerate(columns):
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            examples = table[column][bad].head(3).tolist()
            raise SpatiomeInputError(
                f"{where}: column {column!r} has {int(bad.sum())} non-numeric, NaN or infinite "
                f"values (e.g. {examples} at row {int(np.flatnonzero(bad)[0])}): "
                "fix or remove those rows"
            )
        out[:, j] = values
    return out


def source(reader: str, paths: list[Path], fmt: str, **extra: Any) -> dict[str, Any]:
    """The provenance record stored in ``uns['spatiome']['source']``."""
    record: dict[str, Any] = {
        "reader": reader,
        "paths": [str(Path(p).resolve()) for p in paths],
        "format": fmt,
    }
    record.update(extra)
    return record
