"""Registry of public spatial datasets: checksums, origins, local folders and loaders.

Every file is checked against its sha256 before it is read. Files are looked for in
``data_dir()/<name>/`` (an explicit folder, ``$SPATIOME_DATA``, or the user cache);
files with a direct download address are fetched there when missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from anndata import AnnData

from .._core.validate import SpatiomeInputError

__all__ = ["close_names", "data_dir", "has_reference", "info", "list_datasets", "load", "path"]

ENV_VAR = "SPATIOME_DATA"
_GITHUB_RAW = "https://raw.githubusercontent.com"


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset: its checksum, size, download address and provenance."""

    sha256: str
    size: int
    url: str | None = None  # None: derived from the upstream file(s), must be provided
    origin: str = ""
    upstream: tuple[str, ...] = ()


@dataclass(frozen=True)
class Dataset:
    """A registered dataset and how to read it."""

    name: str
    description: str
    shape: tuple[int, int]
    files: Mapping[str, DataFile]
    citation: str
    license: str
    loader: Callable[..., AnnData] = field(repr=False)
    labels: tuple[str, ...] = ()
    reference_shape: tuple[int, int] | None = None


def _raw(owner_repo: str, commit: str, file_path: str) -> str:
    return f"{_GITHUB_RAW}/{owner_repo}/{commit}/{file_path}"


# --------------------------------------------------------------------------- loaders


def _read_table(folder: Path, counts: str, coords: str, **kwargs: Any) -> AnnData:
    from ..io import read_table  # the io layer is imported only when a dataset is read

    return read_table(folder / counts, folder / coords, **kwargs)


def _load_mouse_ob(folder: Path) -> AnnData:
    adata = _read_table(folder, "counts.csv.gz", "coords.csv", spatial_unit="array")
    labels = pd.read_csv(folder / "labels_meringue.csv", dtype=str).set_index("spot")
    adata.obs["layer"] = pd.Categorical(labels["layer"].reindex(adata.obs_names))
    info_table = pd.read_csv(folder / "spatialde_sample_info.csv", dtype={"spot": str})
    totals = info_table.set_index("spot")["total_counts"].reindex(adata.obs_names)
    adata.obs["spatialde_total_counts"] = totals.to_numpy(dtype=float)
    return adata


def _load_breast_cancer(folder: Path) -> AnnData:
    return _read_table(folder, "counts.csv.gz", "coords.csv", spatial_unit="array")


def _load_seqfish(folder: Path) -> AnnData:
    adata = _read_table(folder, "counts.csv.gz", "coords.csv", spatial_unit="pixel")
    adata.obs["in_spark_crop"] = adata.obs["in_spark_crop"].astype(str).str.upper() == "TRUE"
    return adata


def _load_dlpfc(folder: Path) -> AnnData:
    adata = _read_table(
        folder,
        "matrix.mtx.gz",
        "coords.csv",
        x="pxl_col_in_fullres",
        y="pxl_row_in_fullres",
        genes=folder / "genes.tsv.gz",
        barcodes=folder / "barcodes.tsv.gz",
        spatial_unit="pixel",
    )
    adata.obs["sum_umi"] = adata.obs["sum_umi_all_genes"].to_numpy()
    labels = pd.read_csv(folder / "labels.csv", dtype=str).set_index("barcode")
    labels = labels.reindex(adata.obs_names)
    for column in labels.columns:
        adata.obs[column] = pd.Categorical(labels[column])
    return adata


def _load_rctd(folder: Path, *, reference: bool = False) -> AnnData:
    if not reference:
        return _read_table(folder, "spatial_counts.csv.gz", "coords.csv", spatial_unit="unknown")
    from ..io import read_reference_table

    return read_reference_table(
        folder / "reference_counts.csv.gz", folder / "reference_celltypes.csv"
    )


# --------------------------------------------------------------------------- registry

_SPACEXR = "dmcable/spacexr"
_SPACEXR_COMMIT = "744153c"
_ROUNDTRIP = "converted to this table; the bytes differ from the upstream file"
_BANKSY = "prabhakarlab/Banksy"
_DMGCN = "Jinsl-lab/DMGCN"
_BANKSY_151674 = "2276ad331791d3894b055abf3478857dc69f5133"  # 5,000-gene raw-count version
_BANKSY_151675 = "74d245a2e8b3d05f7c04982db9f77bd0078fb3d5"
_DMGCN_COMMIT = "5800638c206b472afc56ced4e4a7dc788d6f3448"
_DLPFC_CITATION = (
    "Maynard K.R., Collado-Torres L., Weber L.M. et al. (2021) "
    "Transcriptome-scale spatial gene expression in the human dorsolateral "
    "prefrontal cortex. Nature Neuroscience 24:425-436."
)
_DLPFC_LICENSE = (
    "spatialLIBD data (Artistic-2.0 package data, CC-BY publication); cite the original paper."
)

_DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset(
            name="mouse_ob_rep11",
            description="Mouse olfactory bulb, Spatial Transcriptomics (ST) replicate 11: "
            "262 spots on the ST array (100 um spacing), with MERINGUE's layer annotation "
            "(obs['layer'], 5 layers, NaN for 2 spots) and SpatialDE's total counts.",
            shape=(262, 16218),
            labels=("layer",),
            files={
                "counts.csv.gz": DataFile(
                    "a20ddea528178633ab1b731f998480fe51326ee8ee6c21a14ae40b11e2988632",
                    1560770,
                    origin="SpatialDE Analysis/MouseOB/data/Rep11_MOB_0.csv, taken from the "
                    f"Bioconductor port's data/Rep11_MOB_0.rda; {_ROUNDTRIP}",
                    upstream=(_raw("sales-lab/spatialDE", "HEAD", "data/Rep11_MOB_0.rda"),),
                ),
                "coords.csv": DataFile(
                    "c78c5bba41ef140e7ff778d34943e8ea886be35a3c560ad543e05d8caa41b920",
                    7177,
                    origin="x, y parsed from the spot ids '<x>x<y>' of the count table",
                    upstream=(_raw("sales-lab/spatialDE", "HEAD", "data/Rep11_MOB_0.rda"),),
                ),
                "labels_meringue.csv": DataFile(
                    "b1aedfcf6987ddb69ea6d80abcb47984790e2650fee7e3bff9ecb2c8bdedef4c",
                    16056,
                    origin="MERINGUE data/mOB.rda (mOB$annot), matched to the spots by x/y",
                    upstream=(_raw("JEFworks-Lab/MERINGUE", "HEAD", "data/mOB.rda"),),
                ),
                "spatialde_sample_info.csv": DataFile(
                    "91e547e96f32ae145ddb44ee17085ed797ee9079eb54c0374b192019164fecea",
                    8688,
                    origin="SpatialDE MOB_sample_info (data/MOB_sample_info.rda of the "
                    f"Bioconductor port); {_ROUNDTRIP}",
                    upstream=(_raw("sales-lab/spatialDE", "HEAD", "data/MOB_sample_info.rda"),),
                ),
            },
            citation="Stahl P.L. et al. (2016) Visualization and analysis of gene expression "
            "in tissue sections by spatial transcriptomics. Science 353(6294):78-82. "
            "Layer annotation: Miller B.F. et al. (2021) Genome Research 31:1843-1855.",
            license="Published research data redistributed in the SpatialDE (MIT) and "
            "MERINGUE (GPL-3) repositories; cite the original paper.",
            loader=_load_mouse_ob,
        ),
        Dataset(
            name="breast_cancer_layer2",
            description="Human breast cancer biopsy, Spatial Transcriptomics (ST) layer 2: "
            "251 spots x 14789 genes; no labels.",
            shape=(251, 14789),
            files={
                "counts.csv.gz": DataFile(
                    "27a4469ad72398738715c0921e4fb08d7e0703ac6e082a550d508ca7e2e213a9",
                    493798,
                    origin=f"SPARK data/Layer2_BC_Count.rds (object rawcount); {_ROUNDTRIP}",
                    upstream=(_raw("xzhoulab/SPARK", "a8b4bf2", "data/Layer2_BC_Count.rds"),),
                ),
                "coords.csv": DataFile(
                    "66a3bdca90b0099ed08e498cba1c191528db52f9cc2a0ebb4eca2f9b500288f3",
                    6843,
                    origin="x, y parsed from the spot ids '<x>x<y>' (ST array units)",
                    upstream=(_raw("xzhoulab/SPARK", "a8b4bf2", "data/Layer2_BC_Count.rds"),),
                ),
            },
            citation="Stahl P.L. et al. (2016) Science 353(6294):78-82.",
            license="Published research data redistributed in the SPARK repository (GPL-3); "
            "cite the original paper.",
            loader=_load_breast_cancer,
        ),
        Dataset(
            name="seqfish_field43",
            description="Mouse hippocampus seqFISH, field 43: 257 cells x 249 genes, "
            "centroid pixel coordinates; obs['in_spark_crop'] marks the 131 cells SPARK "
            "analyses. No labels.",
            shape=(257, 249),
            files={
                "counts.csv.gz": DataFile(
                    "0ceec9175b051c3ee9fdbedf6bbf6a25b12f340b227fb814dcaad208ab3667af",
                    53747,
                    origin="Shah et al. 2016 Table S6 (mmc6.xlsx, sheet 'Hippocampus Counts'), "
                    "cells of field 43",
                    upstream=(_raw("xzhoulab/SPARK-Analysis", "HEAD", "raw_data/mmc6.xlsx"),),
                ),
                "coords.csv": DataFile(
                    "de5f6f9d09601a67ca382cbb270e86a8d055b88cd765848a40b5730dd4652688",
                    5411,
                    origin="mmc6.xlsx sheet 'Centroids' (x, y, z) for field 43, plus SPARK's crop",
                    upstream=(_raw("xzhoulab/SPARK-Analysis", "HEAD", "raw_data/mmc6.xlsx"),),
                ),
            },
            citation="Shah S., Lubeck E., Zhou W., Cai L. (2016) In situ transcription "
            "profiling of single cells reveals spatial organization of cells in the mouse "
            "hippocampus. Neuron 92(2):342-357.",
            license="Supplementary data of the publication; cite the original paper.",
            loader=_load_seqfish,
        ),
        Dataset(
            name="dlpfc_151673",
            description="Human dorsolateral prefrontal cortex, 10x Visium sample 151673 "
            "(spatialLIBD): 3639 spots x 7319 genes (raw counts of a gene subset), "
            "manual layer labels (obs['layer_guess'], Layer1-6 and WM, 28 NA), Visium "
            "array_row/array_col and the spot's total UMI over all genes (obs['sum_umi']).",
            shape=(3639, 7319),
            labels=("layer_guess", "layer_guess_reordered", "layer_guess_reordered_short"),
            files={
                "matrix.mtx.gz": DataFile(
                    "8bb8446188bb6b338158dc1de4f2250d03a71a266005a0d248d5d1c28b300e3a",
                    7804799,
                    origin="Banksy data/dlpfc151673.rda (count / sum_umi * 5000), turned back "
                    "into integer counts with the spatialLIBD sum_umi",
                    upstream=(_raw("prabhakarlab/Banksy", "74d245a2", "data/dlpfc151673.rda"),),
                ),
                "genes.tsv.gz": DataFile(
                    "18ae34f504606f18c2a8b0a9d2f1a38f0c3bbf9bec683a5afa715ab58f8679c4",
                    26034,
                    origin="Ensembl ids of the rows of the Banksy matrix",
                    upstream=(_raw("prabhakarlab/Banksy", "74d245a2", "data/dlpfc151673.rda"),),
                ),
                "barcodes.tsv.gz": DataFile(
                    "d830aa5fcb099ca829b51f1c8f1437555075cfe1c77b73bb600454e4456ab702",
                    18921,
                    origin="spot barcodes of the columns of the Banksy matrix",
                    upstream=(_raw("prabhakarlab/Banksy", "74d245a2", "data/dlpfc151673.rda"),),
                ),
                "coords.csv": DataFile(
                    "572493a673fa1f8124c20ff92265b39a10b7c9d819fb0a79b63d94615c8668ab",
                    264663,
                    origin="spatialLIBD spot metadata and Space Ranger tissue positions",
                    upstream=(
                        _raw("Jinsl-lab/DMGCN", "HEAD", "data/DLPFC/151673/metadata.tsv"),
                        _raw(
                            "Jinsl-lab/DMGCN",
                            "HEAD",
                            "data/DLPFC/151673/spatial/tissue_positions_list.csv",
                        ),
                    ),
                ),
                "labels.csv": DataFile(
                    "be468ef47c830e2d48b5b145f24a8d2947bd448e7f925869aee0f4b4f99acee5",
                    126578,
                    origin="layer_guess columns of the spatialLIBD spot metadata",
                    upstream=(_raw("Jinsl-lab/DMGCN", "HEAD", "data/DLPFC/151673/metadata.tsv"),),
                ),
            },
            citation=_DLPFC_CITATION,
            license=_DLPFC_LICENSE,
            loader=_load_dlpfc,
        ),
        Dataset(
            name="dlpfc_151674",
            description="Human dorsolateral prefrontal cortex, 10x Visium sample 151674 "
            "(spatialLIBD, same donor as dlpfc_151673): 3673 spots x 5000 genes (raw counts "
            "of this section's own top 5,000 genes, not dlpfc_151673's gene list: 3,837 are "
            "shared with its 7,319, so intersect var_names across sections), manual layer "
            "labels (obs['layer_guess'], Layer1-6 and WM, 38 NA), Visium array_row/array_col "
            "and the spot's total UMI over all genes (obs['sum_umi']).",
            shape=(3673, 5000),
            labels=("layer_guess", "layer_guess_reordered", "layer_guess_reordered_short"),
            files={
                "matrix.mtx.gz": DataFile(
                    "7cfea5c3ecdf52e6cbad932af9bf709e68a915a642a43d71889b56155743d470",
                    8101294,
                    origin="Banksy data/dlpfc151674.rda (raw integer UMI counts of the "
                    "section's top 5,000 genes), written as integer counts unchanged",
                    upstream=(_raw(_BANKSY, _BANKSY_151674, "data/dlpfc151674.rda"),),
                ),
                "genes.tsv.gz": DataFile(
                    "1128d733bfda9a719e2129b3be49012ff639e784286ef69bdb77121ed3653175",
                    17493,
                    origin="Ensembl ids of the rows of the Banksy matrix",
                    upstream=(_raw(_BANKSY, _BANKSY_151674, "data/dlpfc151674.rda"),),
                ),
                "barcodes.tsv.gz": DataFile(
                    "1af8847b663f1da7f6d67e3027964c27c37153852d58690e7fc53ff2c0c187c3",
                    19287,
                    origin="spot barcodes of the columns of the Banksy matrix",
                    upstream=(_raw(_BANKSY, _BANKSY_151674, "data/dlpfc151674.rda"),),
                ),
                "coords.csv": DataFile(
                    "71b0d9079bb6bab9c64f91f99b54be820710823f7d5aab8c9865b7f27fe580c0",
                    267546,
                    origin="spatialLIBD spot metadata and Space Ranger tissue positions",
                    upstream=(
                        _raw(_DMGCN, _DMGCN_COMMIT, "data/DLPFC/151674/metadata.tsv"),
                        _raw(
                            _DMGCN,
                            _DMGCN_COMMIT,
                            "data/DLPFC/151674/spatial/tissue_positions_list.csv",
                        ),
                    ),
                ),
                "labels.csv": DataFile(
                    "7512e00f732a01479833172272d7b9fb4167e4e7c497b7fad9cdc0677df13804",
                    126766,
                    origin="layer_guess columns of the spatialLIBD spot metadata",
                    upstream=(_raw(_DMGCN, _DMGCN_COMMIT, "data/DLPFC/151674/metadata.tsv"),),
                ),
            },
            citation=_DLPFC_CITATION,
            license=_DLPFC_LICENSE,
            loader=_load_dlpfc,
        ),
        Dataset(
            name="dlpfc_151675",
            description="Human dorsolateral prefrontal cortex, 10x Visium sample 151675 "
            "(spatialLIBD, same donor as dlpfc_151673): 3592 spots x 7319 genes (raw counts "
            "of a gene subset, the genes of dlpfc_151673 in the same order), manual layer "
            "labels (obs['layer_guess'], Layer1-6 and WM, 26 NA), Visium array_row/array_col "
            "and the spot's total UMI over all genes (obs['sum_umi']).",
            shape=(3592, 7319),
            labels=("layer_guess", "layer_guess_reordered", "layer_guess_reordered_short"),
            files={
                "matrix.mtx.gz": DataFile(
                    "cb62a5ef34b313db208d51f3f2b5fc8cbe92d92903a1546222f6ac5fdcdf941d",
                    6310292,
                    origin="Banksy data/dlpfc151675.rda (count / sum_umi * 5000), turned back "
                    "into integer counts with the spatialLIBD sum_umi",
                    upstream=(_raw(_BANKSY, _BANKSY_151675, "data/dlpfc151675.rda"),),
                ),
                "genes.tsv.gz": DataFile(
                    "48b0f5be95fa48aafae7c83e2364fc38a2286ef07e18fa12494aec9882cea73d",
                    25408,
                    origin="Ensembl ids of the rows of the Banksy matrix",
                    upstream=(_raw(_BANKSY, _BANKSY_151675, "data/dlpfc151675.rda"),),
                ),
                "barcodes.tsv.gz": DataFile(
                    "0778addb803330e29944e1ab6c13da7649fce009b406d09f7b90ec62c9145da5",
                    18928,
                    origin="spot barcodes of the columns of the Banksy matrix",
                    upstream=(_raw(_BANKSY, _BANKSY_151675, "data/dlpfc151675.rda"),),
                ),
                "coords.csv": DataFile(
                    "bc81c37933eb66ae33670ef4607303fab0182dba43c66b08406041da719c65ab",
                    261404,
                    origin="spatialLIBD spot metadata and Space Ranger tissue positions",
                    upstream=(
                        _raw(_DMGCN, _DMGCN_COMMIT, "data/DLPFC/151675/metadata.tsv"),
                        _raw(
                            _DMGCN,
                            _DMGCN_COMMIT,
                            "data/DLPFC/151675/spatial/tissue_positions_list.csv",
                        ),
                    ),
                ),
                "labels.csv": DataFile(
                    "96039f6fb040c0412bc861c672082625db1b465b55e3125c2e5e264c3b2486c8",
                    123802,
                    origin="layer_guess columns of the spatialLIBD spot metadata",
                    upstream=(_raw(_DMGCN, _DMGCN_COMMIT, "data/DLPFC/151675/metadata.tsv"),),
                ),
            },
            citation=_DLPFC_CITATION,
            license=_DLPFC_LICENSE,
            loader=_load_dlpfc,
        ),
        Dataset(
            name="rctd_cerebellum_slideseq",
            description="Slide-seq mouse cerebellum beads (100 x 378) with an annotated "
            "single-nucleus reference (475 cells x 384 genes, 19 types, obs['cell_type']; "
            "load(..., reference=True)). The RCTD vignette data; no true proportions.",
            shape=(100, 378),
            reference_shape=(475, 384),
            labels=("cell_type",),
            files={
                "spatial_counts.csv.gz": DataFile(
                    "8817e5172b78d6fee658e059dc8dec163cfb69715aad9d0baf58b117d7c88ecf",
                    10662,
                    origin="spacexr inst/extdata/SpatialRNA/Vignette/MappedDGEForR.csv, "
                    "transposed to beads x genes",
                    upstream=(
                        _raw(
                            _SPACEXR,
                            _SPACEXR_COMMIT,
                            "inst/extdata/SpatialRNA/Vignette/MappedDGEForR.csv",
                        ),
                    ),
                ),
                "coords.csv": DataFile(
                    "68fe8642675f2466c4d0b9e64e88bbd37a3a12ab1775d6b06889de409ef3ac95",
                    4242,
                    origin="spacexr inst/extdata/SpatialRNA/Vignette/BeadLocationsForR.csv",
                    upstream=(
                        _raw(
                            _SPACEXR,
                            _SPACEXR_COMMIT,
                            "inst/extdata/SpatialRNA/Vignette/BeadLocationsForR.csv",
                        ),
                    ),
                ),
                "reference_counts.csv.gz": DataFile(
                    "27001e38e19e6d6a8f4e1a3325cadbd0a6209f6663f05e522471be6dc97105c9",
                    106733,
                    origin="spacexr inst/extdata/Reference/Vignette/dge.csv, cells x genes",
                    upstream=(
                        _raw(_SPACEXR, _SPACEXR_COMMIT, "inst/extdata/Reference/Vignette/dge.csv"),
                    ),
                ),
                "reference_celltypes.csv": DataFile(
                    "ca880bd9b6d8dc3e970f04342e026da65d06bcffa18d56e3e129e74d5279efed",
                    20632,
                    origin="spacexr inst/extdata/Reference/Vignette/meta_data.csv and "
                    "cell_type_dict.csv",
                    upstream=(
                        _raw(
                            _SPACEXR,
                            _SPACEXR_COMMIT,
                            "inst/extdata/Reference/Vignette/meta_data.csv",
                        ),
                    ),
                ),
            },
            citation="Cable D.M. et al. (2022) Robust decomposition of cell type mixtures in "
            "spatial transcriptomics. Nature Biotechnology 40:517-526.",
            license="Example data of the spacexr package (GPL-3).",
            loader=_load_rctd,
        ),
        Dataset(
            name="rctd_merfish_hypothalamus",
            description="MERFISH mouse hypothalamus cells (750 x 134) with an annotated "
            "scRNA-seq reference (1308 cells x 134 genes, 14 types, obs['cell_type']; "
            "load(..., reference=True)). The spacexr CSIDE vignette data; no true types.",
            shape=(750, 134),
            reference_shape=(1308, 134),
            labels=("cell_type",),
            files={
                "spatial_counts.csv.gz": DataFile(
                    "33291c92b27d9dd4cbec1f362584dadbf665f4e3c3291d810517f53a53c160c6",
                    65204,
                    origin="spacexr inst/extdata/SpatialRNA/MerfishVignette/counts.csv, "
                    "transposed to cells x genes",
                    upstream=(
                        _raw(
                            _SPACEXR,
                            _SPACEXR_COMMIT,
                            "inst/extdata/SpatialRNA/MerfishVignette/counts.csv",
                        ),
                    ),
                ),
                "coords.csv": DataFile(
                    "33a6471669dc80bb9507c4651677a8e8cbe1d5e42ea2e1fb7e7144648edbc74a",
                    49363,
                    origin="spacexr inst/extdata/SpatialRNA/MerfishVignette/coords.csv and "
                    "nUMI.csv",
                    upstream=(
                        _raw(
                            _SPACEXR,
                            _SPACEXR_COMMIT,
                            "inst/extdata/SpatialRNA/MerfishVignette/coords.csv",
                        ),
                    ),
                ),
                "reference_counts.csv.gz": DataFile(
                    "0500a94a339baa1118beb102dfd7e973975d0ddd0bac51625f9c7479ba75711a",
                    36211,
                    origin="spacexr inst/extdata/Reference/Merfish_Ref/counts.csv, cells x genes",
                    upstream=(
                        _raw(
                            _SPACEXR,
                            _SPACEXR_COMMIT,
                            "inst/extdata/Reference/Merfish_Ref/counts.csv",
                        ),
                    ),
                ),
                "reference_celltypes.csv": DataFile(
                    "bf1111e81a24ddf0b44b1b4e1118affccfb08415b15e627abfda49580b700eb6",
                    54799,
                    origin="spacexr inst/extdata/Reference/Merfish_Ref/cell_types.csv and nUMI.csv",
                    upstream=(
                        _raw(
                            _SPACEXR,
                            _SPACEXR_COMMIT,
                            "inst/extdata/Reference/Merfish_Ref/cell_types.csv",
                        ),
                    ),
                ),
            },
            citation="Cable D.M. et al. (2022) Cell type-specific inference of differential "
            "expression in spatial transcriptomics. Nature Methods 19:1076-1087. "
            "Data presumably from Moffitt J.R. et al. (2018) Science 362:eaau5324.",
            license="Example data of the spacexr package (GPL-3).",
            loader=_load_rctd,
        ),
    ]
}

