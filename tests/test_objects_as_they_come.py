"""Objects as scanpy and spatialdata-io make them: raw counts in X, no counts layer.

Every function that reads raw counts is called with its defaults on such an object and
must give the result it gives on the same object with ``layers["counts"]`` set.
``pp.reduce`` is left out: it reads the normalized X that ``pp.normalize`` writes (checked
here), and its first call costs half a minute of numba compilation in scanpy's neighbours. The
scanpy object comes from ``scanpy.read_visium`` on a small Space Ranger folder; the
spatialdata-io one from ``spatialdata_io.experimental.to_legacy_anndata`` on a small
SpatialData (without images: rasterizing them to the converter's 2000-pixel "hires" takes
over ten seconds, so its ``uns["spatial"]`` images are added in the converter's layout).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import spatiome as sm
from spatiome import datasets, deconv, domains, integrate, modules, pp, svg
from spatiome._core.validate import SpatiomeInputError, resolve_counts_layer

KINDS = ("scanpy_visium", "spatialdata_legacy")
SCALEFACTORS = {
    "tissue_hires_scalef": 0.15,
    "tissue_lowres_scalef": 0.045,
    "spot_diameter_fullres": 89.4,
    "fiducial_diameter_fullres": 144.5,
}


@pytest.fixture(scope="module")
def tissue() -> ad.AnnData:
    return sm.datasets.simulate_tissue(n_spots=400, n_genes=60, n_cell_types=3, random_state=0)


@pytest.fixture(scope="module")
def scanpy_visium(tissue, tmp_path_factory) -> ad.AnnData:
    sc = pytest.importorskip("scanpy")
    outs = _write_space_ranger(tissue, tmp_path_factory.mktemp("visium") / "outs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "use squidpy.read.visium instead"
        adata = sc.read_visium(outs)
    adata.var_names_make_unique()
    return adata


@pytest.fixture(scope="module")
def spatialdata_legacy(tissue) -> ad.AnnData:
    pytest.importorskip("spatialdata")
    pytest.importorskip("spatialdata_io")
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata_io.experimental import to_legacy_anndata

    n_spots = tissue.n_obs
    table = ad.AnnData(
        sp.csr_matrix(tissue.layers["counts"], dtype=np.float32),
        obs=pd.DataFrame(
            {"region": pd.Categorical(["spots"] * n_spots), "spot_id": np.arange(n_spots)},
            index=[str(i) for i in range(n_spots)],
        ),
        var=pd.DataFrame(index=tissue.var_names.copy()),
    )
    sdata = SpatialData(
        shapes={
            "spots": ShapesModel.parse(
                np.asarray(tissue.obsm["spatial"], dtype=np.float64),
                geometry=0,
                radius=np.full(n_spots, 45.0),
                index=np.arange(n_spots),
            )
        },
        tables={
            "table": TableModel.parse(
                table, region="spots", region_key="region", instance_key="spot_id"
            )
        },
    )
    adata = to_legacy_anndata(sdata, coordinate_system="global", table_name="table")
    rng = np.random.default_rng(0)
    adata.uns["spatial"] = {
        "sample_image": {
            "images": {
                "hires": rng.random((20, 20, 3)).astype(np.float32),
                "lowres": rng.random((6, 6, 3)).astype(np.float32),
            },
            "scalefactors": {
                "tissue_hires_scalef": 1.0,
                "tissue_lowres_scalef": 0.3,
                "spot_diameter_fullres": 90.0,
            },
        }
    }
    return adata


@pytest.fixture(scope="module", params=KINDS)
def as_they_come(request) -> ad.AnnData:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def reference() -> ad.AnnData:
    """Single cells as scanpy reads them: raw counts in X, the type in obs."""
    cells = sm.datasets.simulate_tissue(
        n_spots=300, n_genes=60, n_cell_types=3, single_cells=True, layout="random",
        random_state=1,
    )  # fmt: skip
    adata = ad.AnnData(
        sp.csr_matrix(cells.layers["counts"], dtype=np.float32),
        obs=cells.obs[["cell_type"]].copy(),
    )
    adata.var_names = cells.var_names.copy()
    return adata


def _write_space_ranger(tissue: ad.AnnData, outs: Path) -> Path:
    """A Space Ranger outs/ folder: filtered_feature_bc_matrix.h5 and spatial/."""
    import h5py
    import matplotlib.image

    spatial = outs / "spatial"
    spatial.mkdir(parents=True)
    barcodes = [f"AAAC{i:04d}-1" for i in range(tissue.n_obs)]
    genes_x_spots = sp.csc_matrix(sp.csr_matrix(tissue.layers["counts"]).T)
    with h5py.File(outs / "filtered_feature_bc_matrix.h5", "w") as handle:
        handle.attrs["library_ids"] = np.array([b"sample1"])
        matrix = handle.create_group("matrix")
        matrix.create_dataset("data", data=genes_x_spots.data.astype(np.int32))
        matrix.create_dataset("indices", data=genes_x_spots.indices.astype(np.int64))
        matrix.create_dataset("indptr", data=genes_x_spots.indptr.astype(np.int64))
        matrix.create_dataset("shape", data=np.array(genes_x_spots.shape, dtype=np.int32))
        matrix.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        features = matrix.create_group("features")
        n_genes = tissue.n_vars
        features.create_dataset("id", data=np.array([f"ENSG{i:05d}" for i in range(n_genes)], "S"))
        features.create_dataset("name", data=np.array(tissue.var_names, dtype="S"))
        features.create_dataset("feature_type", data=np.array(["Gene Expression"] * n_genes, "S"))
        features.create_dataset("genome", data=np.array(["GRCh38"] * n_genes, dtype="S"))
    xy = np.rint(tissue.obsm["spatial"]).astype(int)
    positions = pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": 1,
            "array_row": tissue.obs["array_row"].to_numpy(),
            "array_col": tissue.obs["array_col"].to_numpy(),
            "pxl_row_in_fullres": xy[:, 1],
            "pxl_col_in_fullres": xy[:, 0],
        }
    )
    positions.to_csv(spatial / "tissue_positions.csv", index=False)
    rng = np.random.default_rng(0)
    for key, size in (("hires", 12), ("lowres", 6)):
        picture = rng.random((size, size + 2, 3)).astype(np.float32)
        matplotlib.image.imsave(spatial / f"tissue_{key}_image.png", picture)
    (spatial / "scalefactors_json.json").write_text(json.dumps(SCALEFACTORS))
    return outs


def _with_counts_layer(adata: ad.AnnData) -> ad.AnnData:
    copy = adata.copy()
    copy.layers["counts"] = copy.X.copy()
    return copy


def _normalized(adata: ad.AnnData) -> ad.AnnData:
    pp.normalize(adata)
    return adata


def _clustered(adata: ad.AnnData) -> ad.AnnData:
    domains.cluster(_normalized(adata), 3)
    return adata


def _assert_same(first, second) -> None:
    if isinstance(first, tuple):
        for one, other in zip(first, second, strict=True):
            _assert_same(one, other)
    elif isinstance(first, pd.DataFrame | pd.Series):
        if isinstance(first, pd.DataFrame):
            pd.testing.assert_frame_equal(first, second, check_exact=False, rtol=1e-9)
        else:
            pd.testing.assert_series_equal(first, second, check_exact=False, rtol=1e-9)
    elif sp.issparse(first) or isinstance(first, np.ndarray):
        one = first.toarray() if sp.issparse(first) else first
        other = second.toarray() if sp.issparse(second) else second
        np.testing.assert_allclose(one, other, rtol=1e-9, atol=1e-12)
    else:
        assert first == second


def _bison(adata, **kwargs):
    # A short chain: the layer is what is checked, not the sampler.
    domains.bison(adata, 3, 2, n_iterations=200, **kwargs)


def _qc(adata):
    pp.qc_metrics(adata)
    return adata.obs[["total_counts", "n_genes_by_counts", "pct_counts_mt"]], adata.var


def _normalize(adata):
    original = adata.X.copy()
    pp.normalize(adata)
    _assert_same(adata.layers["counts"], original)  # kept when read from X
    return adata.X, adata.uns["spatiome"]["normalize"]["target_sum"]


def _regressed(adata):
    pp.stabilize(adata)
    pp.regress_out(adata)
    return adata.layers["stabilized"], adata.layers["regressed"]


def _imputed(adata):
    pp.impute(_normalized(adata))
    return adata.layers["imputed"]


def _concatenated(adata):
    merged = integrate.concat_samples({"one": adata, "two": adata.copy()})
    return merged.layers["counts"]


#: name -> what is computed with default arguments (after normalize where it is needed).
CASES: dict[str, Callable] = {
    "pp.qc_metrics": _qc,
    "pp.normalize": _normalize,
    "pp.spanorm": lambda a: (pp.spanorm(a), a.layers["spanorm"])[1],
    "pp.stabilize+regress_out": _regressed,
    "pp.impute": _imputed,
    "svg.moran": svg.moran,
    "svg.geary": svg.geary,
    "svg.sparkx": svg.sparkx,
    "svg.spatialde": svg.spatialde,
    "svg.trendseek": lambda a: svg.trendseek(a, genes=list(a.var_names[:2])),
    "domains.cluster": lambda a: _clustered(a).obs["spatial_domain"],
    "domains.choose_n_domains": lambda a: domains.choose_n_domains(_normalized(a)),
    "domains.bison": lambda a: (_bison(a), a.obs["bison"])[1],
    "domains.markers": lambda a: domains.markers(_clustered(a), "spatial_domain"),
    "modules.aeh": lambda a: modules.aeh(a, 3, 300.0),
    "modules.stihc": lambda a: modules.stihc(_normalized(a)),
    "datasets.inject_artifacts": lambda a: datasets.inject_artifacts(a).X,
    "integrate.concat_samples": _concatenated,
}


@pytest.mark.parametrize("case", list(CASES))
def test_defaults_work_as_with_a_counts_layer(as_they_come, case):
    assert not as_they_come.layers  # the object as the library made it
    run = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _assert_same(run(as_they_come.copy()), run(_with_counts_layer(as_they_come)))


def test_deconvolution_defaults_on_objects_as_they_come(as_they_come, reference):
    signatures = deconv.reference_signatures(reference)
    _assert_same(signatures, deconv.reference_signatures(_with_counts_layer(reference)))
    fractions = deconv.deconvolve(as_they_come.copy(), reference)
    _assert_same(fractions, deconv.deconvolve(_with_counts_layer(as_they_come), reference))


def test_doublets_on_a_scanpy_object(scanpy_visium):
    # A classifier on simulated doublets takes seconds: one kind and 200 spots suffice.
    small = scanpy_visium[:200].copy()
    first, second = small.copy(), _with_counts_layer(small)
    pp.doublets(first)
    pp.doublets(second)
    _assert_same(first.obs["doublet_score"], second.obs["doublet_score"])


@pytest.mark.slow
def test_gnn_on_a_small_scanpy_object(scanpy_visium):
    pytest.importorskip("torch")
    small = scanpy_visium[:120, :30].copy()
    first, second = small.copy(), _with_counts_layer(small)
    for adata in (first, second):
        domains.gnn(adata, 2, n_epochs=10, hidden_dims=(16, 4))
    _assert_same(first.obs["gnn"], second.obs["gnn"])


def test_the_counts_layer_wins_over_log_normalized_x(scanpy_visium, reference):
    adata = _normalized(scanpy_visium.copy())  # X log-normalized, counts in layers
    assert resolve_counts_layer(adata) == "counts"
    calls = {
        "qc_metrics": lambda a, **kw: (pp.qc_metrics(a, **kw), a.obs["total_counts"])[1],
        "spanorm": lambda a, **kw: (pp.spanorm(a, **kw), a.layers["spanorm"])[1],
        "stabilize": lambda a, **kw: (pp.stabilize(a, **kw), a.layers["stabilized"])[1],
        "sparkx": svg.sparkx,
        "spatialde": svg.spatialde,
        "bison": lambda a, **kw: (_bison(a, **kw), a.obs["bison"])[1],
        "deconvolve": lambda a, **kw: deconv.deconvolve(a, reference, **kw),
        "inject_artifacts": lambda a, **kw: datasets.inject_artifacts(a, **kw).X,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for run in calls.values():
            _assert_same(run(adata.copy()), run(adata.copy(), layer="counts"))


@pytest.mark.parametrize(
    "call",
    [
        pp.qc_metrics,
        pp.normalize,
        pp.stabilize,
        svg.sparkx,
        svg.spatialde,
        _bison,
        lambda a: datasets.inject_artifacts(a),
    ],
    ids=["qc_metrics", "normalize", "stabilize", "sparkx", "spatialde", "bison", "artifacts"],
)
def test_normalized_x_without_counts_is_one_clear_error(scanpy_visium, call):
    adata = _normalized(scanpy_visium.copy())
    counts = adata.layers.pop("counts")
    with pytest.raises(SpatiomeInputError) as err:
        call(adata)
    message = str(err.value)
    assert message.startswith("no raw counts found for layer=None")
    assert "adata.layers['counts'] is missing (no layers present)" in message
    assert "adata.X holds non-integer values (e.g." in message
    assert "set adata.layers['counts'] = <the raw counts" in message
    assert "pass layer= naming the layer" in message
    adata.raw = ad.AnnData(counts, var=adata.var)
    with pytest.raises(SpatiomeInputError, match=r"adata.layers\['counts'\] = adata.raw.X.copy"):
        call(adata)


def test_an_explicit_layer_keeps_its_errors(scanpy_visium):
    with pytest.raises(SpatiomeInputError, match=r"adata.layers\['counts'\] is missing"):
        pp.qc_metrics(scanpy_visium.copy(), layer="counts")
    normalized = _normalized(scanpy_visium.copy())
    normalized.layers["spanorm"] = normalized.layers.pop("counts")
    with pytest.raises(SpatiomeInputError, match=r"\(e.g. layer='spanorm'\)"):
        svg.sparkx(normalized)
    # Methods that accept normalized values read X when there are no counts.
    table = svg.sparkx(normalized, require_counts=False, check_depth=False, copy=True)
    assert table.shape[0] == normalized.n_vars
