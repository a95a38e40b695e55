"""Run inputs resolved before the first step: dataset names, references, output folder,
and annotations that h5ad cannot store."""

from __future__ import annotations

import datetime
import errno
import os
import time
import warnings
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from spatiome._core.validate import SpatiomeInputError
from spatiome.io import read_h5ad, write_h5ad
from spatiome.workflow import inputs
from spatiome.workflow.inputs import (
    check_output_dir,
    check_writable,
    dataset_name,
    load_reference,
    output_errors,
    reference_files,
    resolve_input,
    resolve_reference,
)

MERFISH = "rctd_merfish_hypothalamus"


@pytest.fixture
def shared_env(shared_data, monkeypatch):
    monkeypatch.setenv("SPATIOME_DATA", str(shared_data))
    return shared_data


# --- inputs ----------------------------------------------------------------------------


def test_dataset_name_only_for_bare_registered_names(tmp_path):
    assert dataset_name("mouse_ob_rep11") == "mouse_ob_rep11"
    assert dataset_name("mouse_ob") is None
    assert dataset_name("data/mouse_ob_rep11") is None
    assert dataset_name(tmp_path / "mouse_ob_rep11", base=tmp_path) == "mouse_ob_rep11"
    assert dataset_name(tmp_path / "sub" / "mouse_ob_rep11", base=tmp_path) is None


def test_registered_name_resolves_to_the_verified_folder(shared_env):
    source = resolve_input("mouse_ob_rep11")
    assert source.dataset == "mouse_ob_rep11"
    assert source.path == shared_env / "mouse_ob_rep11"


def test_existing_path_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mouse_ob_rep11").mkdir()
    source = resolve_input("mouse_ob_rep11")
    assert source.dataset is None and source.path == Path("mouse_ob_rep11")


def test_config_relative_name_resolves_against_its_folder(shared_env, tmp_path):
    source = resolve_input(tmp_path / "mouse_ob_rep11", base=tmp_path)
    assert source.dataset == "mouse_ob_rep11"
    (tmp_path / "local.h5ad").write_text("")
    assert resolve_input("local.h5ad", base=tmp_path).path == tmp_path / "local.h5ad"


@pytest.mark.parametrize(
    ("text", "close"), [("mouse_ob", "mouse_ob_rep11"), ("dlpfc_15167", "dlpfc_151673")]
)
def test_unknown_input_lists_close_names(text, close):
    with pytest.raises(SpatiomeInputError) as err:
        resolve_input(text)
    message = str(err.value)
    assert f"input {text}: no such file or folder" in message
    assert repr(close) in message and "spatiome datasets list" in message


def test_unrelated_unknown_input_still_points_to_the_list():
    with pytest.raises(SpatiomeInputError, match="spatiome datasets list") as err:
        resolve_input("/nowhere/at/all.h5ad")
    assert "did you mean" not in str(err.value)


# --- references ------------------------------------------------------------------------


def _tables(
    folder: Path, counts_name="reference_counts.csv", labels_name="reference_celltypes.csv"
):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / counts_name).write_text("cell,Gad1,Slc17a7\nc1,5,0\nc2,0,7\nc3,4,1\n")
    (folder / labels_name).write_text("cell,celltype\nc1,Inh\nc2,Exc\nc3,Inh\n")
    return folder / counts_name, folder / labels_name


def _config(reference, labels="cell_type"):
    return SimpleNamespace(
        reference=None if reference is None else str(reference), reference_labels=labels
    )


def test_reference_folder_pair_and_files_are_recorded(tmp_path):
    counts, labels = _tables(tmp_path / "ref")
    for given in (tmp_path / "ref", f"{counts},{labels}", f"{counts}, {labels}"):
        reference = load_reference(_config(given))
        assert reference.obs["cell_type"].tolist() == ["Inh", "Exc", "Inh"]
        assert reference_files(reference) == [counts.resolve(), labels.resolve()]
        record = reference.uns["spatiome"]["reference"]
        assert record["kind"] == "tables" and record["given"] == str(given)
    assert load_reference(_config(None)) is None