# (path, size, mtime_ns) -> sha256, so repeated loads do not re-hash unchanged files
_VERIFIED: dict[tuple[str, int, int], str] = {}


def data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Folder holding the datasets, one subfolder per dataset name.

    Parameters
    ----------
    data_dir
        Explicit folder; when None, ``$SPATIOME_DATA`` if set, else the user cache
        (``$XDG_CACHE_HOME/spatiome`` or ``~/.cache/spatiome``).

    Returns
    -------
    Path
        The folder (not created).

    Examples
    --------
    >>> import os
    >>> str(data_dir("/data/spatial"))
    '/data/spatial'
    >>> os.environ["SPATIOME_DATA"] = "/srv/spatiome"
    >>> str(data_dir())
    '/srv/spatiome'
    >>> del os.environ["SPATIOME_DATA"]
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "spatiome"


def list_datasets() -> pd.DataFrame:
    """Table of the registered datasets.

    Returns
    -------
    pandas.DataFrame
        One row per dataset (index ``name``) with ``n_obs``, ``n_vars``, ``labels``,
        ``n_files``, ``size_mb``, ``downloadable`` (every file has a direct address)
        and ``description``.

    Examples
    --------
    >>> table = list_datasets()
    >>> [int(v) for v in table.loc["dlpfc_151673", ["n_obs", "n_vars"]]]
    [3639, 7319]
    >>> "mouse_ob_rep11" in table.index
    True
    """
    rows = [
        {
            "name": d.name,
            "n_obs": d.shape[0],
            "n_vars": d.shape[1],
            "labels": ", ".join(d.labels),
            "n_files": len(d.files),
            "size_mb": round(sum(f.size for f in d.files.values()) / 1e6, 2),
            "downloadable": all(f.url is not None for f in d.files.values()),
            "description": d.description,
        }
        for d in _DATASETS.values()
    ]
    return pd.DataFrame(rows).set_index("name")


