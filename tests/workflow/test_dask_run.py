"""A run on a Dask cluster: identical results, the [dask] table and --dask-scheduler, and
one clear error when the scheduler cannot be reached."""

from __future__ import annotations

import json
import socket
import sys
import threading
import warnings

import numpy as np
import pandas as pd
import pytest

import spatiome as sm
from spatiome._core.validate import SpatiomeInputError
from spatiome.cli import _config, build_parser, main
from spatiome.datasets.ligrec_simulation import simulate_interactions
from spatiome.workflow import PipelineConfig, dask_cluster, run_pipeline
from spatiome.workflow.config import config_from_dict

distributed = pytest.importorskip("distributed", reason="dask.distributed is the dask extra")

#: Steps that use the cluster (SpatialDE and trendsceek: tests/svg), none of the slow others.
CONFIG = {
    "umap": False,
    "svg_methods": ("moran", "geary", "sparkx"),
    "domain_methods": (),
    "module_methods": (),
    "group_key": "cell_type",
    "interactions": True,
    "lr_permutations": 19,
    "doublets": False,
    "n_niches": 3,
}


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded workers in this process (fast to start, still a real scheduler)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        )
    yield local
    local.close()


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """The same run locally, on the cluster, and again locally in the cluster run's folder
    (the files of the cluster run are read before that). Small chunks, so that every step
    really splits its work into several cluster tasks.
    """
    folder = tmp_path_factory.mktemp("dask_run")
    tissue = simulate_interactions(n_cells=300, random_state=0)
    pairs = folder / "pairs.csv"
    tissue.uns["ligrec_truth"][["ligand", "receptor"]].to_csv(pairs, index=False)
    config = {**CONFIG, "lr_resource": str(pairs)}
    sparkx_module = sys.modules[sm.svg.sparkx.__module__]
    ligrec_module = sys.modules[sm.interactions.ligrec.__module__]
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patch.setattr(sm._core.parallel, "DEFAULT_CHUNK_ENTRIES", 300 * 7)
        patch.setattr(sparkx_module, "SPOT_BLOCK", 128)
        patch.setattr(ligrec_module, "CHUNK_ENTRIES", 300 * 2)
        local = run_pipeline(
            tissue, folder / "local", PipelineConfig(**config), progress=False, cache=False
        )
        address = cluster.scheduler_address
        with distributed.Client(address, set_as_default=False) as observer:
            with distributed.get_task_stream(client=observer) as stream:
                remote = run_pipeline(
                    tissue,
                    folder / "remote",
                    PipelineConfig(**config, dask_scheduler=address),
                    progress=False,
                )
        written = {kind: path.read_bytes() for kind, path in remote.files.items()}
        again = run_pipeline(tissue, folder / "remote", PipelineConfig(**config), progress=False)
    return {"local": local, "remote": remote, "again": again, "tasks": stream.data,
            "written": written}  # fmt: skip


def test_the_cluster_does_the_chunked_work(runs):
    chunk_tasks = [task for task in runs["tasks"] if "_call_chunk" in str(task["key"])]
    # Moran and Geary: values and permutations per gene chunk; SPARK-X: spot blocks;
    # ligand-receptor: receptor blocks and group-pair blocks.
    assert len(chunk_tasks) >= 20
    workers = {task["worker"] for task in chunk_tasks}
    assert len(workers) == 2


def test_a_cluster_run_is_identical_to_a_local_run(runs):
    local, remote = runs["local"], runs["remote"]
    assert set(local.svg_tables) == set(remote.svg_tables) == set(CONFIG["svg_methods"])
    for method, table in local.svg_tables.items():
        pd.testing.assert_frame_equal(table, remote.svg_tables[method], check_exact=True)
    for name in ("svg", "svg_geary", "svg_sparkx", "ligand_receptor", "ligand_receptor_groups",
                 "neighbourhood_enrichment"):  # fmt: skip
        assert local.files[name].read_bytes() == runs["written"][name], name
    pd.testing.assert_frame_equal(local.adata.var, remote.adata.var, check_exact=True)
    pd.testing.assert_frame_equal(local.adata.obs, remote.adata.obs, check_exact=True)
    assert local.summary == remote.summary


