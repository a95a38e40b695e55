"""The pipeline's ``neighbourhoods`` and ``interactions`` steps: which groups they compare,
what they write (CSVs, results.h5ad, report), and how they are switched on and skipped."""

from __future__ import annotations

import warnings

import anndata
import numpy as np
import pandas as pd
import pytest

import spatiome as sm
from spatiome._core.validate import SpatiomeInputError
from spatiome.cli import main
from spatiome.datasets.ligrec_simulation import simulate_interactions
from spatiome.workflow import PipelineConfig, run_pipeline
from spatiome.workflow.config import config_from_dict
from spatiome.workflow.interactions import interaction_groups, organism_of

pytest.importorskip("liana", reason="the interactions extra is not installed")

#: A quick pipeline: no UMAP, no modules, one SVG test.
QUICK = {"umap": False, "svg_methods": ("moran",), "module_methods": ()}


@pytest.fixture(scope="module")
def tissue() -> anndata.AnnData:
    """Cells of five types with planted ligand-receptor pairs (and the pairs' table)."""
    return simulate_interactions(n_cells=1500, random_state=0)


@pytest.fixture(scope="module")
def run(tissue, tmp_path_factory):
    folder = tmp_path_factory.mktemp("interactions")
    pairs = folder / "pairs.csv"
    tissue.uns["ligrec_truth"][["ligand", "receptor"]].to_csv(pairs, index=False)
    config = PipelineConfig(**QUICK, domain_methods=(), group_key="cell_type",
                            interactions=True, lr_resource=str(pairs))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_pipeline(tissue, folder / "out", config, progress=False, cache=False)


def test_the_steps_write_their_tables_and_find_the_planted_pairs(run, tissue):
    expected = {"neighbourhood_enrichment", "niches", "ligand_receptor", "ligand_receptor_groups"}
    assert expected <= set(run.files)
    truth = tissue.uns["ligrec_truth"].set_index(["ligand", "receptor"])["kind"]
    pairs = pd.read_csv(run.files["ligand_receptor"])
    called = pairs[pairs["qvalue"] < 0.05]
    kinds = truth.reindex(pd.MultiIndex.from_frame(called[["ligand", "receptor"]]))
    assert (kinds == "planted").sum() == 4  # the four planted pairs, complex included
    n_null = (truth == "null").sum()
    assert (kinds == "null").sum() <= 0.1 * n_null  # (this seed: 2 of 60 nulls at q < 0.05)
    assert run.summary["n_lr_pairs"] == len(called)
    groups = pd.read_csv(run.files["ligand_receptor_groups"])
    top = groups.iloc[0]
    assert (top["sender"], top["receiver"]) == ("A", "B")  # where the planted pairs meet


def test_enrichment_csv_equals_the_function_on_the_analysed_cells(run):
    table = pd.read_csv(run.files["neighbourhood_enrichment"])
    kept = run.adata[run.adata.obs["low_quality"] == False].copy()  # noqa: E712
    direct = sm.interactions.nhood_enrichment(kept, "cell_type", copy=True)
    n_groups = kept.obs["cell_type"].nunique()
    assert len(table) == n_groups * n_groups
    np.testing.assert_array_equal(table["count"].to_numpy(), direct["count"].ravel())
    np.testing.assert_allclose(table["zscore"].to_numpy(), direct["zscore"].ravel(), rtol=1e-10)
    shares = table.groupby("group")["share"].sum()
    np.testing.assert_allclose(shares.to_numpy(), 1.0)


def test_niches_are_stored_and_recover_the_cell_type_layout(run):
    niches = pd.read_csv(run.files["niches"], index_col="niche")
    labels = run.adata.obs["niche"].dropna()
    assert niches["size"].sum() == len(labels)
    composition = niches.drop(columns="size")
    np.testing.assert_allclose(composition.sum(axis=1).to_numpy(), 1.0, atol=1e-9)
    assert run.summary["n_niches"] == len(niches) >= 2
    results = anndata.read_h5ad(run.files["results"])  # niches and pairs survive h5ad
    assert "niche" in results.obs and "ligrec" in results.uns


def test_report_has_the_section_with_its_figures(run):
    page = run.files["report"].read_text()
    section = page.split('id="interactions"')[1].split("<section")[0]
    assert section.count("<img") >= 4  # enrichment, niche map, composition, local maps
    for phrase in ("Neighbourhood enrichment", "Niches", "Ligand-receptor pairs", "R3A_R3B"):
        assert phrase in section, phrase