def info(name: str) -> dict[str, Any]:
    """Everything the registry knows about one dataset.

    Parameters
    ----------
    name
        A name from :func:`list_datasets`.

    Returns
    -------
    dict
        ``name``, ``description``, ``shape``, ``reference_shape``, ``labels``,
        ``citation``, ``license`` and ``files``: relative file name -> dict with
        ``sha256``, ``size``, ``url`` (None when the file was converted from the
        upstream source and has to be provided locally), ``origin`` and ``upstream``.

    Examples
    --------
    >>> entry = info("mouse_ob_rep11")
    >>> entry["shape"], sorted(entry["files"])[:2]
    ((262, 16218), ['coords.csv', 'counts.csv.gz'])
    >>> len(entry["files"]["counts.csv.gz"]["sha256"])
    64
    """
    dataset = _get(name)
    return {
        "name": dataset.name,
        "description": dataset.description,
        "shape": dataset.shape,
        "reference_shape": dataset.reference_shape,
        "labels": list(dataset.labels),
        "citation": dataset.citation,
        "license": dataset.license,
        "files": {
            file_name: {
                "sha256": entry.sha256,
                "size": entry.size,
                "url": entry.url,
                "origin": entry.origin,
                "upstream": list(entry.upstream),
            }
            for file_name, entry in dataset.files.items()
        },
    }


