import json
import sys

import numpy as np
import pandas as pd
import pytest

import spatiome as sm
from spatiome.cli import main
from spatiome.workflow import PipelineConfig, evaluate_truth, run_pipeline


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--out", str(out), "--no-progress"])
    assert code == 0
    return out


def test_demo_writes_all_outputs(demo_run):
    for name in ("report.html", "results.h5ad", "svg.csv", "provenance.json", "spatiome.log"):
        assert (demo_run / name).stat().st_size > 0, name
    assert not [p for p in demo_run.iterdir() if p.name.endswith(".tmp")]


def test_demo_recovers_truth(demo_run):
    adata = sm.io.read_h5ad(demo_run / "results.h5ad")
    summary = adata.uns["spatiome"]["summary"]
    assert summary["svg_power"] >= 0.8
    # One run's false discovery proportion scatters around the nominal 5%; calibration
    # itself is tested on nulls in tests/svg and measured in benchmarks/svg_accuracy.py.
    assert summary["svg_fdr"] <= 0.15
    assert summary["domain_ari"] >= 0.5
    assert summary["domain_ari_cluster"] >= 0.5
    markers = pd.read_csv(demo_run / "markers.csv")
    assert markers["domain"].nunique() == summary["n_domains_cluster"]
    modules = pd.read_csv(demo_run / "modules_stihc.csv", index_col=0)
    assert len(modules) >= 10
    table = pd.read_csv(demo_run / "svg.csv", index_col=0)
    assert {"statistic", "pval", "qval"} <= set(table.columns)
    assert len(table) == adata.n_vars


@pytest.mark.slow
def test_squidpy_reads_the_results_as_they_are(demo_run):
    """The run's results.h5ad in squidpy: our graph keys, domain key and Moran table."""
    import matplotlib.pyplot as plt

    sq = pytest.importorskip("squidpy")
    adata = sm.io.read_h5ad(demo_run / "results.h5ad")
    assert adata.uns["spatial_neighbors"]["connectivities_key"] == "spatial_connectivities"
    assert adata.uns["spatial_neighbors"]["distances_key"] == "spatial_distances"
    assert {"spatial_connectivities", "spatial_distances"} <= set(adata.obsp)
    assert "spatial_domain" in adata.obs and not any(key.startswith("domain_") for key in adata.obs)
    assert list(adata.uns["moranI"].columns[:3]) == ["I", "pval_norm", "var_norm"]
    analysed = adata[adata.obs["spatial_domain"].notna()].copy()  # quality control kept
    analysed.obs["spatial_domain"] = analysed.obs["spatial_domain"].astype("category")
    sq.pl.spatial_scatter(analysed, color="spatial_domain", shape=None)
    plt.close("all")
    sq.gr.nhood_enrichment(
        analysed, cluster_key="spatial_domain", n_perms=20, seed=0, show_progress_bar=False
    )
    zscore = analysed.uns["spatial_domain_nhood_enrichment"]["zscore"]
    n_domains = analysed.obs["spatial_domain"].nunique()
    assert zscore.shape == (n_domains, n_domains)
    assert np.all(np.diag(zscore) > 0)  # a spatial domain's spots neighbour each other


def test_provenance_records_versions_inputs_steps(demo_run):
    record = json.loads((demo_run / "provenance.json").read_text())
    assert record["command"] == "demo"
    assert record["seed"] == 0
    assert {"spatiome", "anndata", "scanpy", "numpy"} <= set(record["versions"])
    names = [s["name"] for s in record["steps"]]
    assert names[:13] == [
        "qc",
        "spatial_qc",
        "doublets",
        "normalize",
        "graph",
        "reduce",
        "leiden",
        "domains_cluster",
        "markers",
        "neighbourhoods",
        "moran",
        "sparkx",
        "modules_stihc",
    ]
    assert all(s["seconds"] >= 0 for s in record["steps"])
    if sys.platform != "win32":  # the memory peak so far, never falling from step to step
        peaks = [s["peak_rss_gb"] for s in record["steps"]]
        assert peaks[0] > 0.05 and peaks == sorted(peaks), peaks


def test_report_is_self_contained_and_has_sections(demo_run):
    page = (demo_run / "report.html").read_text()
    for anchor in ("tissue", "qc", "clusters", "domains", "interactions", "svg", "modules",
                   "truth", "methods"):  # fmt: skip
        assert f'id="{anchor}"' in page
    assert page.count("data:image/png;base64,") >= 6
    assert "http://" not in page and "https://" not in page.replace("https://doi", "")