def test_reference_label_key_follows_reference_labels(tmp_path):
    counts, labels = _tables(tmp_path)
    labels.write_text("cell,subclass,celltype\nc1,A,Inh\nc2,B,Exc\nc3,A,Inh\n")
    reference = load_reference(_config(tmp_path, labels="subclass"))
    assert reference.obs["subclass"].tolist() == ["A", "B", "A"]
    assert load_reference(_config(tmp_path)).obs["cell_type"].tolist() == ["Inh", "Exc", "Inh"]


def test_reference_pair_relative_to_a_config_folder(tmp_path):
    _tables(tmp_path / "ref")
    source = resolve_reference(
        str(tmp_path / "ref/reference_counts.csv") + ",ref/reference_celltypes.csv", base=tmp_path
    )
    assert source.files == (
        tmp_path / "ref/reference_counts.csv",
        tmp_path / "ref/reference_celltypes.csv",
    )
    assert resolve_reference(source.text).files == source.files


def test_reference_h5ad_and_missing_label_column(tmp_path):
    reference = ad.AnnData(
        np.array([[1, 0], [0, 2]], dtype=np.float32),
        obs=pd.DataFrame({"CellType": ["A", "B"]}, index=["c1", "c2"]),
    )
    reference.write_h5ad(tmp_path / "atlas.h5ad")
    with pytest.raises(SpatiomeInputError, match="--reference-labels CellType") as err:
        load_reference(_config(tmp_path / "atlas.h5ad"))
    assert "atlas.h5ad" in str(err.value)
    loaded = load_reference(_config(tmp_path / "atlas.h5ad", labels="CellType"))
    assert reference_files(loaded) == [(tmp_path / "atlas.h5ad").resolve()]
    # a folder holding one .h5ad is that reference
    assert resolve_reference(str(tmp_path)).files == (tmp_path / "atlas.h5ad",)


def test_reference_table_alone_names_the_pair_that_works(tmp_path):
    counts, labels = _tables(tmp_path)
    with pytest.raises(SpatiomeInputError) as err:
        resolve_reference(str(counts))
    message = str(err.value)
    assert f"--reference {counts},{labels}" in message
    assert f"--reference {tmp_path}" in message


def test_reference_folder_without_layout_lists_its_files(tmp_path):
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "expression.csv").write_text("")
    with pytest.raises(SpatiomeInputError) as err:
        resolve_reference(str(tmp_path))
    message = str(err.value)
    assert "'expression.csv'" in message and "'notes.txt'" in message
    assert "--reference COUNTS,LABELS" in message
    _tables(tmp_path, labels_name="annotation_of_cells.csv")
    with pytest.raises(SpatiomeInputError, match="annotation_of_cells.csv") as err:
        resolve_reference(str(tmp_path))
    assert f"--reference {tmp_path / 'reference_counts.csv'}," in str(err.value)


def test_reference_pair_errors(tmp_path):
    counts, labels = _tables(tmp_path)
    with pytest.raises(SpatiomeInputError, match="count table comes first") as err:
        resolve_reference(f"{labels},{counts}")
    assert f"--reference {counts},{labels}" in str(err.value)
    with pytest.raises(SpatiomeInputError, match="absent.csv not found") as err:
        resolve_reference(f"{counts},{tmp_path / 'absent.csv'}")
    assert "reference_celltypes.csv" in str(err.value)
    with pytest.raises(SpatiomeInputError, match="two paths"):
        resolve_reference(f"{counts},{labels},{labels}")


def test_reference_names(shared_env):
    assert resolve_reference(MERFISH).dataset == MERFISH
    with pytest.raises(SpatiomeInputError, match="has no single-cell reference") as err:
        resolve_reference("mouse_ob_rep11")
    assert "--reference rctd_cerebellum_slideseq" in str(err.value)
    with pytest.raises(SpatiomeInputError, match=f"did you mean '{MERFISH}'"):
        resolve_reference("rctd_merfish")