def test_the_address_is_recorded_but_keys_no_cached_step(runs, cluster):
    provenance = json.loads(runs["written"]["provenance"])
    assert provenance["parameters"]["dask_scheduler"] == cluster.scheduler_address
    assert b"Dask scheduler" in runs["written"]["log"]
    # The same parameters without the cluster restore every step from the cluster run.
    again = json.loads(runs["again"].files["provenance"].read_text())
    steps = [s for s in again["steps"] if s["name"] != "report"]
    assert steps and all(s.get("cached") for s in steps), [s["name"] for s in steps]
    assert again["parameters"]["dask_scheduler"] is None
    for method, table in runs["local"].svg_tables.items():
        pd.testing.assert_frame_equal(table, runs["again"].svg_tables[method], check_exact=True)


def test_the_dask_table_and_the_command_line_option():
    document = {"dask": {"scheduler": "tcp://10.0.0.5:8786"}}
    assert config_from_dict(document).pipeline.dask_scheduler == "tcp://10.0.0.5:8786"
    assert config_from_dict({}).pipeline.dask_scheduler is None
    parser = build_parser()
    args = parser.parse_args(["run", "--dask-scheduler", "tcp://node7:8786"])
    assert _config(args).dask_scheduler == "tcp://node7:8786"
    # the option overrides the configuration file; left out, the file's value stays
    from_file = config_from_dict(document).pipeline
    assert _config(args, from_file).dask_scheduler == "tcp://node7:8786"
    assert _config(parser.parse_args(["run"]), from_file).dask_scheduler == "tcp://10.0.0.5:8786"
    assert _config(parser.parse_args(["demo"])).dask_scheduler is None


@pytest.mark.parametrize(
    ("document", "match"),
    [
        ({"dask": {"scheduler": 8786}}, "dask.scheduler in the config must be a string"),
        ({"dask": {"scheduler": "  "}}, "dask_scheduler must be the address of a Dask"),
        ({"dask": {"address": "tcp://h:1"}}, "unknown key dask.address"),
        (
            {"dask": {"scheduler": "tcp://h:1"}, "pipeline": {"dask_scheduler": "tcp://h:2"}},
            "dask.scheduler and pipeline.dask_scheduler",
        ),
    ],
)
def test_bad_dask_tables_name_the_key(document, match):
    with pytest.raises(SpatiomeInputError, match=match):
        config_from_dict(document)


@pytest.fixture()
def closed_port_address(monkeypatch) -> str:
    """An address where nobody listens (and a short wait for an answer)."""
    monkeypatch.setattr(dask_cluster, "CONNECT_TIMEOUT_S", 0.5)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def test_an_unreachable_scheduler_stops_the_command_before_any_work(
    closed_port_address, tmp_path, capsys
):
    tissue = sm.datasets.simulate_tissue(n_spots=100, n_genes=10, random_state=0)
    tissue.write_h5ad(tmp_path / "tissue.h5ad")
    out = tmp_path / "out"
    argv = ["run", "--input", str(tmp_path / "tissue.h5ad"), "--out", str(out)]
    assert main([*argv, "--dask-scheduler", closed_port_address]) == 2
    error = capsys.readouterr().err
    assert error.count("spatiome: error:") == 1
    assert f"cannot reach the Dask scheduler at '{closed_port_address}'" in error
    assert "'dask scheduler' is running there" in error
    assert not out.exists()


def test_an_unreachable_scheduler_stops_run_pipeline_before_any_work(closed_port_address, tmp_path):
    tissue = sm.datasets.simulate_tissue(n_spots=100, n_genes=10, random_state=0)
    config = PipelineConfig(dask_scheduler=closed_port_address)
    with pytest.raises(SpatiomeInputError, match="cannot reach the Dask scheduler at"):
        run_pipeline(tissue, tmp_path / "out", config, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_port_held_by_another_server_is_no_scheduler(monkeypatch):
    monkeypatch.setattr(dask_cluster, "CONNECT_TIMEOUT_S", 0.5)
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(SpatiomeInputError, match="no answer within 0.5 s"):
            dask_cluster.check_scheduler(address)


def test_workers_with_other_package_versions_are_refused(cluster, monkeypatch):
    real = dask_cluster._package_versions

    def versions():
        found = real()
        if threading.current_thread() is not threading.main_thread():
            found["numpy"] = "0.0.1"  # what an outdated worker would report
        return found

    monkeypatch.setattr(dask_cluster, "_package_versions", versions)
    with pytest.raises(SpatiomeInputError, match=r"numpy 0\.0\.1 on .* \(here " + np.__version__):
        dask_cluster.check_scheduler(cluster.scheduler_address)