def path(
    name: str, *, data_dir: str | os.PathLike[str] | None = None, download: bool = True
) -> Path:
    """Folder holding the verified files of dataset ``name``.

    Files are looked for in ``data_dir(data_dir)/<name>/`` and checked against their
    sha256 (cached by size and modification time, so repeated calls are quick).
    Missing files with a download address are fetched there when ``download`` is True.

    Parameters
    ----------
    name
        A name from :func:`list_datasets`.
    data_dir
        Folder holding ``<name>/`` (see :func:`data_dir` for the default).
    download
        Fetch missing files that have a download address.

    Returns
    -------
    Path
        ``<data_dir>/<name>``, with every file present and verified.

    Raises
    ------
    SpatiomeInputError
        If files are missing (naming them and the folder to put them in) or a file's
        checksum does not match.

    Examples
    --------
    >>> import tempfile
    >>> empty = tempfile.mkdtemp()
    >>> try:
    ...     path("seqfish_field43", data_dir=empty, download=False)
    ... except ValueError as err:
    ...     print(str(err).split(":")[0])
    dataset 'seqfish_field43'
    >>> folder = path("mouse_ob_rep11", data_dir="/work/shared/data")  # doctest: +SKIP
    >>> sorted(p.name for p in folder.iterdir())[:2]  # doctest: +SKIP
    ['README.md', 'coords.csv']
    """
    dataset = _get(name)
    root = _resolve_dir(data_dir)
    folder = root / dataset.name
    missing = [f for f in dataset.files if not (folder / f).is_file()]
    fetchable = [f for f in missing if dataset.files[f].url is not None]
    if download:
        for file_name in fetchable:
            _download(dataset.files[file_name], folder / file_name)
        missing = [f for f in missing if f not in fetchable]
    if missing:
        raise SpatiomeInputError(_missing_message(dataset, folder, missing, download))
    for file_name, entry in dataset.files.items():
        _verify(folder / file_name, entry)
    return folder


