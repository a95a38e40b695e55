"""What a run reads and where it writes, resolved and checked before the first step.

An input is a path (any layout :func:`spatiome.io.read` knows) or the name of a registered
dataset. A reference for deconvolution is an ``.h5ad``, a count table with a cell-type
table (a folder holding both, or the two paths as ``COUNTS,LABELS``), or a registered
dataset that ships one. The output folder is checked for being creatable and writable
before the work, and :func:`check_writable` makes the input's annotations storable in the
final ``.h5ad`` before the first step rather than after the last.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
from anndata import AnnData

from .._core.validate import SpatiomeInputError

__all__ = [
    "InputSource",
    "ReferenceSource",
    "check_output_dir",
    "check_writable",
    "dataset_name",
    "load_reference",
    "output_errors",
    "read_input",
    "reference_files",
    "resolve_input",
    "resolve_reference",
]

#: Free space under which :func:`check_output_dir` warns.
MIN_FREE_MB = 100
_TABLE_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz")
# file stems of a reference folder, most specific first
_COUNT_STEMS = ("reference_counts", "counts", "dge", "matrix")
_LABEL_STEMS = (
    "reference_celltypes",
    "reference_cell_types",
    "reference_labels",
    "celltypes",
    "cell_types",
    "labels",
    "meta_data",
    "metadata",
)
_LABEL_WORDS = re.compile(r"type|label|meta|annot", re.IGNORECASE)
_DATASETS_HINT = (
    "'spatiome datasets list' shows the registered names (set SPATIOME_DATA to the folder "
    "holding local copies)"
)


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputSource:
    """One input of a run: the text given, the file or folder read, and the dataset name.

    Attributes
    ----------
    given
        The path or name as the user wrote it.
    path
        The file or folder read (a registered dataset's verified folder); its checksums go
        into the provenance.
    dataset
        The registered dataset's name, or None for a path.
    """

    given: str
    path: Path
    dataset: str | None = None


def dataset_name(text: str | os.PathLike[str], *, base: Path | None = None) -> str | None:
    """The registered dataset that ``text`` names, or None.

    Only a bare name counts (no folder part), so that an existing or mistyped path is never
    taken for a dataset; ``base`` is the folder a configuration file resolved relative
    paths against, so ``base / name`` counts as the bare name.

    Examples
    --------
    >>> dataset_name("mouse_ob_rep11"), dataset_name("data/mouse_ob_rep11")
    ('mouse_ob_rep11', None)
    >>> dataset_name(Path("/runs/mouse_ob_rep11"), base=Path("/runs"))
    'mouse_ob_rep11'
    """
    from ..datasets import list_datasets

    candidate = Path(text)
    if base is not None and candidate.parent == base:
        candidate = Path(candidate.name)
    if len(candidate.parts) != 1 or str(candidate) != candidate.name:
        return None
    return candidate.name if candidate.name in list_datasets().index else None


def resolve_input(text: str | os.PathLike[str], *, base: Path | None = None) -> InputSource:
    """Find what an input names: an existing path first, else a registered dataset.

    Parameters
    ----------
    text
        A file or folder, or the name of a registered dataset (``spatiome datasets list``).
    base
        Folder relative paths are taken from (a configuration file's folder); the current
        folder when None.

    Returns
    -------
    InputSource
        For a dataset, ``path`` is its folder, with every file present and verified.

    Raises
    ------
    SpatiomeInputError
        When ``text`` is neither an existing path nor a registered name; the message lists
        the registered names close to it.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> resolve_input(folder).path == Path(folder)
    True
    >>> try:
    ...     resolve_input("mouse_ob_rep1")
    ... except SpatiomeInputError as err:
    ...     print(str(err).split("(")[1].split(")")[0])
    did you mean 'mouse_ob_rep11'?
    """
    from ..datasets import path as dataset_path

    given = str(text)
    path = _path(given, base)
    if path.exists():
        return InputSource(given, path)
    name = dataset_name(path if base is not None else given, base=base)
    if name is not None:
        return InputSource(given, dataset_path(name), dataset=name)
    raise SpatiomeInputError(
        f"input {given}: no such file or folder, and not a registered dataset name"
        f"{_did_you_mean(Path(given).name)}; {_DATASETS_HINT}"
    )


def _path(text: str, base: Path | None) -> Path:
    path = Path(text).expanduser()
    return base / path if base is not None and not path.is_absolute() else path


def _did_you_mean(name: str) -> str:
    from ..datasets.registry import close_names

    close = close_names(name) if name else []
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def read_input(source: InputSource) -> AnnData:
    """Read one resolved input: :func:`spatiome.datasets.load` or :func:`spatiome.io.read`.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "counts.csv").write_text("spot,Actb\\ns1,3\\ns2,1\\n")
    >>> _ = (folder / "coords.csv").write_text("spot,x,y\\ns1,0,0\\ns2,1,0\\n")
    >>> read_input(resolve_input(folder)).shape
    (2, 1)
    """
    if source.dataset is not None:
        from ..datasets import load

        return load(source.dataset)
    from ..io import read

    return read(source.path)


# --------------------------------------------------------------------------- reference


class ReferenceOptions(Protocol):
    """The configuration fields :func:`load_reference` reads (a ``PipelineConfig``)."""

    reference: str | None
    reference_labels: str


@dataclass(frozen=True)
class ReferenceSource:
    """A resolved reference: its kind and the files (or dataset) it is read from.

    Attributes
    ----------
    kind
        ``"h5ad"``, ``"tables"`` (a count table and a cell-type table) or ``"dataset"``.
    files
        The ``.h5ad``, or the count and cell-type tables; empty for a dataset (its files
        are known once loaded, see :func:`reference_files`).
    dataset
        The registered dataset's name, for ``kind="dataset"``.
    """

    kind: Literal["h5ad", "tables", "dataset"]
    files: tuple[Path, ...] = ()
    dataset: str | None = None

    @property
    def text(self) -> str:
        """The reference as a configuration value that resolves to the same source."""
        if self.dataset is not None:
            return self.dataset
        return ",".join(str(f) for f in self.files)


def resolve_reference(text: str, *, base: Path | None = None) -> ReferenceSource:
    """Find what a reference names, from the file system only (nothing is read).

    Parameters
    ----------
    text
        One of: an ``.h5ad`` file; a folder holding one ``.h5ad``, or a count table
        (``reference_counts.csv[.gz]``, ``counts.*``, ``dge.*``, ``matrix.*``) with a
        cell-type table (``reference_celltypes.csv``, ``celltypes.*``, ``cell_types.*``,
        ``labels.*``, ``meta_data.*``); the two tables as ``"COUNTS,LABELS"``; or the name of
        a registered dataset that ships a reference. An existing path wins over a name.
    base
        Folder relative paths are taken from (a configuration file's folder).

    Returns
    -------
    ReferenceSource

    Raises
    ------
    SpatiomeInputError
        Naming what was found (the files of a folder, the missing half of a pair) and the
        value that works.

    Examples
    --------
    >>> resolve_reference("rctd_merfish_hypothalamus").kind
    'dataset'
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name in ("reference_counts.csv.gz", "reference_celltypes.csv"):
    ...     _ = (folder / name).write_text("")
    >>> [f.name for f in resolve_reference(str(folder)).files]
    ['reference_counts.csv.gz', 'reference_celltypes.csv']
    """
    given = str(text).strip()
    path = _path(given, base)
    if path.is_file():
        return _reference_file(path)
    if path.is_dir():
        return _reference_folder(path)
    if "," in given:
        return _reference_pair(given, base)
    name = dataset_name(path if base is not None else given, base=base)
    if name is not None:
        from ..datasets.registry import has_reference

        if not has_reference(name):
            raise SpatiomeInputError(
                f"reference {given}: the registered dataset {name!r} has no single-cell "
                f"reference; the datasets with one are {_reference_datasets()}, e.g. "
                f"--reference {_reference_datasets()[0]}"
            )
        return ReferenceSource("dataset", dataset=name)
    raise SpatiomeInputError(
        f"reference {given}: no such file or folder, and not a registered dataset"
        f"{_did_you_mean(Path(given).name)}. Pass an .h5ad, a folder with "
        "reference_counts.csv.gz and reference_celltypes.csv, the two tables as "
        f"--reference COUNTS,LABELS, or a dataset with a reference: {_reference_datasets()}"
    )


def load_reference(config: ReferenceOptions) -> AnnData | None:
    """Read the single-cell reference named in ``config`` and check its label column.

    Parameters
    ----------
    config
        A :class:`~spatiome.workflow.PipelineConfig` (its ``reference`` and
        ``reference_labels``); see :func:`resolve_reference` for what ``reference`` may be.

    Returns
    -------
    AnnData or None
        None when ``config.reference`` is None. Otherwise cells x genes raw counts with the
        cell types in ``obs[config.reference_labels]``; for tables the cell-type column is
        found when the labels table has no column of that name (see
        :func:`spatiome.io.read_reference_table`). ``uns['spatiome']['reference']``
        records the value given, the kind, the dataset and the files read (resolved), for
        the provenance (:func:`reference_files`).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "reference_counts.csv").write_text("cell,Gad1,Slc17a7\\nc1,5,0\\nc2,0,7\\n")
    >>> _ = (folder / "reference_celltypes.csv").write_text("cell,type\\nc1,Inh\\nc2,Exc\\n")
    >>> config = SimpleNamespace(reference=str(folder), reference_labels="cell_type")
    >>> reference = load_reference(config)
    >>> reference.obs["cell_type"].tolist()
    ['Inh', 'Exc']
    >>> [f.name for f in reference_files(reference)]
    ['reference_counts.csv', 'reference_celltypes.csv']
    """
    if config.reference is None:
        return None
    source = resolve_reference(config.reference)
    labels = config.reference_labels
    if source.kind == "h5ad":
        from ..io import read_h5ad

        reference = read_h5ad(source.files[0])
        if labels not in reference.obs:
            raise SpatiomeInputError(_missing_label_column(reference, labels, source.files[0]))
    elif source.kind == "tables":
        from ..io import read_reference_table

        counts, types = source.files
        reference = read_reference_table(
            counts,
            types,
            labels_column=None if labels == "cell_type" else labels,
            key_added=labels,
        )
    else:
        from ..datasets import load

        reference = load(str(source.dataset), reference=True)
        if labels not in reference.obs:
            raise SpatiomeInputError(
                f"reference {source.dataset}: no obs column {labels!r} (columns: "
                f"{list(reference.obs.columns)}): use --reference-labels cell_type"
            )
    record = reference.uns.setdefault("spatiome", {})
    files = record.get("source", {}).get("paths", [str(f) for f in source.files])
    record["reference"] = {
        "given": str(config.reference),
        "kind": source.kind,
        "dataset": source.dataset,
        "files": [str(Path(f).resolve()) for f in files],
        "labels": labels,
    }
    return reference


def reference_files(reference: AnnData) -> list[Path]:
    """The files a reference from :func:`load_reference` was read from (for provenance).

    Examples
    --------
    >>> import anndata, numpy as np
    >>> reference = anndata.AnnData(np.ones((1, 1)))
    >>> reference.uns["spatiome"] = {"reference": {"files": ["/data/ref.h5ad"]}}
    >>> reference_files(reference)
    [PosixPath('/data/ref.h5ad')]
    """
    record = reference.uns.get("spatiome", {}).get("reference", {})
    return [Path(f) for f in record.get("files", [])]


def _reference_file(path: Path) -> ReferenceSource:
    if path.name.endswith(".h5ad"):
        return ReferenceSource("h5ad", (path,))
    if path.name.lower().endswith(_TABLE_SUFFIXES):
        labels = _find(path.parent, _LABEL_STEMS) or _label_like(path.parent, exclude=path)
        pair = f"{path},{labels if labels is not None else path.parent / 'LABELS.csv'}"
        found = (
            f" ({labels.name} beside it looks like one)"
            if labels is not None
            else " (none found beside it)"
        )
        raise SpatiomeInputError(
            f"reference {path} is a table: a table reference needs the cell type of each "
            f"cell too, from a second table{found}. Pass both, count table first: "
            f"--reference {pair}"
            + (f" (or the folder: --reference {path.parent})" if labels is not None else "")
        )
    raise SpatiomeInputError(
        f"reference {path}: cannot tell the format from the name; pass an .h5ad, or a count "
        "table and a cell-type table as --reference COUNTS,LABELS"
    )


def _reference_folder(folder: Path) -> ReferenceSource:
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    h5ad = [name for name in files if name.endswith(".h5ad")]
    counts = _find(folder, _COUNT_STEMS)
    labels = _find(folder, _LABEL_STEMS)
    if counts is not None and labels is not None:
        return ReferenceSource("tables", (counts, labels))
    if len(h5ad) == 1:
        return ReferenceSource("h5ad", (folder / h5ad[0],))
    shown = files[:12] + (["..."] if len(files) > 12 else [])
    if len(h5ad) > 1:
        fix = f"pick one: --reference {folder / h5ad[0]}"
    elif counts is not None:
        guess = _label_like(folder, exclude=counts)
        fix = (
            f"no cell-type table found next to {counts.name}; pass it with the count table: "
            f"--reference {counts},{guess if guess is not None else folder / 'LABELS.csv'}"
        )
    else:
        fix = (
            "pass the files: --reference COUNTS,LABELS (a cells x genes count table, then "
            "a table of cell id and cell type), or an .h5ad"
        )
    raise SpatiomeInputError(
        f"reference folder {folder} holds no reference layout: found {shown or 'no files'}; "
        f"looked for one .h5ad, or {'/'.join(_COUNT_STEMS)}.csv[.gz] with "
        f"{'/'.join(_LABEL_STEMS[:5])}.csv. {fix[0].upper()}{fix[1:]}"
    )


def _reference_pair(given: str, base: Path | None) -> ReferenceSource:
    parts = [p.strip() for p in given.split(",")]
    if len(parts) != 2 or not all(parts):
        raise SpatiomeInputError(
            f"reference {given!r}: a table reference is two paths, COUNTS,LABELS (one comma, "
            "count table first), e.g. --reference ref/counts.csv.gz,ref/celltypes.csv"
        )
    counts, labels = (_path(p, base) for p in parts)
    missing = [p for p in (counts, labels) if not p.is_file()]
    if missing:
        where = missing[0].parent
        beside = (
            sorted(p.name for p in where.iterdir() if p.is_file())[:12] if where.is_dir() else []
        )
        raise SpatiomeInputError(
            f"reference {given}: {', '.join(str(m) for m in missing)} not found"
            + (
                f" ({where} holds {beside})"
                if beside
                else (f" ({where} holds no files)" if where.is_dir() else f" (no folder {where})")
            )
            + "; pass two existing files: --reference COUNTS,LABELS"
        )
    if _is_label_name(counts) and not _is_label_name(labels):
        raise SpatiomeInputError(
            f"reference {given}: the count table comes first: --reference {labels},{counts}"
        )
    return ReferenceSource("tables", (counts, labels))


def _find(folder: Path, stems: tuple[str, ...]) -> Path | None:
    for stem in stems:
        for suffix in _TABLE_SUFFIXES:
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
    return None


def _label_like(folder: Path, *, exclude: Path) -> Path | None:
    """A table whose name suggests cell types, for the hint of an error."""
    for file in sorted(folder.iterdir()):
        if file != exclude and file.name.lower().endswith(_TABLE_SUFFIXES):
            if _is_label_name(file):
                return file
    return None


def _is_label_name(path: Path) -> bool:
    return bool(_LABEL_WORDS.search(path.name))


def _missing_label_column(reference: AnnData, labels: str, path: Path) -> str:
    columns = [str(c) for c in reference.obs.columns]
    normalized = [re.sub(r"[^a-z0-9]", "", c.lower()) for c in columns]
    likely = [
        c
        for c, n in zip(columns, normalized, strict=True)
        if n in ("celltype", "celltypes", "label", "labels", "type", "annotation", "cluster")
    ]
    fix = (
        f"pass --reference-labels {likely[0]} (reference_labels = {likely[0]!r})"
        if likely
        else "pass --reference-labels COLUMN naming the cell-type column"
    )
    return f"reference {path} has no obs column {labels!r} (columns: {columns[:10]}): {fix}"


def _reference_datasets() -> list[str]:
    from ..datasets import list_datasets
    from ..datasets.registry import has_reference

    return [name for name in list_datasets().index if has_reference(name)]


# --------------------------------------------------------------------------- output


def check_output_dir(
    out: str | os.PathLike[str], *, min_free_mb: float = MIN_FREE_MB, option: str = "--out"
) -> Path:
    """Create the output folder if needed and check that files can be written in it.

    A probe file is created and removed. Free space under ``min_free_mb`` megabytes gives
    a warning, since the results are written last.

    Parameters
    ----------
    out
        The output folder.
    min_free_mb
        Free space (MB) under which to warn.
    option
        How the folder was given, quoted in the errors.

    Returns
    -------
    Path
        The folder, existing and writable.

    Raises
    ------
    SpatiomeInputError
        When ``out`` is a file, lies under a file, or cannot be created or written,
        naming the path and what to do.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> check_output_dir(root / "run1").is_dir()
    True
    >>> _ = (root / "notes.txt").write_text("")
    >>> try:
    ...     check_output_dir(root / "notes.txt")
    ... except SpatiomeInputError as err:
    ...     print(str(err).split(":")[0].endswith("is a file"))
    True
    """
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise SpatiomeInputError(
            f"output folder {folder} is a file: pass {option} a folder path (e.g. "
            f"{option} {folder.parent / (folder.stem + '_spatiome')}), or move the file away"
        )
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise SpatiomeInputError(
            f"output folder {folder} cannot be created: {existing} is a file, not a folder; "
            f"pass {option} a path under a folder"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".spatiome_write_check_", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise _output_error(err, folder, option) from None
    free_mb = shutil.disk_usage(folder).free / 1e6
    if free_mb < min_free_mb:
        warnings.warn(
            f"only {free_mb:.0f} MB free on the disk of {folder}: the results are written "
            f"last and may not fit; free some space or pass {option} a folder on another disk",
            UserWarning,
            stacklevel=2,
        )
    return folder


@contextlib.contextmanager
def output_errors(out: str | os.PathLike[str], *, option: str = "--out") -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block into one clear ``SpatiomeInputError``.

    A full disk reads ``no space left on device writing PATH``; a denied permission, a
    read-only file system or a vanished folder name the path and the fix.

    Examples
    --------
    >>> import errno
    >>> try:
    ...     with output_errors("/results"):
    ...         raise OSError(errno.ENOSPC, "No space left on device", "/results/x.h5ad")
    ... except SpatiomeInputError as err:
    ...     print(str(err).split(":")[0])
    no space left on device writing /results/x.h5ad
    """
    try:
        yield
    except OSError as err:
        raise _output_error(err, Path(out), option) from err


def _output_error(err: OSError, folder: Path, option: str) -> SpatiomeInputError:
    target = err.filename if err.filename is not None else folder
    code = err.errno
    text = str(err)
    if code == errno.ENOSPC or "No space left on device" in text:
        return SpatiomeInputError(
            f"no space left on device writing {target}: free some space, or pass {option} a "
            "folder on another disk"
        )
    if code in (errno.EACCES, errno.EPERM):
        return SpatiomeInputError(
            f"permission denied writing {target}: pass {option} a folder you can write to "
            "(or fix the folder's permissions)"
        )
    if code == errno.EROFS:
        return SpatiomeInputError(
            f"read-only file system at {target}: pass {option} a folder on a writable disk"
        )
    if code in (errno.ENOTDIR, errno.EEXIST):
        return SpatiomeInputError(
            f"cannot create {target}: a file stands where a folder is needed; pass {option} "
            "another path"
        )
    reason = err.strerror or text
    return SpatiomeInputError(
        f"cannot write {target} ({reason}): check the output folder {folder}, or pass "
        f"{option} another one"
    )


# --------------------------------------------------------------------------- h5ad


def check_writable(adata: AnnData, *, convert: bool = True) -> list[str]:
    """Make the annotations of ``adata`` storable in ``.h5ad`` before a run, not after.

    Checks the columns of ``obs`` and ``var``, the data frames in ``obsm``/``varm`` and the
    values of ``uns``. Columns mixing numbers or booleans with strings become strings;
    object columns of only numbers or only booleans become numeric or boolean; date
    columns become ISO strings; categories of mixed types become strings; non-string column
    names become strings; in ``uns``, tuples and sets become lists and paths and dates
    strings. Each change is warned about, naming the column.

    Parameters
    ----------
    adata
        Modified in place.
    convert
        False raises on the first problem instead of converting.

    Returns
    -------
    list of str
        One line per change made.

    Raises
    ------
    SpatiomeInputError
        For values no conversion can store (lists, dicts or other objects in a column, or
        column names that collide once made strings), naming them and the fix; and for any
        problem when ``convert`` is False.

    Examples
    --------
    >>> import warnings
    >>> import anndata, numpy as np, pandas as pd
    >>> adata = anndata.AnnData(np.ones((3, 2)))
    >>> adata.obs["batch"] = pd.Series([1, "b", 2], index=adata.obs_names, dtype=object)
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     changes = check_writable(adata)
    >>> changes
    ["adata.obs['batch'] mixes int and str values: stored as strings"]
    >>> adata.obs["batch"].tolist()
    ['1', 'b', '2']
    """
    changes: list[str] = []
    for name in ("obs", "var"):
        _check_frame(getattr(adata, name), f"adata.{name}", convert, changes)
    for name in ("obsm", "varm"):
        mapping = getattr(adata, name)
        for key in list(mapping.keys()):
            if isinstance(mapping[key], pd.DataFrame):
                frame = mapping[key]
                _check_frame(frame, f"adata.{name}[{key!r}]", convert, changes)
                mapping[key] = frame
    _check_mapping(adata.uns, "adata.uns", convert, changes)
    for change in changes:
        warnings.warn(change, UserWarning, stacklevel=2)
    return changes


def _problem(convert: bool, message: str, fix: str) -> None:
    if not convert:
        raise SpatiomeInputError(f"{message}: cannot be written to .h5ad; {fix}")


def _check_frame(frame: pd.DataFrame, where: str, convert: bool, changes: list[str]) -> None:
    renamed = {c: str(c) for c in frame.columns if not isinstance(c, str)}
    if renamed:
        clash = [c for c in renamed.values() if list(map(str, frame.columns)).count(c) > 1]
        if clash:
            raise SpatiomeInputError(
                f"{where} has columns whose names are equal once made strings ({clash[:3]}): "
                "rename them so that each name is a distinct string"
            )
        names = list(renamed)[:5]
        message = f"{where} has column names that are not strings ({names})"
        _problem(
            convert, message, f"rename them, e.g. {where}.columns = {where}.columns.astype(str)"
        )
        frame.rename(columns=renamed, inplace=True)
        changes.append(f"{message}: renamed to strings")
    for column in list(frame.columns):
        series = frame[column]
        label = f"{where}[{column!r}]"
        converted, change = _storable(series, label, convert)
        if change is not None:
            frame[column] = converted
            changes.append(change)


def _storable(series: pd.Series, label: str, convert: bool) -> tuple[pd.Series, str | None]:
    """The column as h5ad can store it, and a line describing the change (None: unchanged)."""
    dtype = series.dtype
    fix = f"convert it, e.g. {label} = {label}.astype(str), or drop it"
    if isinstance(dtype, pd.CategoricalDtype):
        categories = dtype.categories
        if not pd.api.types.is_object_dtype(categories.dtype) or all(
            isinstance(c, str) for c in categories
        ):
            return series, None
        message = f"{label} has categories of mixed types ({_type_names(categories)})"
        _problem(convert, message, fix)
        names = [str(c) for c in categories]
        if len(set(names)) != len(names):
            raise SpatiomeInputError(
                f"{message}, and some are equal once written as text: merge or rename them"
            )
        return series.cat.rename_categories(names), f"{message}: categories stored as strings"
    if dtype.kind in "mM":
        message = f"{label} holds dates or durations"
        _problem(convert, message, fix)
        return series.astype(str).where(series.notna()), f"{message}: stored as strings"
    if not pd.api.types.is_object_dtype(dtype):
        return series, None
    values = series.dropna()
    kinds = {_kind(v) for v in values}
    if not kinds and len(series):
        message = f"{label} holds only missing values"
        _problem(convert, message, fix)
        return pd.Series(np.nan, index=series.index, dtype=float), f"{message}: stored as NaN"
    if not kinds or kinds == {"str"} or kinds == {"bytes"}:
        return series, None
    if "other" in kinds:
        bad = next(v for v in values if _kind(v) == "other")
        raise SpatiomeInputError(
            f"{label} holds {type(bad).__name__} values (e.g. {bad!r}), which cannot be "
            f"written to .h5ad: {fix}"
        )
    if kinds == {"bool"}:
        message = f"{label} holds booleans in an object column"
        _problem(convert, message, fix)
        target = "bool" if len(values) == len(series) else "boolean"
        return series.astype(target), f"{message}: stored as {target}"
    if kinds == {"number"}:
        message = f"{label} holds numbers in an object column"
        _problem(convert, message, fix)
        return pd.to_numeric(series), f"{message}: stored as numbers"
    message = f"{label} mixes {_type_names(values)} values"
    _problem(convert, message, fix)
    as_text = series.map(_as_text, na_action="ignore")
    return as_text, f"{message}: stored as strings"


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return "str"
    if isinstance(value, bytes):
        return "bytes"
    if isinstance(value, bool | np.bool_):
        return "bool"
    if isinstance(value, int | float | np.integer | np.floating):
        return "number"
    return "other"


def _as_text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _type_names(values: Any) -> str:
    names = sorted({type(v).__name__ for v in values if not _is_missing(v)})
    return " and ".join(names)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _check_mapping(mapping: Any, where: str, convert: bool, changes: list[str]) -> None:
    for key in list(mapping.keys()):
        label = f"{where}[{key!r}]"
        if not isinstance(key, str):
            raise SpatiomeInputError(
                f"{where} has a key that is not a string ({key!r}): h5ad keys are strings; "
                f"rename it, e.g. {where}[{str(key)!r}] = {where}.pop({key!r})"
            )
        value = mapping[key]
        if isinstance(value, dict):
            _check_mapping(value, label, convert, changes)
        elif isinstance(value, pd.DataFrame):
            _check_frame(value, label, convert, changes)
        elif isinstance(value, tuple | set | frozenset):
            message = f"{label} is a {type(value).__name__}"
            _problem(convert, message, f"store it as a list: {label} = list({label})")
            items = sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
            mapping[key] = items
            changes.append(f"{message}: stored as a list")
            _check_list(items, label)
        elif isinstance(value, os.PathLike) or hasattr(value, "isoformat"):
            message = f"{label} is a {type(value).__name__}"
            _problem(convert, message, f"store it as text: {label} = str({label})")
            mapping[key] = value.isoformat() if hasattr(value, "isoformat") else os.fspath(value)
            changes.append(f"{message}: stored as a string")
        elif isinstance(value, list):
            _check_list(value, label)
        elif isinstance(value, np.ndarray) and value.dtype == object:
            _check_list(value.tolist(), label)


def _check_list(items: list[Any], label: str) -> None:
    if not items or np.asarray(items, dtype=object).ndim != 1:
        return
    if any(not isinstance(v, str | bytes | bool | int | float | np.generic) for v in items):
        example = next(
            v for v in items if not isinstance(v, str | bytes | bool | int | float | np.generic)
        )
        raise SpatiomeInputError(
            f"{label} is a list holding {type(example).__name__} values (e.g. {example!r}), "
            f"which cannot be written to .h5ad: store a dict of lists or a DataFrame instead, "
            f"or drop it (del {label})"
        )
