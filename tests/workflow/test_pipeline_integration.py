"""`spatiome run` on several samples and with a second modality; the Integration section."""

from __future__ import annotations

import json

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score

import spatiome as sm
from spatiome._core.validate import SpatiomeInputError
from spatiome.cli import main
from spatiome.workflow import PipelineConfig, pipeline_steps

# sd of the per-gene log factor of the second section; Harmony stops mixing near 0.5
BATCH_EFFECT = 0.4


def _sections(seed: int = 0):
    """Two sections of the same simulated tissue design; the second with a batch effect."""
    rng = np.random.default_rng(seed)
    design = dict(
        n_spots=900, n_genes=150, n_domains=4, patterns=("domain",), frac_spatial=0.4,
        effect_size=1.5, random_state=seed,
    )  # fmt: skip
    a = sm.datasets.simulate_tissue(**design)
    b = sm.datasets.simulate_tissue(**design)
    factor = np.exp(rng.normal(0.0, BATCH_EFFECT, b.n_vars))
    counts = sp.csr_matrix(b.layers["counts"], dtype=np.float64).multiply(factor[None, :])
    counts = sp.csr_matrix(counts)
    counts.data = rng.poisson(counts.data).astype(np.float64)
    counts.eliminate_zeros()
    b.X = counts.astype(np.float32)
    b.layers["counts"] = b.X.copy()
    return a, b


@pytest.fixture(scope="module")
def two_sample_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two")
    a, b = _sections()
    paths = [folder / "left.h5ad", folder / "right.h5ad"]
    for section, path in zip((a, b), paths, strict=True):
        sm.io.write_h5ad(section, path)
    out = folder / "out"
    code = main(
        ["run", "--input", str(paths[0]), "--input", str(paths[1]), "--out", str(out),
         "--n-domains", "4", "--svg", "moran", "--modules", "none", "--label-key", "domain",
         "--no-progress"]
    )  # fmt: skip
    assert code == 0
    return out, paths


def test_several_samples_are_combined_corrected_and_reported(two_sample_run):
    out, paths = two_sample_run
    adata = sm.io.read_h5ad(out / "results.h5ad")
    assert adata.obs["sample"].value_counts().to_dict() == {"left": 900, "right": 900}
    assert {"X_harmony", "X_pca_uncorrected", "X_umap_uncorrected", "X_umap"} <= set(adata.obsm)
    metrics = pd.read_csv(out / "integration_metrics.csv", index_col=0)
    before, after = metrics.loc["uncorrected PCA"], metrics.loc["Harmony"]
    assert before["batch_mixing"] < 0.3  # the batch effect keeps the sections apart
    assert after["batch_mixing"] > before["batch_mixing"] + 0.3
    assert after["label_purity"] > 0.7  # the domains stay apart
    # one domain set across both sections: the corrected features are clustered together
    analysed = adata.obs["spatial_domain"].notna().to_numpy()  # quality control kept them
    assert analysed.mean() > 0.95
    ari = adjusted_rand_score(adata.obs["domain"][analysed], adata.obs["spatial_domain"][analysed])
    assert ari > 0.6
    record = json.loads((out / "provenance.json").read_text())
    steps = [s["name"] for s in record["steps"]]
    assert steps[5:8] == ["reduce", "integration", "leiden"]
    assert {p.name for p in paths} <= {name for d in record["inputs"].values() for name in d}
    report = (out / "report.html").read_text()
    assert 'id="integration"' in report and "Harmony [" in report
    assert "UMAP before correction" in report and "UMAP after correction" in report


def test_correction_can_be_switched_off(tmp_path):
    a, b = _sections(1)
    both = sm.integrate.concat_samples({"a": a, "b": b})
    config = PipelineConfig(
        batch_correction="none", umap=False, n_domains=4, svg_methods=("moran",),
        module_methods=(), domain_methods=(),
    )  # fmt: skip
    result = sm.workflow.run_pipeline(both, tmp_path, config, progress=False)
    assert "X_harmony" not in result.adata.obsm
    assert (
        "integration" not in result.files
        and 'id="integration"' not in (tmp_path / "report.html").read_text()
    )


def _protein_for(rna: anndata.AnnData, seed: int = 0) -> anndata.AnnData:
    """A 12-protein panel whose levels follow the tissue's domains."""
    rng = np.random.default_rng(seed)
    codes = rna.obs["domain"].cat.codes.to_numpy()
    fold = rng.normal(0.0, 1.0, (codes.max() + 1, 12))
    mean = 40.0 * np.exp(fold[codes])
    values = rng.poisson(mean).astype(np.float32)
    # stored in reverse spot order: the pipeline must match the spots by name
    protein = anndata.AnnData(values[::-1].copy(), obs=pd.DataFrame(index=rna.obs_names[::-1]))
    protein.var_names = [f"P{i}" for i in range(12)]
    return protein


