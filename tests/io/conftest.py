"""Builders of small vendor-format fixtures, following the documented 10x layouts."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

GE = "Gene Expression"


@dataclass
class Features:
    """A 10x feature table (one entry per matrix row)."""

    ids: list[str]
    names: list[str]
    types: list[str]
    genome: str = "GRCh38"

    def __len__(self) -> int:
        return len(self.ids)


def gene_features(n: int, extra: dict[str, str] | None = None) -> Features:
    """``n`` gene-expression features plus ``extra`` {name: feature_type}."""
    ids = [f"ENSG{i:05d}" for i in range(n)]
    names = [f"GENE{i}" for i in range(n)]
    types = [GE] * n
    for name, kind in (extra or {}).items():
        ids.append(f"id_{name}")
        names.append(name)
        types.append(kind)
    return Features(ids, names, types)


def write_10x_h5(path: Path, genes_x_barcodes, barcodes, features: Features, **attrs) -> Path:
    """Write the Cell Ranger >= 3 HDF5 schema: matrix/ in CSC over barcodes."""
    csc = sp.csc_matrix(genes_x_barcodes)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        for key, value in attrs.items():
            handle.attrs[key] = value
        group = handle.create_group("matrix")
        group.create_dataset("data", data=csc.data.astype(np.int32))
        group.create_dataset("indices", data=csc.indices.astype(np.int64))
        group.create_dataset("indptr", data=csc.indptr.astype(np.int64))
        group.create_dataset("shape", data=np.array(csc.shape, dtype=np.int32))
        group.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        feats = group.create_group("features")
        feats.create_dataset("id", data=np.array(features.ids, dtype="S"))
        feats.create_dataset("name", data=np.array(features.names, dtype="S"))
        feats.create_dataset("feature_type", data=np.array(features.types, dtype="S"))
        feats.create_dataset("genome", data=np.array([features.genome] * len(features), dtype="S"))
    return path


def _write_lines(path: Path, lines: list[str]) -> None:
    text = "".join(line + "\n" for line in lines)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)


def write_10x_mtx(
    folder: Path, genes_x_barcodes, barcodes, features: Features, *, gz=True, legacy=False
) -> Path:
    """Write matrix.mtx, features.tsv (id, name, type) or legacy genes.tsv (id, name)."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    buffer = folder / "matrix.mtx"
    scipy.io.mmwrite(buffer, sp.coo_matrix(genes_x_barcodes), field="integer")
    if gz:
        with open(buffer, "rb") as src, gzip.open(folder / "matrix.mtx.gz", "wb") as dst:
            dst.write(src.read())
        buffer.unlink()
    if legacy:
        lines = [f"{i}\t{n}" for i, n in zip(features.ids, features.names, strict=True)]
        _write_lines(folder / f"genes.tsv{suffix}", lines)
    else:
        lines = [
            f"{i}\t{n}\t{t}"
            for i, n, t in zip(features.ids, features.names, features.types, strict=True)
        ]
        _write_lines(folder / f"features.tsv{suffix}", lines)
    _write_lines(folder / f"barcodes.tsv{suffix}", list(barcodes))
    return folder


def random_counts(n_genes: int, n_spots: int, seed: int = 0) -> sp.csr_matrix:
    """Genes x spots sparse integer counts with every spot and gene non-empty."""
    rng = np.random.default_rng(seed)
    dense = rng.poisson(0.7, size=(n_genes, n_spots))
    dense[0, :] += 1
    dense[:, 0] += 1
    return sp.csr_matrix(dense)


@dataclass
class VisiumRun:
    """A Space Ranger outs/ fixture and the truth it was written from."""

    outs: Path
    counts: np.ndarray  # spots x genes (gene-expression only)
    barcodes: list[str]
    positions: pd.DataFrame  # all positions written, including off-tissue spots
    features: Features
    protein: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


