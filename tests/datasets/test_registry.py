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
    "dlpfc_151674": (3673, 5000),
    "dlpfc_151675": (3592, 7319),
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


def _shared_folder(shared_data: Path, name: str) -> Path:
    """``shared_data/name``; skips the test when that dataset is not there."""
    folder = shared_data / name
    if not folder.is_dir():
        pytest.skip(f"{name} not in {shared_data}")
    return folder


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registered_checksums_match_shared_files(shared_data, name):
    folder = _shared_folder(shared_data, name)
    for file_name, spec in info(name)["files"].items():
        file = folder / file_name
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
    _shared_folder(shared_env, name)
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


DLPFC_LAYERS = {
    # name: (spots per layer_guess, NA spots, one spot and its total UMI over all genes)
    "dlpfc_151673": (
        {"Layer1": 273, "Layer2": 253, "Layer3": 989, "Layer4": 218, "Layer5": 673,
         "Layer6": 692, "WM": 513},
        28,
        ("AAACAAGTATCTCCCA-1", 8458),
    ),
    "dlpfc_151674": (
        {"Layer1": 380, "Layer2": 224, "Layer3": 924, "Layer4": 247, "Layer5": 621,
         "Layer6": 614, "WM": 625},
        38,
        ("AAACAAGTATCTCCCA-1", 10368),
    ),
    "dlpfc_151675": (
        {"Layer1": 328, "Layer2": 275, "Layer3": 771, "Layer4": 275, "Layer5": 732,
         "Layer6": 533, "WM": 652},
        26,
        ("AAACAACGAATAGTTC-1", 1163),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(DLPFC_LAYERS))
def test_dlpfc_labels_and_grid(shared_env, name):
    _shared_folder(shared_env, name)
    layers, n_na, (spot, sum_umi) = DLPFC_LAYERS[name]
    adata = load(name)
    assert adata.obs["layer_guess"].isna().sum() == n_na
    assert set(adata.obs["layer_guess"].dropna().unique()) == {
        *(f"Layer{k}" for k in range(1, 7)),
        "WM",
    }
    assert adata.obs["layer_guess"].value_counts().to_dict() == layers
    for column in info(name)["labels"]:
        assert isinstance(adata.obs[column].dtype, pd.CategoricalDtype), column
        assert adata.obs[column].isna().sum() == n_na, column
    assert {"array_row", "array_col", "sum_umi"} <= set(adata.obs.columns)
    assert ((adata.obs["array_row"] - adata.obs["array_col"]) % 2 == 0).all()
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    assert (totals > 0).all()
    assert (totals <= adata.obs["sum_umi"].to_numpy()).all()  # a gene subset
    assert adata.obs.loc[spot, "sum_umi"] == sum_umi


def test_dlpfc_sections_gene_lists(shared_env):
    genes = {}
    for name in ("dlpfc_151673", "dlpfc_151674", "dlpfc_151675"):
        _shared_folder(shared_env, name)
        table = pd.read_csv(path(name) / "genes.tsv.gz", header=None, sep="\t")
        genes[name] = pd.Index(table[0])
    # 151675 has the 7,319 genes of 151673, in the same order
    assert genes["dlpfc_151675"].equals(genes["dlpfc_151673"])
    # 151674 has its own top 5,000 genes: intersect them for work across the sections
    assert genes["dlpfc_151674"].is_unique and len(genes["dlpfc_151674"]) == 5000
    assert len(genes["dlpfc_151674"].intersection(genes["dlpfc_151673"])) == 3837


def test_dlpfc_sections_registered_alike():
    reference = info("dlpfc_151673")
    banksy = "https://raw.githubusercontent.com/prabhakarlab/Banksy/"
    dmgcn = "https://raw.githubusercontent.com/Jinsl-lab/DMGCN/"
    commits = {
        "dlpfc_151674": "2276ad331791d3894b055abf3478857dc69f5133",
        "dlpfc_151675": "74d245a2e8b3d05f7c04982db9f77bd0078fb3d5",
    }
    for name, commit in commits.items():
        entry = info(name)
        sample = name.split("_")[1]
        assert registry._DATASETS[name].loader is registry._load_dlpfc
        assert (entry["citation"], entry["license"]) == (
            reference["citation"],
            reference["license"],
        )
        assert entry["labels"] == reference["labels"]
        assert list(entry["files"]) == list(reference["files"])  # README.md not registered
        assert f"sample {sample}" in entry["description"]
        assert f"{entry['shape'][0]} spots x {entry['shape'][1]} genes" in entry["description"]
        for file_name in ("matrix.mtx.gz", "genes.tsv.gz", "barcodes.tsv.gz"):
            assert entry["files"][file_name]["upstream"] == [
                f"{banksy}{commit}/data/dlpfc{sample}.rda"
            ]
        metadata = f"{dmgcn}5800638c206b472afc56ced4e4a7dc788d6f3448/data/DLPFC/{sample}/"
        assert entry["files"]["coords.csv"]["upstream"] == [
            f"{metadata}metadata.tsv",
            f"{metadata}spatial/tissue_positions_list.csv",
        ]
        assert entry["files"]["labels.csv"]["upstream"] == [f"{metadata}metadata.tsv"]
        assert all(spec["url"] is None for spec in entry["files"].values())
    table = list_datasets()
    assert {"dlpfc_151673", "dlpfc_151674", "dlpfc_151675"} <= set(table.index)
    assert table.loc["dlpfc_151674", "labels"] == table.loc["dlpfc_151673", "labels"]
    assert not table.loc["dlpfc_151675", "downloadable"]


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
