"""Dataset registry: public datasets, checksums, missing files and downloads."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spatiome._core.validate import SpatiomeInputError
from spatiome.datasets import data_dir, info, list_datasets, load, path, registry

EXPECTED = {
    "mouse_ob_rep11": (262, 16218),
    "breast_cancer_layer2": (251, 14789),
    "seqfish_field43": (257, 249),
    "dlpfc_151673": (3639, 7319),
    "rctd_cerebellum_slideseq": (100, 378),
    "rctd_merfish_hypothalamus": (750, 134),
}


def test_registry_lists_all_datasets_with_checksums():
    table = list_datasets()
    assert set(table.index) == set(EXPECTED)
    for name, shape in EXPECTED.items():
        entry = info(name)
        assert entry["shape"] == shape
        assert (table.loc[name, "n_obs"], table.loc[name, "n_vars"]) == shape
        for file_name, spec in entry["files"].items():
            assert len(spec["sha256"]) == 64 and spec["size"] > 0, file_name
            assert spec["origin"] and spec["upstream"], file_name
            assert all(u.startswith("https://raw.githubusercontent.com/") for u in spec["upstream"])
    with pytest.raises(SpatiomeInputError, match="unknown dataset"):
        info("nope")


def test_registered_checksums_match_shared_files(shared_data):
    for name in EXPECTED:
        for file_name, spec in info(name)["files"].items():
            file = shared_data / name / file_name
            assert file.stat().st_size == spec["size"], file
            assert hashlib.sha256(file.read_bytes()).hexdigest() == spec["sha256"], file


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("SPATIOME_DATA", str(tmp_path / "env"))
    assert data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert data_dir() == tmp_path / "env"
    monkeypatch.delenv("SPATIOME_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_dir() == tmp_path / "cache" / "spatiome"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data_dir() == Path.home() / ".cache" / "spatiome"


@pytest.fixture()
def shared_env(shared_data, monkeypatch):
    monkeypatch.setenv("SPATIOME_DATA", str(shared_data))
    return shared_data


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_load_shapes(shared_env, name):
    adata = load(name, download=False)
    assert adata.shape == EXPECTED[name]
    assert adata.obsm["spatial"].shape == (EXPECTED[name][0], 2)
    assert adata.layers["counts"].dtype.kind == "i"
    assert adata.uns["spatiome"]["dataset"]["name"] == name


def test_mouse_ob_layers(shared_env):
    adata = load("mouse_ob_rep11")
    layer = adata.obs["layer"]
    assert layer.isna().sum() == 2
    assert set(adata.obs_names[layer.isna()]) == {"10.922x17.038", "18.006x20.069"}
    counts = layer.value_counts()
    assert counts["1: Granular Cell Layer"] == 66 and counts["2: Mitral Cell Layer"] == 38
    assert len(counts) == 5
    # coordinates are parsed from the spot ids "<x>x<y>"
    first = adata.obs_names[0]
    assert np.allclose(adata.obsm["spatial"][0], [float(v) for v in first.split("x")])


def test_dlpfc_labels_and_grid(shared_env):
    adata = load("dlpfc_151673")
    assert adata.obs["layer_guess"].isna().sum() == 28
    assert set(adata.obs["layer_guess"].dropna().unique()) == {
        *(f"Layer{k}" for k in range(1, 7)),
        "WM",
    }
    assert {"array_row", "array_col", "sum_umi"} <= set(adata.obs.columns)
    assert ((adata.obs["array_row"] - adata.obs["array_col"]) % 2 == 0).all()
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    assert (totals <= adata.obs["sum_umi"].to_numpy()).all()  # a gene subset
    assert adata.obs.loc["AAACAAGTATCTCCCA-1", "sum_umi"] == 8458


@pytest.mark.parametrize(
    ("name", "shape", "n_types"),
    [("rctd_cerebellum_slideseq", (475, 384), 19), ("rctd_merfish_hypothalamus", (1308, 134), 14)],
)
def test_rctd_reference(shared_env, name, shape, n_types):
    reference = load(name, reference=True)
    assert reference.shape == shape
    assert reference.obs["cell_type"].nunique() == n_types
    assert reference.layers["counts"].dtype.kind == "i"
    spatial = load(name)
    assert len(spatial.var_names.intersection(reference.var_names)) > 100


def test_unknown_loader_option_is_clear(shared_env):
    with pytest.raises(SpatiomeInputError, match="reference=True"):
        load("mouse_ob_rep11", reference=True)


def _copy_dataset(shared_data: Path, name: str, target: Path) -> Path:
    folder = target / name
    folder.mkdir(parents=True)
    for file_name in info(name)["files"]:
        shutil.copyfile(shared_data / name / file_name, folder / file_name)
    return folder


def test_checksum_mismatch_raises(shared_data, tmp_path):
    folder = _copy_dataset(shared_data, "seqfish_field43", tmp_path)
    assert path("seqfish_field43", data_dir=tmp_path, download=False) == folder
    with open(folder / "coords.csv", "a") as handle:
        handle.write("9999,1,1,1,FALSE\n")
    with pytest.raises(SpatiomeInputError, match=r"coords\.csv: sha256 .* does not match"):
        load("seqfish_field43", data_dir=tmp_path, download=False)


def test_verification_is_cached(shared_data, tmp_path, monkeypatch):
    _copy_dataset(shared_data, "seqfish_field43", tmp_path)
    path("seqfish_field43", data_dir=tmp_path)
    calls = []
    monkeypatch.setattr(registry, "_sha256", lambda f: calls.append(f))
    path("seqfish_field43", data_dir=tmp_path)
    assert calls == []


def test_missing_files_name_the_folder(tmp_path):
    with pytest.raises(SpatiomeInputError) as err:
        path("mouse_ob_rep11", data_dir=tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / "mouse_ob_rep11") in message
    assert "counts.csv.gz" in message and "SPATIOME_DATA" in message
    # derived files cannot be downloaded either: same clear error, nothing fetched
    with pytest.raises(SpatiomeInputError, match="cannot be downloaded"):
        path("mouse_ob_rep11", data_dir=tmp_path, download=True)


class _Response(io.BytesIO):
    def __init__(self, payload: bytes):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def _fake_dataset(monkeypatch, payload: bytes, sha: str) -> None:
    fake = registry.Dataset(
        name="toy",
        description="toy",
        shape=(1, 1),
        files={
            "blob.bin": registry.DataFile(
                sha, len(payload), url="https://example.org/blob.bin", origin="test"
            )
        },
        citation="",
        license="",
        loader=lambda folder: None,
    )
    monkeypatch.setitem(registry._DATASETS, "toy", fake)


def test_download_verifies_and_renames_atomically(monkeypatch, tmp_path):
    payload = os.urandom(3 * (1 << 20) + 17)
    _fake_dataset(monkeypatch, payload, hashlib.sha256(payload).hexdigest())
    requested, seen_during_transfer = [], []

    class Watching(_Response):
        def read(self, size=-1):
            # the final name must not appear before the transfer is complete
            seen_during_transfer.append((tmp_path / "toy" / "blob.bin").exists())
            return super().read(size)

    def fake_urlopen(url, *args, **kwargs):
        requested.append(url)
        return Watching(payload)

    updates = []
    import tqdm.auto

    original_update = tqdm.auto.tqdm.update

    def spy_update(self, n=1):
        updates.append(n)
        return original_update(self, n)

    monkeypatch.setattr(registry.urllib.request, "urlopen", fake_urlopen)
    monkeypatch.setattr(tqdm.auto.tqdm, "update", spy_update)
    folder = path("toy", data_dir=tmp_path)
    assert requested == ["https://example.org/blob.bin"]
    assert (folder / "blob.bin").read_bytes() == payload
    assert sum(updates) == len(payload) and len(updates) >= 3
    assert not any(seen_during_transfer)
    assert [p.name for p in folder.iterdir()] == ["blob.bin"]
    # already present and verified: no second request
    path("toy", data_dir=tmp_path)
    assert len(requested) == 1


def test_download_rejects_bad_checksum(monkeypatch, tmp_path):
    payload = b"not the registered bytes"
    _fake_dataset(monkeypatch, payload, "0" * 64)
    monkeypatch.setattr(registry.urllib.request, "urlopen", lambda url, *a, **k: _Response(payload))
    with pytest.raises(SpatiomeInputError, match="expected 0000"):
        path("toy", data_dir=tmp_path)
    assert list((tmp_path / "toy").iterdir()) == []


def test_download_false_does_not_fetch(monkeypatch, tmp_path):
    _fake_dataset(monkeypatch, b"x", hashlib.sha256(b"x").hexdigest())
    monkeypatch.setattr(
        registry.urllib.request, "urlopen", lambda *a, **k: pytest.fail("network used")
    )
    with pytest.raises(SpatiomeInputError, match="download=False"):
        path("toy", data_dir=tmp_path, download=False)


def test_list_datasets_is_a_frame():
    table = list_datasets()
    assert isinstance(table, pd.DataFrame)
    assert {"n_obs", "n_vars", "description", "downloadable"} <= set(table.columns)