def positions_for(barcodes: list[str], n_extra: int, seed: int = 0) -> pd.DataFrame:
    """Space Ranger positions for ``barcodes`` plus ``n_extra`` off-tissue spots, shuffled."""
    rng = np.random.default_rng(seed)
    all_barcodes = list(barcodes) + [f"OFF{i:04d}-1" for i in range(n_extra)]
    n = len(all_barcodes)
    table = pd.DataFrame(
        {
            "barcode": all_barcodes,
            "in_tissue": [1] * len(barcodes) + [0] * n_extra,
            "array_row": rng.integers(0, 78, n),
            "array_col": rng.integers(0, 128, n),
            "pxl_row_in_fullres": rng.integers(0, 20000, n),
            "pxl_col_in_fullres": rng.integers(0, 20000, n),
        }
    )
    return table.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def write_positions(spatial: Path, table: pd.DataFrame, variant: str) -> Path:
    """``csv``: tissue_positions.csv with header; ``list``: the header-less older file."""
    spatial.mkdir(parents=True, exist_ok=True)
    if variant == "csv":
        path = spatial / "tissue_positions.csv"
        table.to_csv(path, index=False)
    elif variant == "list":
        path = spatial / "tissue_positions_list.csv"
        table.to_csv(path, index=False, header=False)
    else:
        path = spatial / "tissue_positions.parquet"
        table.to_parquet(path, index=False)
    return path


def write_images(spatial: Path, scalefactors: dict) -> dict[str, np.ndarray]:
    """Small RGB PNGs written with matplotlib, plus scalefactors_json.json."""
    import matplotlib.image

    rng = np.random.default_rng(1)
    images = {}
    for key, size in (("hires", 12), ("lowres", 6)):
        image = rng.random((size, size + 2, 3)).astype(np.float32)
        matplotlib.image.imsave(spatial / f"tissue_{key}_image.png", image)
        images[key] = image
    (spatial / "scalefactors_json.json").write_text(json.dumps(scalefactors))
    return images


SCALEFACTORS = {
    "spot_diameter_fullres": 89.4,
    "tissue_hires_scalef": 0.15,
    "fiducial_diameter_fullres": 144.5,
    "tissue_lowres_scalef": 0.045,
}


def make_visium(
    root: Path,
    *,
    matrix: str = "h5",
    positions: str = "csv",
    n_spots: int = 30,
    n_genes: int = 12,
    n_extra: int = 5,
    protein: int = 0,
    images: bool = True,
    seed: int = 0,
) -> VisiumRun:
    """Write a Space Ranger outs/ folder with an h5 or mtx matrix and positions."""
    outs = root / "sample1" / "outs"
    genes = random_counts(n_genes, n_spots, seed)
    barcodes = [f"AC{i:04d}-1" for i in range(n_spots)]
    features = gene_features(n_genes, {f"CD{i}": "Antibody Capture" for i in range(protein)})
    rng = np.random.default_rng(seed + 1)
    adt = rng.poisson(5, size=(protein, n_spots))
    full = sp.vstack([genes, sp.csr_matrix(adt)]) if protein else genes
    if matrix == "h5":
        write_10x_h5(outs / "filtered_feature_bc_matrix.h5", full, barcodes, features)
    else:
        write_10x_mtx(
            outs / "filtered_feature_bc_matrix", full, barcodes, features, legacy=matrix == "legacy"
        )
    table = positions_for(barcodes, n_extra, seed)
    write_positions(outs / "spatial", table, positions)
    run = VisiumRun(outs, genes.T.toarray(), barcodes, table, features, adt.T if protein else None)
    if images:
        run.extra["images"] = write_images(outs / "spatial", SCALEFACTORS)
    return run


class Builders:
    """Namespace handed to tests through the ``build`` fixture."""

    features = staticmethod(gene_features)
    h5 = staticmethod(write_10x_h5)
    mtx = staticmethod(write_10x_mtx)
    counts = staticmethod(random_counts)
    positions_for = staticmethod(positions_for)
    positions = staticmethod(write_positions)
    images = staticmethod(write_images)
    visium = staticmethod(make_visium)
    scalefactors = SCALEFACTORS


@pytest.fixture(scope="session")
def build() -> type[Builders]:
    """The fixture builders (session-scoped so that hypothesis tests may use them)."""
    return Builders