def test_shipped_reference_three_ways_agree(shared_env):
    folder = shared_env / MERFISH
    given = [
        MERFISH,
        folder,
        f"{folder / 'reference_counts.csv.gz'},{folder / 'reference_celltypes.csv'}",
    ]
    loaded = [load_reference(_config(g)) for g in given]
    for reference in loaded:
        assert reference.shape == (1308, 134)
        assert reference.obs["cell_type"].nunique() == 14
        assert [f.name for f in reference_files(reference)] == [
            "reference_counts.csv.gz",
            "reference_celltypes.csv",
        ]
        assert (reference.X != loaded[0].X).nnz == 0
    assert loaded[0].uns["spatiome"]["reference"]["dataset"] == MERFISH


# --- output folder ---------------------------------------------------------------------


def test_output_folder_is_created_and_probed(tmp_path):
    out = check_output_dir(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []


def test_output_that_is_a_file_or_under_a_file(tmp_path):
    (tmp_path / "report.html").write_text("")
    with pytest.raises(SpatiomeInputError, match="is a file") as err:
        check_output_dir(tmp_path / "report.html")
    assert str(tmp_path / "report.html") in str(err.value) and "--out" in str(err.value)
    with pytest.raises(SpatiomeInputError, match="cannot be created") as err:
        check_output_dir(tmp_path / "report.html" / "run")
    assert str(tmp_path / "report.html") in str(err.value)


def test_unwritable_output_folder_simulated(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(inputs.tempfile, "mkstemp", denied)
    with pytest.raises(SpatiomeInputError, match="permission denied writing") as err:
        check_output_dir(tmp_path)
    assert str(tmp_path) in str(err.value) and "--out" in str(err.value)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="file permissions do not stop root; the simulated test above covers the message",
)
def test_unwritable_output_folder_real(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(SpatiomeInputError, match="permission denied"):
            check_output_dir(locked / "run")
    finally:
        locked.chmod(0o700)


def test_low_free_space_warns(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(inputs.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 5 * 10**6))
    with pytest.warns(UserWarning, match="only 5 MB free"):
        check_output_dir(tmp_path)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.ENOSPC, "no space left on device writing /out/results.h5ad"),
        (errno.EACCES, "permission denied writing /out/results.h5ad"),
        (errno.EROFS, "read-only file system at /out/results.h5ad"),
        (errno.EIO, "cannot write /out/results.h5ad"),
    ],
)
def test_output_errors_are_one_clear_line(code, expected):
    with pytest.raises(SpatiomeInputError, match=expected) as err:
        with output_errors("/out"):
            raise OSError(code, os.strerror(code), "/out/results.h5ad")
    assert "\n" not in str(err.value) and "--out" in str(err.value)


def test_h5py_style_full_disk_message_is_recognised():
    with pytest.raises(SpatiomeInputError, match="no space left on device writing /out"):
        with output_errors("/out"):
            raise OSError("Can't write data (file write failed: No space left on device)")


# --- annotations h5ad cannot store ---------------------------------------------------


def _tissue(n=4) -> ad.AnnData:
    adata = ad.AnnData(np.arange(n * 2, dtype=np.float32).reshape(n, 2))
    adata.obs_names = [f"s{i}" for i in range(n)]
    return adata


def test_mixed_ints_and_strings_become_strings_and_write(tmp_path):
    adata = _tissue()
    adata.obs["batch"] = pd.Series([1, "b", 2, None], index=adata.obs_names, dtype=object)
    adata.var["chrom"] = pd.Series([1, "X"], index=adata.var_names, dtype=object)
    with pytest.raises(TypeError):
        adata.copy().write_h5ad(tmp_path / "before.h5ad")
    with pytest.warns(UserWarning) as caught:
        changes = check_writable(adata)
    assert [str(w.message) for w in caught] == changes
    assert changes == [
        "adata.obs['batch'] mixes int and str values: stored as strings",
        "adata.var['chrom'] mixes int and str values: stored as strings",
    ]
    assert adata.obs["batch"].tolist()[:3] == ["1", "b", "2"]
    assert pd.isna(adata.obs["batch"].iloc[3])
    write_h5ad(adata, tmp_path / "after.h5ad")
    back = read_h5ad(tmp_path / "after.h5ad")
    assert back.obs["batch"].astype(str).tolist()[:3] == ["1", "b", "2"]
    assert back.var["chrom"].astype(str).tolist() == ["1", "X"]


