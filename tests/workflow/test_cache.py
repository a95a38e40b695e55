"""The step cache: changed parameters recompute only their dependents; killed runs resume."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import stat
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import spatiome as sm
from spatiome._core.files import current_umask
from spatiome.cli import main
from spatiome.workflow import PipelineConfig, run_pipeline
from spatiome.workflow._archive import ArchiveFormatError, read_archive
from spatiome.workflow.cache import (
    CACHE_FOLDER,
    ENTRY_SUFFIX,
    Delta,
    StepCache,
    apply_delta,
    delta_since,
    snapshot,
)


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

    # the neighbourhood and interaction steps, where a run has them, read the domains (and
    # interactions reads fdr)
    steps = set(_cached(out))
    run_pipeline(tissue, out, PipelineConfig(**BASE, fdr=0.1), progress=False)
    recomputed = {name for name, cached in _cached(out).items() if not cached}
    assert recomputed == {"moran", "sparkx", "modules_stihc"} | ({"interactions"} & steps)

    run_pipeline(tissue, out, PipelineConfig(**{**BASE, "n_domains": 3}), progress=False)
    recomputed = {name for name, cached in _cached(out).items() if not cached}
    readers = {"neighbourhoods", "interactions"} & steps
    assert recomputed == {"leiden", "domains_cluster", "markers"} | readers

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


def test_delta_replays_what_a_step_wrote(tissue, tmp_path):
    data = tissue.copy()
    before = snapshot(data)
    sm.pp.qc_metrics(data)
    sm.pp.normalize(data)
    sm.graph.spatial_neighbors(data)
    cache = StepCache(tmp_path)
    cache.save("k", delta_since(data, before), None)
    delta, _ = cache.load("k")
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
        # a step's entry is written to a hidden temporary (".<key>.zip.<random>.tmp.zip")
        # and renamed when whole: only the renamed ones count
        return [p for p in cache.glob(f"*{ENTRY_SUFFIX}") if not p.name.startswith(".")]

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
        assert set(read_archive(entry)) >= {"delta.obs", "value"}

    assert main(args) == 0
    cached = _cached(out)
    assert all(cached[s] for s in ("qc", "spatial_qc", "doublets", "normalize", "graph"))
    assert not cached["markers"]  # reached only after the kill
    fresh = tmp_path / "fresh"
    assert main([*args[:4], str(fresh), *args[5:], "--no-cache"]) == 0
    assert _tables(fresh) == _tables(out)


class _CreatesFileWhenUnpickled:
    """Unpickling this runs ``open(path, "w")``: the shape of a malicious cache entry."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _malicious_pickle(path) -> bytes:
    return pickle.dumps(_CreatesFileWhenUnpickled(path))


def test_the_malicious_pickle_is_live(tmp_path):
    """The payload of the next tests does run code when unpickled (so they test something)."""
    pickle.loads(_malicious_pickle(tmp_path / "ran"))
    assert (tmp_path / "ran").exists()


def test_planted_pickles_are_never_unpickled(tissue, base_run, tmp_path, caplog):
    out = _copy_of(base_run, tmp_path)
    marker = tmp_path / "code_ran"
    entries = sorted((out / CACHE_FOLDER).glob(f"*{ENTRY_SUFFIX}"))
    assert len(entries) == len(_cached(out))
    for number, entry in enumerate(entries):
        if number % 2:  # a pickle in place of an entry
            entry.write_bytes(_malicious_pickle(marker))
        else:  # a pickle where an earlier spatiome kept the entry
            entry.with_suffix(".pkl").write_bytes(_malicious_pickle(marker))
            entry.unlink()
    with caplog.at_level(logging.WARNING, logger="spatiome"):
        run_pipeline(tissue, out, PipelineConfig(**BASE), progress=False)
    assert not marker.exists()
    assert not any(_cached(out).values())
    unreadable = [r for r in caplog.records if "is unreadable" in r.getMessage()]
    assert len(unreadable) == len(entries) // 2
    assert _tables(out) == _tables(base_run)


