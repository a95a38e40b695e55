"""Run configurations: TOML files, validation, defaults, command-line overrides, re-runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import spatiome as sm
from spatiome._core.validate import SpatiomeInputError
from spatiome.cli import main
from spatiome.workflow import PipelineConfig
from spatiome.workflow.config import config_from_dict, default_toml, load_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_default_toml_documents_every_key_and_round_trips(capsys):
    assert main(["config", "--default"]) == 0
    text = capsys.readouterr().out
    assert text == default_toml()
    document = tomllib.loads(text)
    assert config_from_dict(document).pipeline == PipelineConfig()
    # fields set in another table, under a short name
    elsewhere = {"qc_remove": "[qc]\n", "interactions": "\nrun = false\n"}
    elsewhere |= {"lr_resource": "resource =", "organism": "organism =",
                  "lr_permutations": "n_permutations =", "dask_scheduler": "[dask]\n"}  # fmt: skip
    for name in PipelineConfig.__dataclass_fields__:
        if name in elsewhere:
            assert elsewhere[name] in text, name
            continue
        assert f"{name} =" in text, name  # unset keys are present, commented out
    assert "# Random seed for every stochastic step" in text


@pytest.mark.parametrize(
    ("document", "match"),
    [
        ({"pipline": {}}, r"unknown table \[pipline\]"),
        ({"pipeline": {"n_domain": 3}}, "did you mean pipeline.n_domains"),
        ({"pipeline": {"seed": "1"}}, "pipeline.seed in the config must be an integer"),
        ({"pipeline": {"umap": 1}}, "pipeline.umap in the config must be true or false"),
        ({"pipeline": {"svg_methods": "moran"}}, "must be a list of strings"),
        ({"pipeline": {"svg_methods": ["moran", "nope"]}}, "svg_methods must be distinct"),
        ({"pipeline": {"deconv_method": "cibersort"}}, "deconv_method must be one of"),
        ({"pipeline": {"n_domains": 1}}, "n_domains must be an integer at least 2"),
        ({"pipeline": {"fdr": 2.0}}, "fdr must be a number strictly between 0 and 1"),
        ({"pipeline": {"fdr": 0}}, "fdr must be a number strictly between 0 and 1"),
        ({"pipeline": {"n_top_maps": -4}}, "n_top_maps must be an integer at least 0"),
        ({"pipeline": {"n_comps": -3}}, "n_comps must be an integer at least 2"),
        ({"pipeline": {"resolution": 0.0}}, "resolution must be a number greater than 0"),
        ({"pipeline": {"n_spatial_neighbors": 0}}, "n_spatial_neighbors must be an integer"),
        ({"pipeline": {"target_sum": -1.0}}, "target_sum must be a number greater than 0"),
        ({"pipeline": {"seed": -1}}, "seed must be an integer between 0 and"),
        ({"pipeline": {"max_module_genes": 2}}, "max_module_genes must be an integer at least 4"),
        ({"pipeline": {"deconv_smoothing": -0.5}}, "deconv_smoothing must be"),
        ({"pipeline": {"graph_method": "hexagon"}}, "graph_method must be one of"),
        ({"input": {"paths": "a.h5ad"}}, "input.paths in the config must be a list"),
        ({"input": {"paths": ["a", "b"], "sample_names": ["x"]}}, "1 names for 2 paths"),
        ({"output": {"folder": "x"}}, "unknown key output.folder"),
        ({"pipeline": 3}, "must be a table"),
    ],
)
def test_bad_configs_name_the_key(document, match):
    with pytest.raises(SpatiomeInputError, match=match):
        config_from_dict(document)


def test_paths_are_taken_from_the_config_folder(tmp_path):
    (tmp_path / "run.toml").write_text(
        '[input]\npaths = ["a.h5ad", "/abs/b.h5ad"]\n[output]\ndir = "out"\n'
        '[pipeline]\nreference = "ref.h5ad"\nfdr = 0.1\n'
    )
    config = load_config(tmp_path / "run.toml")
    assert config.inputs == [tmp_path / "a.h5ad", Path("/abs/b.h5ad")]
    assert config.out == tmp_path / "out"
    assert config.pipeline.reference == str(tmp_path / "ref.h5ad")
    assert config.pipeline.fdr == 0.1


@pytest.mark.parametrize("line", ["fdr = 2.0", "n_top_maps = -4", "n_comps = -3"])
def test_config_check_refuses_out_of_range_values(tmp_path, capsys, line):
    (tmp_path / "run.toml").write_text(f'[input]\npaths = ["a.h5ad"]\n[pipeline]\n{line}\n')
    assert main(["config", "--check", str(tmp_path / "run.toml")]) == 2
    error = capsys.readouterr().err
    assert line.split()[0] in error and "must be" in error


def test_a_bare_name_that_is_no_file_stays_a_dataset_name(tmp_path):
    (tmp_path / "run.toml").write_text(
        '[input]\npaths = ["mouse_ob_rep11"]\n[pipeline]\nreference = "rctd_cerebellum_slideseq"\n'
    )
    config = load_config(tmp_path / "run.toml")
    assert config.inputs == [Path("mouse_ob_rep11")]
    assert config.pipeline.reference == "rctd_cerebellum_slideseq"


def test_missing_or_invalid_file_is_one_clear_error(tmp_path, capsys):
    assert main(["config", "--check", str(tmp_path / "nope.toml")]) == 2
    assert "spatiome config --default" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text("seed = \n")
    assert main(["run", str(tmp_path / "bad.toml")]) == 2
    assert "is not valid TOML" in capsys.readouterr().err
    (tmp_path / "data.h5ad").write_bytes(b"\x89HDF\r\n\x1a\n\x00\x00")
    assert main(["run", str(tmp_path / "data.h5ad")]) == 2
    assert "--input" in capsys.readouterr().err


@pytest.fixture(scope="module")
def configured(tmp_path_factory):
    folder = tmp_path_factory.mktemp("configured")
    tissue = sm.datasets.simulate_tissue(n_spots=400, n_genes=60, random_state=5)
    sm.io.write_h5ad(tissue, folder / "tissue.h5ad")
    (folder / "run.toml").write_text(
        '[input]\npaths = ["tissue.h5ad"]\n[output]\ndir = "first"\n'
        '[pipeline]\nseed = 1\numap = false\nn_domains = 4\nsvg_methods = ["sparkx", "moran"]\n'
        "module_methods = []\n"
    )
    return folder


def test_run_from_config_records_it_and_overrides_win(configured):
    assert main(["run", str(configured / "run.toml"), "--no-progress"]) == 0
    record = json.loads((configured / "first" / "provenance.json").read_text())
    assert record["parameters"]["seed"] == 1
    assert record["parameters"]["svg_methods"] == ["sparkx", "moran"]
    assert record["parameters"]["config_file"] == str((configured / "run.toml").resolve())
    assert str((configured / "run.toml").resolve()) in record["inputs"]
    assert {"spatiome", "anndata", "numpy", "scipy", "harmonypy"} <= set(record["dependencies"])
    # an option on the command line overrides the file, the rest of the file still holds
    out = configured / "override"
    code = main(["run", str(configured / "run.toml"), "--seed", "7", "--out", str(out),
                 "--no-progress"])  # fmt: skip
    assert code == 0
    record = json.loads((out / "provenance.json").read_text())
    assert record["parameters"]["seed"] == 7 and record["parameters"]["n_domains"] == 4


def test_same_config_and_seed_give_identical_tables(configured):
    out = configured / "again"
    assert main(["run", str(configured / "run.toml"), "--out", str(out), "--no-progress"]) == 0
    first = configured / "first"
    tables = sorted(p.name for p in first.glob("*.csv"))
    assert tables == sorted(p.name for p in out.glob("*.csv"))
    assert {"svg.csv", "svg_moran.csv", "markers.csv"} <= set(tables)
    for name in tables:
        assert (first / name).read_bytes() == (out / name).read_bytes(), name
    a = sm.io.read_h5ad(first / "results.h5ad")
    b = sm.io.read_h5ad(out / "results.h5ad")
    assert (a.obs["leiden"] == b.obs["leiden"]).all()
    assert (a.obs["spatial_domain"] == b.obs["spatial_domain"]).all()
