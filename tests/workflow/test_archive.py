"""The pickle-free archive of the step cache: every supported value comes back as it went in."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from spatiome.workflow._archive import ArchiveFormatError, read_archive, write_archive

_NAMES = pd.Index(["r1", "r2", "r3"], name="gene")
_TABLE = pd.DataFrame(
    {
        "float": [1.0, 2.0, np.nan],
        "float32": np.float32([1, 2, 3]),
        "int8": np.int8([1, 2, 3]),
        "bool": [True, False, True],
        "ordered": pd.Categorical(["x", "y", "x"], categories=["y", "x"], ordered=True),
        "int_categories": pd.Categorical([1, 2, 1]),
        "categorical_with_missing": pd.Categorical(["a", None, "b"]),
        "strings": ["u", "v", "w"],
        "strings_with_nan": ["a", np.nan, "b"],
        "nullable_int": pd.array([1, None, 3], dtype="Int64"),
        "nullable_bool": pd.array([True, None, False], dtype="boolean"),
        "nullable_string": pd.array(["a", None, "c"], dtype="string"),
        "dates": pd.date_range("2020-01-01", periods=3),
    },
    index=_NAMES,
)

VALUES = {
    "json scalars": [1, 2.5, None, True, "x", float("inf")],
    "nested containers": {"a": [1, (2, "b")], 3: {"c": ()}, None: [], 1.5: {}},
    "numpy scalars": (np.float32(1.5), np.int64(3), np.bool_(True), np.str_("s"), np.uint8(7)),
    "other numpy scalars": (np.complex128(1 + 2j), np.datetime64("2020-01-01"), np.float16(2)),
    "table": _TABLE,
    "integer columns": pd.DataFrame(np.eye(2)),
    "multiindex": _TABLE.iloc[:, :2].set_axis(
        pd.MultiIndex.from_tuples([("a", 1), ("a", 2), ("b", 1)], names=["x", "y"])
    ),
    "multiindex columns": _TABLE.iloc[:, :2].set_axis(
        pd.MultiIndex.from_tuples([("a", 1), ("b", 1)]), axis=1
    ),
    "empty table": pd.DataFrame(),
    "empty columns": pd.DataFrame(columns=["a", "b"]),
    "series": pd.Series([1, 2], index=["a", "b"], name="n"),
    "unnamed series": pd.Series([0.5, 1.5]),
    "index": pd.Index(["x", "y"], name="genes"),
    "range index": pd.RangeIndex(2, 10, 2),
    "categorical": pd.Categorical(["a", "b", "a"], ordered=True),
    "obs columns": {"f": _TABLE["float"], "c": _TABLE["ordered"], "s": _TABLE["strings_with_nan"]},
    "series on different indexes": {"a": pd.Series([1.0]), "b": pd.Series([2.0], index=[5])},
    "float array": np.linspace(0, 1, 12).reshape(3, 4),
    "fortran array": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
    "empty array": np.zeros((0, 4)),
    "string array": np.array(["a", "bb"]),
    "object string array": np.array(["a", "bb"], dtype=object),
    "record array (scanpy's rank_genes_groups)": np.rec.fromarrays(
        [np.array(["g1", "g2"], dtype=object), np.float32([1.5, 0.5])], names=["0", "1"]
    ),
    "structured array": np.array([(1, 2.5)], dtype=[("a", "i4"), ("b", "f8")]),
    "numpy matrix": np.eye(2).view(np.matrix),
    "csr matrix": sp.random(5, 4, density=0.4, format="csr", dtype=np.float32, random_state=0),
    "csc array": sp.csc_array(np.eye(3)),
    "coo matrix": sp.coo_matrix(np.eye(3, 4)),
    "int64 indices": sp.csr_matrix(
        (np.ones(2), np.array([0, 1], np.int64), np.array([0, 1, 2], np.int64)), shape=(2, 2)
    ),
}
_TABLE_WITH_ATTRS = _TABLE.iloc[:, :2].copy()
_TABLE_WITH_ATTRS.attrs = {"note": "2 markers", "n": np.int64(2)}
VALUES["table with attrs"] = _TABLE_WITH_ATTRS


def assert_same(left, right) -> None:
    assert type(left) is type(right), (type(left), type(right))
    if isinstance(left, pd.DataFrame):
        pd.testing.assert_frame_equal(left, right, check_index_type=True, check_column_type=True)
        assert left.attrs.keys() == right.attrs.keys()
        for key in left.attrs:
            assert_same(left.attrs[key], right.attrs[key])
    elif isinstance(left, pd.Series):
        pd.testing.assert_series_equal(left, right, check_index_type=True)
        assert_same(left.tolist(), right.tolist())  # None stays None and NaN stays NaN
    elif isinstance(left, pd.Index):
        pd.testing.assert_index_equal(left, right, exact=True)
    elif isinstance(left, pd.Categorical):
        pd.testing.assert_series_equal(pd.Series(left), pd.Series(right))
    elif sp.issparse(left):
        assert left.format == right.format and left.shape == right.shape
        assert left.dtype == right.dtype and (left != right).nnz == 0
        if left.format in ("csr", "csc"):
            assert left.indices.dtype == right.indices.dtype
    elif isinstance(left, np.ndarray):
        assert left.dtype == right.dtype
        np.testing.assert_array_equal(left, right)
        for field in left.dtype.names or ():
            assert_same(left[field].tolist(), right[field].tolist())
    elif isinstance(left, dict):
        assert list(left) == list(right)
        for key in left:
            assert_same(left[key], right[key])
    elif isinstance(left, list | tuple):
        assert len(left) == len(right)
        for a, b in zip(left, right, strict=True):
            assert_same(a, b)
    elif isinstance(left, float | np.floating) and np.isnan(left):
        assert np.isnan(right)
    else:
        assert left == right


@pytest.mark.parametrize("name", list(VALUES))
def test_round_trip(name, tmp_path):
    path = tmp_path / "entry.zip"
    write_archive(path, {"value": VALUES[name]})
    assert_same(VALUES[name], read_archive(path)["value"])


def test_an_archive_holds_only_json_npy_and_arrow(tmp_path):
    path = tmp_path / "entry.zip"
    write_archive(path, {"values": VALUES})
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        json.loads(zf.read("manifest.json"))
    assert {name.rsplit(".", 1)[-1] for name in names} == {"json", "npy", "arrow"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({1, 2}, r"value\[1\] is a builtins.set"),
        (np.array([1, "a"], dtype=object), r"value\[1\] is an array of Python objects \(int\)"),
        (pd.DataFrame({"x": [[1], [2]]}), r"value\[1\] has column 'x' of Python objects"),
        (pd.DataFrame({"x": [1, "a"]}), r"value\[1\] has column 'x' of Python objects"),
        (pd.DataFrame([[1, 2]], columns=["a", "a"]), r"value\[1\] is a table Arrow cannot"),
        ({(1, 2): 3}, r"value\[1\] has a key of type tuple"),
        (np.ma.array([1, 2]), r"value\[1\] is a MaskedArray"),
        (pd.Series([1], name=("a", 1)), r"value\[1\].name is named \('a', 1\)"),
    ],
)
def test_unsupported_values_are_an_error_that_says_where(tmp_path, value, message):
    with pytest.raises(ArchiveFormatError, match=message):
        write_archive(tmp_path / "entry.zip", {"value": ["fine", value]})


def test_a_foreign_zip_is_not_read(tmp_path):
    path = tmp_path / "entry.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("manifest.json", json.dumps({"format": "other", "values": {}}))
    with pytest.raises(ValueError, match="is not a spatiome-archive"):
        read_archive(path)


def test_an_unknown_node_is_not_read(tmp_path):
    path = tmp_path / "entry.zip"
    manifest = {"format": "spatiome-archive", "version": 1, "values": {"v": {"type": "pickle"}}}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
    with pytest.raises(ValueError, match="unknown node type 'pickle'"):
        read_archive(path)
