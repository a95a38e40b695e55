"""A pickle-free archive of nested Python values: one zip file of JSON, npy and Arrow members.

The step cache stores what a step wrote into an AnnData and what it returned. Those are
nested dicts, lists and tuples of strings, numbers, numpy arrays, scipy sparse matrices and
pandas tables, so one zip file holds them all:

- ``manifest.json``: the structure (containers, scalars, and which member holds each array
  or table), a format name and a version;
- ``arrays/<n>.npy``: numpy arrays (sparse matrices as their component arrays), written and
  read with ``allow_pickle=False``;
- ``tables/<n>.arrow``: pandas DataFrames, Series and Index objects as Arrow IPC files
  (Feather v2, zstd-compressed), which keep categoricals, nullable and string dtypes.

Reading never unpickles: the manifest is JSON, arrays are read with ``allow_pickle=False``
and Arrow builds only the types it knows. A value this format cannot hold (a set, a custom
object, a column of Python lists, ...) raises :class:`ArchiveFormatError` when written, so
nothing is silently turned into something else.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
import scipy.sparse as sp

FORMAT_NAME = "spatiome-archive"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

#: Compression of the npy members (Arrow members are compressed by Arrow itself).
ARRAY_COMPRESSION = zipfile.ZIP_DEFLATED
ARRAY_COMPRESSLEVEL = 1
TABLE_COMPRESSION = "zstd"

_JSON_SCALARS = (str, int, float, bool, type(None))
#: numpy scalar kinds whose ``.item()`` converts to JSON and back without loss
_EXACT_SCALAR_KINDS = "biuf"
_SPARSE_PARTS = ("data", "indices", "indptr")
#: ndarray subclasses stored as plain arrays and restored as views
_ARRAY_VIEWS = {"recarray": np.recarray, "matrix": np.matrix}
#: pyarrow releases before 14.0.1 unpickle "arrow.py_extension_type" fields on read
_SAFE_PYARROW = (14, 0, 1)


class ArchiveFormatError(TypeError):
    """A value the archive cannot hold without pickling it."""


def write_archive(path: str | os.PathLike[str], values: dict[str, Any]) -> None:
    """Write ``values`` (a dict of named values) to a new archive at ``path``.

    Raises
    ------
    ArchiveFormatError
        If some value nested in ``values`` is of a type the archive cannot hold; the
        message says where it is and which types are supported.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "entry.zip"
    >>> write_archive(path, {"notes": ["two domains"], "n": (2, np.arange(3))})
    >>> read_archive(path)["n"]
    (2, array([0, 1, 2]))
    """
    with zipfile.ZipFile(path, "w", ARRAY_COMPRESSION, compresslevel=ARRAY_COMPRESSLEVEL) as zf:
        writer = _Writer(zf)
        nodes = {name: writer.encode(value, name) for name, value in values.items()}
        manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "values": nodes}
        zf.writestr(MANIFEST, json.dumps(manifest))


def read_archive(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the values :func:`write_archive` wrote to ``path``.

    Raises
    ------
    ValueError
        If ``path`` is not an archive of this format and version (``zipfile.BadZipFile``,
        a subclass, when the file is truncated or corrupted).
    """
    _check_pyarrow()
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read(MANIFEST))
        if manifest.get("format") != FORMAT_NAME or manifest.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{os.fspath(path)} is not a {FORMAT_NAME} archive of version {FORMAT_VERSION}"
            )
        reader = _Reader(zf)
        return {name: reader.decode(node) for name, node in manifest["values"].items()}


def _check_pyarrow() -> None:
    version = tuple(int(part) for part in pa.__version__.split(".")[:3] if part.isdigit())
    if version < _SAFE_PYARROW:
        raise ValueError(
            f"pyarrow {pa.__version__} may run code while reading Arrow files; "
            "install pyarrow >= 14.0.1 to read stored results"
        )


_SUPPORTED = (
    "dicts, lists and tuples of str, int, float, bool, None, numpy scalars and arrays "
    "(not of Python objects), scipy sparse matrices, and pandas DataFrames, Series and "
    "Index objects (columns of numbers, strings, categoricals or nullable types)"
)


def _unsupported(where: str, what: str, fix: str = f"store {_SUPPORTED}") -> ArchiveFormatError:
    return ArchiveFormatError(f"{where} {what}, which cannot be stored without pickle; {fix}")