@pytest.fixture(scope="module")
def svg_methods_run(tmp_path_factory):
    """`spatiome run` on an h5ad file with three SVG methods: (tissue, its file, out)."""
    folder = tmp_path_factory.mktemp("svg_methods")
    tissue = sm.datasets.simulate_tissue(n_spots=500, n_genes=40, random_state=4)
    source = folder / "tissue.h5ad"
    sm.io.write_h5ad(tissue, source)
    out = folder / "out"
    args = ["run", "--input", str(source), "--out", str(out), "--no-umap", "--no-progress"]
    assert main([*args, "--svg", "spatialde,sparkx,moran"]) == 0
    return tissue, source, out


def test_run_on_h5ad_input_records_checksum(svg_methods_run):
    _, source, out = svg_methods_run
    record = json.loads((out / "provenance.json").read_text())
    (digests,) = record["inputs"].values()
    assert digests["tissue.h5ad"] == sm._core.files.sha256_file(source)


def test_run_missing_input_is_one_clear_error(tmp_path, capsys):
    code = main(["run", "--input", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "nope" in err and err.count("\n") == 1


def test_pipeline_is_deterministic_and_leaves_input_untouched(tmp_path):
    tissue = sm.datasets.simulate_tissue(n_spots=400, n_genes=60, random_state=1)
    before = tissue.copy()
    config = PipelineConfig(umap=False, n_domains=4)
    first = run_pipeline(tissue, tmp_path / "a", config, progress=False)
    second = run_pipeline(tissue, tmp_path / "b", config, progress=False)
    pd.testing.assert_frame_equal(first.svg, second.svg)
    pd.testing.assert_series_equal(first.adata.obs["leiden"], second.adata.obs["leiden"])
    assert set(tissue.obs.columns) == set(before.obs.columns)
    assert (tissue.X != before.X).nnz == 0


def test_evaluate_truth_counts_false_discoveries():
    adata = sm.datasets.simulate_tissue(n_spots=200, n_genes=20, random_state=0)
    truth = adata.var["is_spatial"].to_numpy()
    q = np.where(truth, 0.001, 0.9)
    q[np.flatnonzero(~truth)[0]] = 0.001
    result = evaluate_truth(adata, pd.DataFrame({"qval": q}, index=adata.var_names))
    assert result["svg_power"] == 1.0
    assert result["svg_fdr"] == pytest.approx(1 / (truth.sum() + 1))


def test_run_with_several_svg_methods_writes_a_table_and_section_each(svg_methods_run):
    tissue, _, out = svg_methods_run
    primary = pd.read_csv(out / "svg.csv", index_col=0)
    assert {"llr", "fsv", "length_scale"} <= set(primary.columns)
    for method in ("sparkx", "moran"):
        assert len(pd.read_csv(out / f"svg_{method}.csv", index_col=0)) == tissue.n_vars
    page = (out / "report.html").read_text()
    for anchor in ("svg", "svg-sparkx", "svg-moran"):
        assert f'id="{anchor}"' in page
    assert "Agreement between the methods" in page and "SpatialDE" in page
    record = json.loads((out / "provenance.json").read_text())
    names = [s["name"] for s in record["steps"]]
    start = names.index("spatialde")
    assert names[start : start + 3] == ["spatialde", "sparkx", "moran"]


def test_unknown_svg_method_is_one_clear_error(tmp_path, capsys):
    tissue = sm.datasets.simulate_tissue(n_spots=200, n_genes=20, random_state=0)
    source = tmp_path / "t.h5ad"
    sm.io.write_h5ad(tissue, source)
    code = main(["run", "--input", str(source), "--out", str(tmp_path / "o"), "--svg", "magic"])
    assert code == 2
    assert "svg_methods" in capsys.readouterr().err


def test_qc_flags_reach_results_and_report_and_doublets_follow_resolution(tmp_path):
    tissue = sm.datasets.inject_artifacts(
        sm.datasets.simulate_tissue(n_spots=800, n_genes=40, random_state=5), random_state=5
    )
    config = PipelineConfig(umap=False, n_domains=4, svg_methods=("moran",))
    spots = run_pipeline(tissue, tmp_path / "spots", config, progress=False)
    assert {"low_quality", "low_quality_reason"} <= set(spots.adata.obs)
    assert "doublet" not in spots.adata.obs
    flagged = spots.adata.obs["low_quality"].to_numpy(dtype=bool)
    injected = spots.adata.obs["injected"].to_numpy()
    # The dry patch and the low-quality edge are found; almost nothing else is flagged.
    assert flagged[injected == "dry_patch"].mean() >= 0.9
    assert flagged[injected == "low_quality_edge"].mean() >= 0.8
    assert flagged[injected == "none"].mean() <= 0.02
    # Removed from the statistics, kept in the results with missing values.
    assert spots.adata.n_obs == tissue.n_obs
    assert spots.summary["n_spots"] == tissue.n_obs - flagged.sum()
    assert spots.adata.obs.loc[flagged, "leiden"].isna().all()
    page = (tmp_path / "spots" / "report.html").read_text()
    assert "flagged spots are outlined" in page and "doublet scoring skipped" in page
    assert "were removed before the statistics" in page and "Where the " in page

    cells = sm.datasets.simulate_tissue(
        n_spots=800, n_genes=60, layout="random", n_cell_types=3, single_cells=True, random_state=1
    )
    result = run_pipeline(cells, tmp_path / "cells", config, progress=False)
    assert "doublet" in result.adata.obs and "doublet_score" in result.adata.obs


def test_domain_and_module_options_are_validated_and_can_be_switched_off(tmp_path, capsys):
    with pytest.raises(sm._core.validate.SpatiomeInputError, match="domain_methods"):
        PipelineConfig(domain_methods=("magic",))
    with pytest.raises(sm._core.validate.SpatiomeInputError, match="module_methods"):
        PipelineConfig(module_methods=("stihc", "stihc"))
    tissue = sm.datasets.simulate_tissue(n_spots=300, n_genes=30, random_state=2)
    result = run_pipeline(
        tissue,
        tmp_path / "bare",
        PipelineConfig(umap=False, domain_methods=(), module_methods=(), svg_methods=("moran",)),
        progress=False,
    )
    assert "markers" not in result.files
    page = result.files["report"].read_text()
    assert 'id="domains"' not in page and 'id="modules"' not in page


@pytest.fixture(scope="module")
def spots_and_reference(tmp_path_factory):
    """Visium-like spots summed from simulated cells, and a labelled reference of others."""
    folder = tmp_path_factory.mktemp("deconv")
    cells = sm.datasets.simulate_tissue(
        n_spots=6000,
        n_genes=120,
        layout="random",
        single_cells=True,
        n_cell_types=4,
        n_domains=4,
        mean_depth=400,
        random_state=0,
    )
    reference, spatial = sm.deconv.split_reference(cells, fraction=0.3, random_state=0)
    spots = sm.deconv.pseudo_spots(spatial, spot_radius=27.5, random_state=0)
    spots.uns["spatial_unit"] = "um"
    reference_path = folder / "reference.h5ad"
    sm.io.write_h5ad(reference, reference_path)
    spots_path = folder / "spots.h5ad"
    sm.io.write_h5ad(spots, spots_path)
    return spots, spots_path, reference_path


def test_run_with_a_reference_deconvolves_and_reports(tmp_path, spots_and_reference):
    spots, spots_path, reference_path = spots_and_reference
    out = tmp_path / "out"
    args = [
        "run",
        "--input",
        str(spots_path),
        "--out",
        str(out),
        "--reference",
        str(reference_path),
        "--no-umap",
        "--no-progress",
        "--modules",
        "none",
    ]
    assert main(args) == 0
    fractions = pd.read_csv(out / "cell_type_fractions.csv", index_col="spot")
    truth = spots.obsm["cell_type_proportions"]
    assert len(fractions) >= 0.9 * len(truth)  # the spots quality control kept
    truth = truth.loc[fractions.index]
    error = np.sqrt(
        np.mean((fractions.loc[truth.index, truth.columns].to_numpy() - truth.to_numpy()) ** 2)
    )
    assert error < 0.08
    page = (out / "report.html").read_text()
    assert 'id="deconvolution"' in page and "Cable et al. (2022)" in page
    record = json.loads((out / "provenance.json").read_text())
    assert str(reference_path.resolve()) in record["inputs"]
    assert record["parameters"]["deconv_method"] == "rctd"


def test_reference_options_are_validated(tmp_path, spots_and_reference, capsys):
    spots, spots_path, reference_path = spots_and_reference
    with pytest.raises(sm._core.validate.SpatiomeInputError, match="deconv_method"):
        PipelineConfig(deconv_method="magic")
    code = main(
        [
            "run",
            "--input",
            str(spots_path),
            "--out",
            str(tmp_path / "o"),
            "--reference",
            str(tmp_path / "missing.h5ad"),
        ]
    )
    assert code == 2 and "missing.h5ad: no such file or folder" in capsys.readouterr().err
    code = main(
        [
            "run",
            "--input",
            str(spots_path),
            "--out",
            str(tmp_path / "o"),
            "--reference",
            str(reference_path),
            "--reference-labels",
            "celltype",
        ]
    )
    assert code == 2 and "no obs column 'celltype'" in capsys.readouterr().err