def test_groups_come_from_the_first_source_that_exists():
    data = anndata.AnnData(np.zeros((6, 1)))
    config = PipelineConfig()
    with pytest.raises(SpatiomeInputError, match="no groups to compare"):
        interaction_groups(data, config)
    data.obs["spatial_domain"] = ["0", "0", "1", "1", "2", "2"]
    assert interaction_groups(data, config) == ("spatial_domain", "domains")
    fractions = pd.DataFrame(
        [[0.9, 0.1], [0.2, 0.8], [np.nan, np.nan], [0.6, 0.4], [0.0, 1.0], [1.0, 0.0]],
        index=data.obs_names, columns=["T", "B"],
    )  # fmt: skip
    data.obsm["cell_type_fractions"] = fractions
    assert interaction_groups(data, config) == ("dominant_cell_type", "most abundant cell types")
    dominant = data.obs["dominant_cell_type"]
    assert list(dominant.astype(object).fillna("-")) == ["T", "B", "-", "T", "B", "T"]
    data.obs["cell_type"] = list("xyxyxy")
    assert interaction_groups(data, config)[0] == "cell_type"
    data.obs["mine"] = list("aabbcc")
    assert interaction_groups(data, PipelineConfig(group_key="mine")) == ("mine", "groups")
    with pytest.raises(SpatiomeInputError, match="group_key 'absent' is not a column"):
        interaction_groups(data, PipelineConfig(group_key="absent"))
    data.obs["one"] = "same"
    with pytest.raises(SpatiomeInputError, match="has 1 distinct values"):
        interaction_groups(data, PipelineConfig(group_key="one"))


def test_the_step_runs_only_where_groups_can_exist_and_says_why_it_did_not(tmp_path):
    assert "neighbourhoods" not in sm.workflow.pipeline_steps(PipelineConfig(domain_methods=()))
    tissue = sm.datasets.simulate_tissue(n_spots=300, n_genes=40, random_state=1)
    config = PipelineConfig(**QUICK, domain_methods=(), group_key="absent")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_pipeline(tissue, tmp_path / "out", config, progress=False, cache=False)
    assert "neighbourhood_enrichment" not in result.files
    page = result.files["report"].read_text()
    assert "group_key &#x27;absent&#x27; is not a column" in page


def test_niches_need_cell_types_and_say_so(tmp_path):
    tissue = sm.datasets.simulate_tissue(n_spots=300, n_genes=40, random_state=1)
    config = PipelineConfig(**QUICK, n_domains=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_pipeline(tissue, tmp_path / "out", config, progress=False, cache=False)
    assert "neighbourhood_enrichment" in result.files and "niches" not in result.files
    assert "Niches were not computed" in result.files["report"].read_text()


def test_organism_is_read_from_the_symbols():
    assert organism_of(pd.Index(["ACTB", "CD74", "MT-CO1", "Gene1"])) == "human"
    assert organism_of(pd.Index(["Actb", "Cd74", "mt-Co1"])) == "mouse"


def test_config_table_and_command_line_switch_the_step_on(tmp_path):
    document = {"interactions": {"run": True, "organism": "mouse", "n_permutations": 0,
                                 "resource": "pairs.csv"}}  # fmt: skip
    config = config_from_dict(document, base=tmp_path).pipeline
    assert config.interactions and config.organism == "mouse" and config.lr_permutations == 0
    assert config.lr_resource == str(tmp_path / "pairs.csv")
    assert "interactions" in sm.workflow.pipeline_steps(config)
    assert "interactions" not in sm.workflow.pipeline_steps(PipelineConfig())
    with pytest.raises(SpatiomeInputError, match="organism must be one of"):
        PipelineConfig(organism="zebrafish")
    with pytest.raises(SpatiomeInputError, match="did you mean interactions.organism"):
        config_from_dict({"interactions": {"organisms": "human"}})
    from spatiome.cli import _config, build_parser

    args = build_parser().parse_args(["run", "--input", "x.h5ad", "--interactions",
                                      "--groups", "cell_type", "--organism", "human"])  # fmt: skip
    parsed = _config(args)
    assert parsed.interactions and parsed.group_key == "cell_type"
    assert parsed.organism == "human"
    assert main(["config", "--default"]) == 0