def test_second_modality_is_integrated_and_reported(tmp_path):
    pytest.importorskip("torch")
    rna = sm.datasets.simulate_tissue(
        n_spots=500, n_genes=60, n_domains=4, domains="blobs", random_state=2
    )
    protein = _protein_for(rna)
    sm.io.write_h5ad(rna, tmp_path / "rna.h5ad")
    sm.io.write_h5ad(protein, tmp_path / "protein.h5ad")
    out = tmp_path / "out"
    code = main(
        ["run", "--input", str(tmp_path / "rna.h5ad"), "--modality", "protein",
         "--modality-input", str(tmp_path / "protein.h5ad"), "--n-domains", "4", "--svg",
         "moran", "--modules", "none", "--no-umap", "--no-progress", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    adata = sm.io.read_h5ad(out / "results.h5ad")
    adata = adata[adata.obs["domain_multimodal"].notna().to_numpy()]  # spots QC kept
    assert adata.n_obs >= 0.95 * rna.n_obs
    assert adata.obs["domain_multimodal"].nunique() == 4
    weights = adata.obsm["X_multimodal_weights"]
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
    assert adjusted_rand_score(adata.obs["domain"], adata.obs["domain_multimodal"]) > 0.5
    report = (out / "report.html").read_text()
    assert 'id="integration"' in report and "SpatialGlue" in report
    record = json.loads((out / "provenance.json").read_text())
    assert "multimodal" in [s["name"] for s in record["steps"]]
    assert "protein.h5ad" in {name for d in record["inputs"].values() for name in d}


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"batch_correction": "combat"}, "batch_correction must be one of"),
        ({"modality": "rna"}, "modality must be one of"),
        ({"modality_input": "x.h5ad"}, "modality_input is set but modality is not"),
    ],
)
def test_integration_options_are_validated(options, match):
    with pytest.raises(SpatiomeInputError, match=match):
        PipelineConfig(**options)


def test_missing_modality_file_and_names_are_clear_errors(tmp_path, capsys):
    rna = sm.datasets.simulate_tissue(n_spots=200, n_genes=30, random_state=0)
    sm.io.write_h5ad(rna, tmp_path / "rna.h5ad")
    code = main(
        ["run", "--input", str(tmp_path / "rna.h5ad"), "--modality", "protein",
         "--out", str(tmp_path / "o"), "--no-progress"]
    )  # fmt: skip
    assert code == 2
    assert "needs modality_input" in capsys.readouterr().err
    code = main(
        ["run", "--input", str(tmp_path / "rna.h5ad"), "--input", str(tmp_path / "rna.h5ad"),
         "--sample-names", "only_one", "--out", str(tmp_path / "o"), "--no-progress"]
    )  # fmt: skip
    assert code == 2
    assert "--sample-names needs 2 distinct names" in capsys.readouterr().err
    other = anndata.AnnData(np.ones((5, 3), dtype=np.float32))
    other.obs_names = [f"x{i}" for i in range(5)]
    sm.io.write_h5ad(other, tmp_path / "other.h5ad")
    config = PipelineConfig(modality="protein", modality_input=str(tmp_path / "other.h5ad"))
    with pytest.raises(SpatiomeInputError, match="shares no spot names"):
        sm.workflow.run_pipeline(rna, tmp_path / "p", config, progress=False)


def test_steps_follow_samples_and_modality():
    config = PipelineConfig(modality="image", svg_methods=("sparkx",))
    assert "integration" not in pipeline_steps(config)
    steps = pipeline_steps(config, n_samples=3)
    assert steps.index("integration") == steps.index("reduce") + 1
    assert steps.index("multimodal") == steps.index("markers") + 1
    assert "integration" not in pipeline_steps(PipelineConfig(batch_correction="none"), n_samples=2)


def test_image_modality_comes_from_the_stored_histology_image(tmp_path):
    pytest.importorskip("torch")
    rna = sm.datasets.simulate_tissue(n_spots=300, n_genes=40, n_domains=2, random_state=4)
    xy = rna.obsm["spatial"]
    scale = 0.25
    side = xy.max(axis=0) + 200.0
    picture = np.full((int(side[1] * scale), int(side[0] * scale), 3), 0.8, dtype=np.float32)
    # the image is darker over the right half of the tissue
    picture[:, int(np.median(xy[:, 0]) * scale) :] = (0.4, 0.2, 0.5)
    rna.uns["spatial"] = {
        "lib": {
            "images": {"hires": picture},
            "scalefactors": {"tissue_hires_scalef": scale, "spot_diameter_fullres": 60.0},
        }
    }
    config = PipelineConfig(
        modality="image", umap=False, n_domains=2, svg_methods=("moran",), module_methods=(),
        domain_methods=(), spatial_qc=False,
    )  # fmt: skip
    result = sm.workflow.run_pipeline(rna, tmp_path, config, progress=False)
    weights = result.adata.obsm["X_multimodal_weights"]
    assert weights.columns.tolist() == ["rna", "image"]
    assert result.adata.obs["domain_multimodal"].nunique() == 2
    assert "histology image features" in (tmp_path / "report.html").read_text()