def load(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    **kwargs: Any,
) -> AnnData:
    """Read a registered dataset as a spatiome AnnData, with its labels in ``obs``.

    Parameters
    ----------
    name
        A name from :func:`list_datasets`.
    data_dir, download
        As in :func:`path`.
    **kwargs
        Passed to the dataset's loader: ``reference=True`` returns the single-cell
        reference (cell types in ``obs['cell_type']``, no coordinates) of the
        ``rctd_*`` datasets instead of their spatial data.

    Returns
    -------
    AnnData
        Raw counts in ``X`` and ``layers['counts']``, coordinates in ``obsm['spatial']``
        and labels in ``obs`` (``layer`` for mouse_ob_rep11; ``layer_guess``,
        ``array_row``/``array_col`` and ``sum_umi`` for the dlpfc_* sections).
        ``uns['spatiome']['dataset']`` records the name, files and their sha256.

    Examples
    --------
    >>> import os, tempfile
    >>> os.environ["SPATIOME_DATA"] = tempfile.mkdtemp()
    >>> try:
    ...     load("dlpfc_151673", download=False)
    ... except ValueError as err:
    ...     print("matrix.mtx.gz" in str(err), os.environ["SPATIOME_DATA"] in str(err))
    True True
    >>> del os.environ["SPATIOME_DATA"]
    >>> adata = load("mouse_ob_rep11", data_dir="/work/shared/data")  # doctest: +SKIP
    >>> adata.shape, adata.obs["layer"].isna().sum()  # doctest: +SKIP
    ((262, 16218), 2)
    """
    dataset = _get(name)
    folder = path(name, data_dir=data_dir, download=download)
    try:
        adata = dataset.loader(folder, **kwargs)
    except TypeError as err:
        if "unexpected keyword" not in str(err):
            raise
        raise SpatiomeInputError(
            f"load({name!r}) got options it does not take ({sorted(kwargs)}); "
            "only the rctd_* datasets take reference=True"
        ) from None
    adata.uns.setdefault("spatiome", {})["dataset"] = {
        "name": dataset.name,
        "folder": str(folder),
        "files": {f: entry.sha256 for f, entry in dataset.files.items()},
    }
    return adata