def test_truncated_or_corrupted_entry_is_recomputed_with_a_warning(tmp_path, caplog):
    cache = StepCache(tmp_path)
    delta = Delta(obs={"score": pd.Series(np.arange(50.0), index=[f"s{i}" for i in range(50)])})
    for key, damage in (("cut", lambda b: b[: len(b) // 2]), ("flip", lambda b: b[:-30]
                        + bytes(30)), ("empty", lambda b: b"")):  # fmt: skip
        cache.save(key, delta, ["note"])
        path = cache.path(key)
        path.write_bytes(damage(path.read_bytes()))
        with caplog.at_level(logging.WARNING, logger="spatiome"):
            assert cache.load(key) is None
        assert f"cache entry {path.name} is unreadable" in caplog.text


def test_an_entry_restores_every_kind_of_step_output(tmp_path):
    names = pd.Index([f"s{i}" for i in range(6)])
    table = pd.DataFrame({"statistic": [0.5, 0.2], "qval": [0.01, 0.3]}, index=["g1", "g2"])
    table.attrs["note"] = "2 markers"
    delta = Delta(
        obs={
            "domain": pd.Series(pd.Categorical(list("aabbcc")), index=names, name="domain"),
            "low_quality": pd.Series([True, False] * 3, index=names, name="low_quality"),
            "label": pd.Series(["x", np.nan, "y"] * 2, index=names, name="label"),
        },
        var={"moran_I": pd.Series([0.1, 0.2], index=["g1", "g2"], name="moran_I")},
        x=sp.random(6, 2, density=0.5, format="csr", dtype=np.float32, random_state=0),
        slots={
            "obsm": {
                "X_pca": np.ones((6, 3), np.float32),
                "props": pd.DataFrame({"t1": np.linspace(0, 1, 6)}, index=names),
            },
            "obsp": {"spatial_connectivities": sp.eye(6, format="csr")},
            "varm": {},
            "layers": {"smoothed": sp.csc_matrix(np.eye(6, 2))},
        },  # fmt: skip
        uns={
            "moranI": table,
            "params": {"n": 3, "fdr": 0.05, "methods": ["a", "b"]},
            "genes": np.array(["g1", "g2"], dtype=object),
            "seed": np.int64(0),
        },  # fmt: skip
        spatiome_uns={"normalize": {"method": "log1p", "target_sum": None}},
        x_digest="abc",
        record={"host": "h", "seconds": 1.5, "log": ["line 1", "line 2"]},
    )
    value = (table, ["note"], 7, None, {"n_domains": (4, ["chosen"])})
    cache = StepCache(tmp_path)
    cache.save("k", delta, value)
    restored, restored_value = cache.load("k")

    for column in ("obs", "var"):
        for name, series in getattr(delta, column).items():
            pd.testing.assert_series_equal(getattr(restored, column)[name], series)
    assert type(restored.x) is type(delta.x) and (restored.x != delta.x).nnz == 0
    np.testing.assert_array_equal(restored.slots["obsm"]["X_pca"], delta.slots["obsm"]["X_pca"])
    pd.testing.assert_frame_equal(restored.slots["obsm"]["props"], delta.slots["obsm"]["props"])
    assert restored.slots["layers"]["smoothed"].format == "csc"
    pd.testing.assert_frame_equal(restored.uns["moranI"], table)
    assert restored.uns["moranI"].attrs == {"note": "2 markers"}
    assert restored.uns["params"] == delta.uns["params"]
    assert restored.uns["genes"].dtype == object and list(restored.uns["genes"]) == ["g1", "g2"]
    assert type(restored.uns["seed"]) is np.int64
    assert restored.spatiome_uns == delta.spatiome_uns
    assert (restored.x_digest, restored.record) == (delta.x_digest, delta.record)
    pd.testing.assert_frame_equal(restored_value[0], table)
    assert restored_value[1:] == value[1:]


@pytest.mark.parametrize(
    ("where", "delta", "value"),
    [
        ("value[1]", Delta(), ["notes", {"a", "set"}]),
        ("delta.uns['model']", Delta(uns={"model": object()}), None),
        ("delta.slots['obsm']['mixed']",
         Delta(slots={"obsm": {"mixed": np.array([1, "a"], dtype=object)}}), None),
        ("delta.uns['table']", Delta(uns={"table": pd.DataFrame({"lists": [[1], [2]]})}), None),
    ],
)  # fmt: skip
def test_what_the_format_cannot_hold_is_an_error_when_saved(tmp_path, where, delta, value):
    cache = StepCache(tmp_path)
    with pytest.raises(ArchiveFormatError, match=rf"{re.escape(where)} .*without pickle"):
        cache.save("k", delta, value)
    assert list(tmp_path.iterdir()) == []  # neither the entry nor its temporary


def test_entries_are_readable_by_the_group(tmp_path):
    cache = StepCache(tmp_path)
    cache.save("k", Delta(), None)
    assert cache.path("k").suffix == ENTRY_SUFFIX
    assert stat.S_IMODE(os.stat(cache.path("k")).st_mode) == 0o666 & ~current_umask()