class _Writer:
    """Encodes values into JSON nodes and members of an open zip file."""

    def __init__(self, zf: zipfile.ZipFile) -> None:
        self.zf = zf
        self.n_members = 0

    def encode(self, value: Any, where: str) -> Any:
        if type(value) in _JSON_SCALARS:
            return value
        for kind, encode in self._encoders():
            if isinstance(value, kind):
                return encode(value, where)
        raise _unsupported(where, f"is a {type(value).__module__}.{type(value).__qualname__}")

    def _encoders(self) -> list[tuple[type | tuple[type, ...], Callable[[Any, str], Any]]]:
        return [
            (dict, self._dict),
            ((list, tuple), self._sequence),
            (np.generic, self._numpy_scalar),
            (np.ndarray, self._array),
            ((sp.spmatrix, sp.sparray), self._sparse),
            (pd.DataFrame, self._frame),
            (pd.Series, self._series),
            (pd.Index, self._index),
            (pd.Categorical, self._categorical),
        ]

    def _dict(self, value: dict, where: str) -> dict[str, Any]:
        keys = [_json_key(key, where) for key in value]
        if value and all(isinstance(v, pd.Series) for v in value.values()):
            columns = self._series_columns(keys, list(value.values()), where)
            if columns is not None:
                return columns
        pairs = zip(keys, value.values(), strict=True)
        values = [self.encode(v, f"{where}[{k!r}]") for k, v in pairs]
        return {"type": "dict", "keys": keys, "values": values}

    def _series_columns(self, keys: list, series: list[pd.Series], where: str) -> dict | None:
        """Series on one index (``obs`` columns) as one table rather than one table each."""
        index = series[0].index
        if not all(s.index is index or s.index.equals(index) for s in series):
            return None
        pairs = zip(keys, series, strict=True)
        names = [_json_label(s.name, f"{where}[{k!r}].name") for k, s in pairs]
        frame = pd.DataFrame(
            {position: s.array for position, s in enumerate(series)}, index=index, copy=False
        )
        table = self._frame(frame, where)
        return {"type": "series_dict", "keys": keys, "names": names, "table": table}

    def _sequence(self, value: list | tuple, where: str) -> dict[str, Any]:
        items = [self.encode(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return {"type": "tuple" if isinstance(value, tuple) else "list", "items": items}

    def _numpy_scalar(self, value: np.generic, where: str) -> dict[str, Any]:
        if value.dtype.kind in _EXACT_SCALAR_KINDS and value.dtype.itemsize <= 8:
            return {"type": "scalar", "dtype": value.dtype.str, "value": value.item()}
        if value.dtype.kind == "U":
            return {"type": "scalar", "dtype": value.dtype.str, "value": str(value)}
        return {**self._array(np.asarray(value), where), "scalar": True}

    def _array(self, value: np.ndarray, where: str) -> dict[str, Any]:
        node: dict[str, Any] = {"type": "ndarray"}
        view = next((name for name, kind in _ARRAY_VIEWS.items() if type(value) is kind), None)
        if view is not None:  # scanpy's rank_genes_groups stores record arrays
            node["view"] = view
            value = value.view(np.ndarray)
        elif type(value) is not np.ndarray:
            raise _unsupported(where, f"is a {type(value).__name__} (an ndarray subclass)")
        if value.dtype.names is not None:
            value, node["object_fields"] = _fields_as_strings(value, where)
        elif value.dtype.hasobject:
            value = _strings_of(value, where)
            node["object"] = True
        node["member"] = self._write_npy(value, where)
        return node

    def _write_npy(self, value: np.ndarray, where: str) -> str:
        member = self._member("arrays", "npy")
        with self.zf.open(member, "w", force_zip64=True) as handle:
            try:
                np.lib.format.write_array(handle, value, allow_pickle=False)
            except ValueError as err:
                raise _unsupported(where, f"is an array of dtype {value.dtype}") from err
        return member

    def _sparse(self, value: Any, where: str) -> dict[str, Any]:
        stored = value if value.format in ("csr", "csc") else value.tocsr()
        parts = {
            part: self._write_npy(np.asarray(getattr(stored, part)), f"{where}.{part}")
            for part in _SPARSE_PARTS
        }
        return {
            "type": "sparse",
            "format": value.format,
            "stored_format": stored.format,
            "array": isinstance(value, sp.sparray),
            "shape": list(value.shape),
            "parts": parts,
        }

    def _frame(self, value: pd.DataFrame, where: str) -> dict[str, Any]:
        _check_object_columns(value, where)
        table = value.copy(deep=False)
        table.attrs = {}
        member = self._member("tables", "arrow")
        sink = io.BytesIO()
        try:
            feather.write_feather(table, sink, compression=TABLE_COMPRESSION)
        except (pa.ArrowException, ValueError, TypeError) as err:
            raise _unsupported(where, f"is a table Arrow cannot store ({err})") from err
        self.zf.writestr(member, sink.getvalue(), compress_type=zipfile.ZIP_STORED)
        node: dict[str, Any] = {
            "type": "dataframe",
            "member": member,
            "index_names": [_json_label(n, f"{where}.index.names") for n in value.index.names],
            "column_names": [_json_label(n, f"{where}.columns.names") for n in value.columns.names],
            "nan_columns": _nan_null_columns(value),
        }
        if isinstance(value.columns, pd.RangeIndex):  # Arrow keeps only the labels
            columns = value.columns
            node["column_range"] = [columns.start, columns.stop, columns.step]
        if value.attrs:
            node["attrs"] = self.encode(dict(value.attrs), f"{where}.attrs")
        return node

    def _series(self, value: pd.Series, where: str) -> dict[str, Any]:
        name = _json_label(value.name, f"{where}.name")
        table = self._frame(value.to_frame(name="values"), where)
        return {"type": "series", "name": name, "table": table}

    def _index(self, value: pd.Index, where: str) -> dict[str, Any]:
        return {"type": "index", "table": self._frame(pd.DataFrame(index=value), where)}

    def _categorical(self, value: pd.Categorical, where: str) -> dict[str, Any]:
        return {"type": "categorical", "series": self._series(pd.Series(value), where)}

    def _member(self, folder: str, suffix: str) -> str:
        self.n_members += 1
        return f"{folder}/{self.n_members - 1}.{suffix}"


class _Reader:
    """Decodes the JSON nodes of an archive, reading the members they name."""

    def __init__(self, zf: zipfile.ZipFile) -> None:
        self.zf = zf

    def decode(self, node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        decode = {
            "dict": self._dict,
            "list": lambda n: [self.decode(item) for item in n["items"]],
            "tuple": lambda n: tuple(self.decode(item) for item in n["items"]),
            "scalar": lambda n: np.dtype(n["dtype"]).type(n["value"]),
            "ndarray": self._array,
            "sparse": self._sparse,
            "dataframe": self._frame,
            "series": self._series,
            "series_dict": self._series_dict,
            "index": lambda n: self._frame(n["table"]).index,
            "categorical": lambda n: self._series(n["series"]).array,
        }.get(str(node.get("type")))
        if decode is None:
            raise ValueError(f"unknown node type {node.get('type')!r} in the archive")
        return decode(node)

    def _dict(self, node: dict) -> dict:
        pairs = zip(node["keys"], node["values"], strict=True)
        return {key: self.decode(value) for key, value in pairs}

    def _array(self, node: dict) -> Any:
        array = self._read_npy(node["member"])
        if node.get("object"):
            array = array.astype(object)
        if node.get("object_fields"):
            array = _with_field_types(array, dict.fromkeys(node["object_fields"], object))
        if "view" in node:
            array = array.view(_ARRAY_VIEWS[node["view"]])
        return array[()] if node.get("scalar") else array

    def _read_npy(self, member: str) -> np.ndarray:
        with self.zf.open(member) as handle:
            return np.lib.format.read_array(handle, allow_pickle=False)

    def _sparse(self, node: dict) -> Any:
        parts = {part: self._read_npy(member) for part, member in node["parts"].items()}
        kind = {
            ("csr", False): sp.csr_matrix,
            ("csc", False): sp.csc_matrix,
            ("csr", True): sp.csr_array,
            ("csc", True): sp.csc_array,
        }[node["stored_format"], bool(node["array"])]
        matrix = kind(tuple(parts[p] for p in _SPARSE_PARTS), shape=tuple(node["shape"]))
        # scipy may narrow the index dtype; keep the one stored (digests hash these bytes)
        matrix.indices, matrix.indptr = parts["indices"], parts["indptr"]
        return matrix.asformat(node["format"])

    def _frame(self, node: dict) -> pd.DataFrame:
        data = self.zf.read(node["member"])
        frame = feather.read_table(pa.BufferReader(data)).to_pandas()
        if "column_range" in node:
            frame.columns = pd.RangeIndex(*node["column_range"])
        frame.index.names = node["index_names"]
        frame.columns.names = node["column_names"]
        for position in node["nan_columns"]:
            values = frame.iloc[:, position].to_numpy(dtype=object, copy=True)
            values[pd.isna(values)] = np.nan
            frame.isetitem(position, values)
        if "attrs" in node:
            frame.attrs = self.decode(node["attrs"])
        return frame

    def _series(self, node: dict) -> pd.Series:
        series = self._frame(node["table"]).iloc[:, 0]
        series.name = node["name"]
        return series

    def _series_dict(self, node: dict) -> dict[Any, pd.Series]:
        frame = self._frame(node["table"])
        columns = {}
        pairs = zip(node["keys"], node["names"], strict=True)
        for position, (key, name) in enumerate(pairs):
            columns[key] = frame.iloc[:, position]
            columns[key].name = name
        return columns


def _json_key(key: Any, where: str) -> Any:
    if isinstance(key, np.generic) and key.dtype.kind in "biufU":
        key = key.item()
    if type(key) not in _JSON_SCALARS:
        raise _unsupported(where, f"has a key of type {type(key).__name__} ({key!r})")
    return key


def _json_label(label: Any, where: str) -> Any:
    """A column, index or Series name: kept when it is a JSON scalar."""
    if isinstance(label, np.generic) and label.dtype.kind in "biufU":
        label = label.item()
    if type(label) not in _JSON_SCALARS:
        raise _unsupported(where, f"is named {label!r} (a {type(label).__name__})")
    return label


def _strings_of(value: np.ndarray, where: str) -> np.ndarray:
    """An object array of str as a fixed-width unicode array (npy stores no objects)."""
    flat = value.ravel()
    if value.dtype != object or not all(type(item) is str for item in flat):
        kinds = sorted({type(item).__name__ for item in flat} - {"str"})
        raise _unsupported(where, f"is an array of Python objects ({', '.join(kinds)})")
    return value.astype(str)


def _fields_as_strings(value: np.ndarray, where: str) -> tuple[np.ndarray, list[str]]:
    """A structured array with its object fields (of str) as unicode fields, and their names."""
    fields = [name for name in value.dtype.names or () if value.dtype[name].hasobject]
    if not fields:
        return value, []
    types = {name: _strings_of(value[name], f"{where}[{name!r}]").dtype for name in fields}
    return _with_field_types(value, types), fields


def _with_field_types(value: np.ndarray, types: dict[str, Any]) -> np.ndarray:
    """A copy of a structured array with the fields in ``types`` cast to those dtypes."""
    names = value.dtype.names or ()
    dtype = np.dtype([(name, types.get(name, value.dtype[name])) for name in names])
    copy = np.empty(value.shape, dtype)
    for name in names:
        copy[name] = value[name]
    return copy


def _check_object_columns(frame: pd.DataFrame, where: str) -> None:
    """Object columns and index levels may hold strings (and missing values) only: Arrow
    would turn lists into arrays, dicts into structs, and mixed types into an error."""
    axes = [("column", label, frame.iloc[:, i]) for i, label in enumerate(frame.columns)]
    axes += [("index level", name, frame.index.get_level_values(i))
             for i, name in enumerate(frame.index.names)]  # fmt: skip
    for what, label, values in axes:
        if values.dtype == object:
            inferred = pd.api.types.infer_dtype(values, skipna=True)
            if inferred not in ("string", "empty"):
                raise _unsupported(
                    where,
                    f"has {what} {label!r} of Python objects ({inferred})",
                    "convert it to strings, numbers or a categorical",
                )


def _nan_null_columns(frame: pd.DataFrame) -> list[int]:
    """Object columns whose missing values are all NaN (Arrow reads every null as None)."""
    positions = []
    for position in range(frame.shape[1]):
        column = frame.iloc[:, position]
        if column.dtype != object:
            continue
        missing = column[column.isna()]
        if len(missing) and all(isinstance(item, float) for item in missing):
            positions.append(position)
    return positions