def close_names(name: str, n: int = 3) -> list[str]:
    """Registered dataset names that look like ``name`` (for "did you mean" messages).

    Parameters
    ----------
    name
        Any text, e.g. a mistyped dataset name.
    n
        Most names returned.

    Returns
    -------
    list of str
        The closest registered names first; empty when none is close.

    Examples
    --------
    >>> close_names("mouse_ob")
    ['mouse_ob_rep11']
    >>> close_names("rctd_merfish")
    ['rctd_merfish_hypothalamus']
    """
    import difflib

    text = str(name).lower()
    close = difflib.get_close_matches(text, list(_DATASETS), n=n, cutoff=0.5)
    starts = [d for d in _DATASETS if text and (d.startswith(text) or text.startswith(d))]
    return list(dict.fromkeys([*starts, *close]))[:n]


def has_reference(name: str) -> bool:
    """Whether a registered dataset ships a labelled single-cell reference.

    Such datasets return it from ``load(name, reference=True)``.

    Examples
    --------
    >>> has_reference("rctd_merfish_hypothalamus"), has_reference("mouse_ob_rep11")
    (True, False)
    """
    return _get(name).reference_shape is not None


def _get(name: str) -> Dataset:
    if name not in _DATASETS:
        close = close_names(name)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise SpatiomeInputError(
            f"unknown dataset {name!r}; {hint}registered datasets: {sorted(_DATASETS)} "
            "(spatiome datasets list)"
        )
    return _DATASETS[name]


