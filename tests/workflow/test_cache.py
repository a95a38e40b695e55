"""The step cache: changed parameters recompute only their dependents; killed runs resume."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import spatiome as sm
from spatiome.cli import main
from spatiome.workflow import PipelineConfig, run_pipeline
from spatiome.workflow.cache import CACHE_FOLDER, apply_delta, delta_since, snapshot


def _cached(out) -> dict[str, bool]:
    record = json.loads((out / "provenance.json").read_text())
    return {s["name"]: bool(s.get("cached")) for s in record["steps"]}


def _tables(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.csv"))}


@pytest.fixture(scope="module")
def tissue():
    return sm.datasets.simulate_tissue(n_spots=400, n_genes=60, random_state=2)


BASE = dict(
    umap=False, n_domains=4, svg_methods=("moran", "sparkx"), module_methods=("stihc",),
    n_top_maps=1, max_module_genes=30,
)  # fmt: skip


@pytest.fixture(scope="module")
def base_run(tissue, tmp_path_factory):
    """The BASE configuration run once into a fresh folder; tests change copies of it."""
    out = tmp_path_factory.mktemp("base") / "out"
    run_pipeline(tissue, out, PipelineConfig(**BASE), progress=False)
    return out


def _copy_of(base_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(base_run, out)
    return out


def test_changed_parameter_recomputes_only_what_depends_on_it(tissue, base_run, tmp_path):
    out = _copy_of(base_run, tmp_path)
    assert not any(_cached(out).values())  # the first run computed every step
    run_pipeline(tissue, out, PipelineConfig(**BASE), progress=False)
    assert all(_cached(out).values())  # nothing changed: everything restored

    run_pipeline(tissue, out, PipelineConfig(**BASE, fdr=0.1), progress=False)
    recomputed = {name for name, cached in _cached(out).items() if not cached}
    assert recomputed == {"moran", "sparkx", "modules_stihc"}

    run_pipeline(tissue, out, PipelineConfig(**{**BASE, "n_domains": 3}), progress=False)
    recomputed = {name for name, cached in _cached(out).items() if not cached}
    assert recomputed == {"leiden", "domains_cluster", "markers"}

    run_pipeline(tissue, out, PipelineConfig(**BASE), progress=False, force=True)
    assert not any(_cached(out).values())


def test_restored_results_equal_a_fresh_run(tissue, base_run, tmp_path):
    config = PipelineConfig(**{**BASE, "n_domains": 3})
    fresh = run_pipeline(tissue, tmp_path / "fresh", config, progress=False, cache=False)
    assert not (tmp_path / "fresh" / CACHE_FOLDER).exists()
    out = _copy_of(base_run, tmp_path)
    restored = run_pipeline(tissue, out, config, progress=False)
    assert _cached(out)["moran"] and not _cached(out)["leiden"]
    assert _tables(tmp_path / "fresh") == _tables(out)
    for column in ("leiden", "spatial_domain", "low_quality"):
        pd.testing.assert_series_equal(fresh.adata.obs[column], restored.adata.obs[column])
    np.testing.assert_array_equal(fresh.adata.X.toarray(), restored.adata.X.toarray())


def test_changed_input_data_recomputes_everything(tissue, base_run, tmp_path):
    out = _copy_of(base_run, tmp_path)
    other = tissue.copy()
    other.obsm["spatial"] = other.obsm["spatial"] * 1.5
    run_pipeline(other, out, PipelineConfig(**BASE), progress=False)
    assert not any(_cached(out).values())


def test_delta_replays_what_a_step_wrote(tissue):
    data = tissue.copy()
    before = snapshot(data)
    sm.pp.qc_metrics(data)
    sm.pp.normalize(data)
    sm.graph.spatial_neighbors(data)
    delta = delta_since(data, before)
    replayed = tissue.copy()
    apply_delta(replayed, delta)
    assert set(data.obs.columns) == set(replayed.obs.columns)
    np.testing.assert_array_equal(data.X.toarray(), replayed.X.toarray())
    assert (data.obsp["spatial_connectivities"] != replayed.obsp["spatial_connectivities"]).nnz == 0
    assert data.uns["spatiome"].keys() == replayed.uns["spatiome"].keys()


def test_killed_run_resumes_from_its_last_finished_step(tissue, tmp_path):
    source = tmp_path / "tissue.h5ad"
    sm.io.write_h5ad(tissue, source)
    out = tmp_path / "out"
    args = ["run", "--input", str(source), "--out", str(out), "--n-domains", "4", "--svg",
            "moran", "--modules", "none", "--no-progress"]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "spatiome", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cache = out / CACHE_FOLDER

    def finished_entries():
        # a step's entry is written to a hidden temporary (".<key>.pkl.<random>.tmp.pkl")
        # and renamed when whole: only the renamed ones count
        return [p for p in cache.glob("*.pkl") if not p.name.startswith(".")]

    deadline = time.monotonic() + 300
    # the first five steps (qc .. graph) take well under a second; reduce takes seconds
    while time.monotonic() < deadline and process.poll() is None:
        if cache.is_dir() and len(finished_entries()) >= 5:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be killed"
    process.kill()
    process.wait()
    assert not (out / "results.h5ad").exists() and not (out / "report.html").exists()
    entries = finished_entries()
    assert len(entries) >= 5
    for entry in entries:  # every entry left behind is whole
        with entry.open("rb") as handle:
            pickle.load(handle)

    assert main(args) == 0
    cached = _cached(out)
    assert all(cached[s] for s in ("qc", "spatial_qc", "doublets", "normalize", "graph"))
    assert not cached["markers"]  # reached only after the kill
    fresh = tmp_path / "fresh"
    assert main([*args[:4], str(fresh), *args[5:], "--no-cache"]) == 0
    assert _tables(fresh) == _tables(out)