@pytest.mark.parametrize(
    ("values", "dtype_kind", "change"),
    [
        ([1, 2, 3, 4], "i", "numbers in an object column"),
        ([1.5, None, 3, 4], "f", "numbers in an object column"),
        ([True, False, True, True], "b", "booleans"),
        ([None, None, None, None], "f", "only missing values"),
        ([True, "x", 2.5, "y"], "O", "mixes"),
    ],
)
def test_object_columns_are_made_storable(tmp_path, values, dtype_kind, change):
    adata = _tissue()
    adata.obs["c"] = pd.Series(values, index=adata.obs_names, dtype=object)
    with pytest.warns(UserWarning, match=change):
        check_writable(adata)
    assert adata.obs["c"].dtype.kind == dtype_kind
    write_h5ad(adata, tmp_path / "x.h5ad")


def test_other_unstorable_annotations_are_converted(tmp_path):
    adata = _tissue()
    adata.obs["mixed_categories"] = pd.Categorical([1, "a", 1, "a"])
    adata.obs["when"] = pd.to_datetime(["2024-01-02"] * 4)
    adata.obs[0] = 1.0
    adata.obsm["table"] = pd.DataFrame({"m": [1, "a", 2, "b"]}, index=adata.obs_names)
    adata.uns["params"] = {
        "shape": (3, 4),
        "path": Path("/data/x"),
        "day": datetime.date(2024, 1, 2),
        "tags": {"b", "a"},
        "ok": ["a", "b"],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        changes = check_writable(adata)
    assert len(changes) == 8
    assert adata.obs["mixed_categories"].cat.categories.tolist() == ["1", "a"]
    assert adata.uns["params"]["shape"] == [3, 4] and adata.uns["params"]["tags"] == ["a", "b"]
    write_h5ad(adata, tmp_path / "x.h5ad")
    back = read_h5ad(tmp_path / "x.h5ad")
    assert back.uns["params"]["path"] == "/data/x" and back.uns["params"]["day"] == "2024-01-02"
    assert check_writable(back) == []


def test_storable_input_is_left_alone(tmp_path):
    adata = _tissue()
    adata.obs["label"] = pd.Categorical(["a", "b", "a", None])
    adata.obs["name"] = ["x", "y", None, "z"]
    adata.obs["count"] = pd.array([1, None, 3, 4], dtype="Int64")
    adata.uns["spatiome"] = {"source": {"paths": ["/a", "/b"]}}
    before = adata.obs.copy()
    assert check_writable(adata) == []
    pd.testing.assert_frame_equal(adata.obs, before)


def test_unconvertible_values_raise_one_clear_error():
    adata = _tissue()
    adata.obs["spots"] = pd.Series([[1], [2], [3], [4]], index=adata.obs_names, dtype=object)
    with pytest.raises(SpatiomeInputError, match=r"adata.obs\['spots'\] holds list values"):
        check_writable(adata)
    adata = _tissue()
    adata.uns["records"] = [{"a": 1}, {"a": 2}]
    with pytest.raises(SpatiomeInputError, match=r"adata.uns\['records'\] is a list holding dict"):
        check_writable(adata)


def test_convert_false_raises_instead():
    adata = _tissue()
    adata.obs["batch"] = pd.Series([1, "b", 2, "c"], index=adata.obs_names, dtype=object)
    with pytest.raises(SpatiomeInputError, match="cannot be written to .h5ad"):
        check_writable(adata, convert=False)
    assert adata.obs["batch"].tolist() == [1, "b", 2, "c"]


def test_check_writable_is_fast_on_a_large_obs():
    n = 200_000
    adata = ad.AnnData(obs=pd.DataFrame(index=[f"s{i}" for i in range(n)]))
    mixed = np.empty(n, dtype=object)
    mixed[::2], mixed[1::2] = 1, "a"
    adata.obs["batch"] = mixed
    adata.obs["name"] = np.array(["x"] * n, dtype=object)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_writable(adata)
    assert time.perf_counter() - started < 5
    assert adata.obs["batch"].iloc[:2].tolist() == ["1", "a"]