def _resolve_dir(folder: str | os.PathLike[str] | None) -> Path:
    # path() and load() take an argument named data_dir, which hides the function there
    return data_dir(folder)


def _missing_message(dataset: Dataset, folder: Path, missing: list[str], download: bool) -> str:
    lines = [
        f"dataset {dataset.name!r}: {len(missing)} file(s) missing from {folder}: "
        f"{', '.join(missing)}."
    ]
    derived = [f for f in missing if dataset.files[f].url is None]
    if derived:
        lines.append(
            f" {', '.join(derived)} cannot be downloaded (converted from the upstream "
            "source, see spatiome.datasets.info(name)['files']): copy them"
        )
    else:
        lines.append(" Run with download=True, or copy them")
    lines.append(
        f" into {folder}/ , or set ${ENV_VAR} (or pass data_dir=) to a folder that holds "
        f"{dataset.name}/ with these files."
    )
    if not download and not derived:
        lines.append(" Downloading was switched off (download=False).")
    return "".join(lines)


def _verify(file: Path, entry: DataFile) -> None:
    """Check ``file`` against its sha256; the result is remembered per size and mtime."""
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    digest = _VERIFIED.get(key)
    if digest is None:
        digest = _sha256(file)
        _VERIFIED[key] = digest
    if digest != entry.sha256:
        raise SpatiomeInputError(
            f"{file}: sha256 {digest} does not match the registered {entry.sha256} "
            f"({stat.st_size} bytes, expected {entry.size}): the file is damaged or a "
            "different version; replace it with the original file"
        )


def _sha256(file: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(entry: DataFile, target: Path) -> None:
    """Fetch ``entry.url`` to a temporary file beside ``target``, verify, then rename."""
    from tqdm.auto import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".part", dir=target.parent
    )
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(entry.url) as response:
            total = int(response.headers.get("Content-Length") or entry.size or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, leave=False) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
        if digest.hexdigest() != entry.sha256:
            raise SpatiomeInputError(
                f"{entry.url}: downloaded file has sha256 {digest.hexdigest()}, expected "
                f"{entry.sha256}; the server copy changed or the transfer was corrupted. "
                f"Nothing was written to {target}"
            )
        os.replace(tmp, target)
    except OSError as err:
        raise SpatiomeInputError(
            f"could not download {entry.url} to {target} ({err}); check the network or "
            f"copy the file there by hand, or set ${ENV_VAR}"
        ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
