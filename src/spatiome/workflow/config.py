"""Run configuration files (TOML): reading, validation, and the documented defaults.

A configuration has these tables::

    [input]      paths (one or more), sample_names
    [output]     dir, title
    [qc]         remove (the field ``qc_remove``)
    [interactions] run, resource, organism, n_permutations (the fields ``interactions``,
                 ``lr_resource``, ``organism``, ``lr_permutations``)
    [dask]       scheduler (the field ``dask_scheduler``): run the per-gene and per-block
                 work on a Dask cluster, e.g. ``scheduler = "tcp://host:8786"``
    [pipeline]   every other field of :class:`~spatiome.workflow.PipelineConfig`

Unknown tables or keys, and values of the wrong type, are errors that name the key.
``spatiome config --default`` prints :func:`default_toml`, every key with its default and
its documentation.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any

from .._core.validate import SpatiomeInputError
from .pipeline import PipelineConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_RUN_KEYS: dict[str, dict[str, tuple[type, Any, str]]] = {
    "input": {
        "paths": (
            list,
            [],
            "Inputs, one per sample: Space Ranger outs/, Xenium folder, .h5ad, or a folder "
            "with a counts table and coords.csv. Relative paths are taken from the config "
            "file's folder. Several samples are combined and corrected.",
        ),
        "sample_names": (
            list,
            [],
            "Names of the samples, one per path (default: from the paths).",
        ),
    },
    "output": {
        "dir": (str, "spatiome_out", "Output folder (relative to the config file's folder)."),
        "title": (str, "", "Report title (default: 'spatiome report: <inputs>')."),
    },
}


#: Tables that hold some pipeline fields under shorter names: table -> {key: field}.
_FIELD_TABLES: dict[str, dict[str, str]] = {
    "qc": {"remove": "qc_remove"},
    "interactions": {
        "run": "interactions",
        "resource": "lr_resource",
        "organism": "organism",
        "n_permutations": "lr_permutations",
    },
    "dask": {"scheduler": "dask_scheduler"},
}


@dataclasses.dataclass
class RunConfig:
    """A validated configuration file: the inputs, the output folder and the parameters."""

    inputs: list[Path]
    sample_names: list[str]
    out: Path
    title: str
    pipeline: PipelineConfig
    source: Path | None = None


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a TOML configuration file.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> text = '[input]\\npaths = ["tissue.h5ad"]\\n'
    >>> text += '[pipeline]\\nseed = 3\\nsvg_methods = ["sparkx"]\\n'
    >>> _ = (folder / "run.toml").write_text(text)
    >>> config = load_config(folder / "run.toml")
    >>> config.pipeline.seed, config.pipeline.svg_methods, config.inputs[0].name
    (3, ('sparkx',), 'tissue.h5ad')
    """
    path = Path(path)
    if not path.is_file():
        raise SpatiomeInputError(
            f"config file {path} does not exist: write one with "
            "'spatiome config --default > run.toml' and edit it"
        )
    try:
        document = tomllib.loads(path.read_text())
    except UnicodeDecodeError:
        raise SpatiomeInputError(
            f"{path} is not a TOML configuration (it is not text): the data go after "
            f"--input, e.g. 'spatiome run --input {path}'"
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise SpatiomeInputError(f"{path} is not valid TOML: {err}") from None
    return config_from_dict(document, base=path.parent, source=path)


def config_from_dict(
    document: dict[str, Any], *, base: Path = Path("."), source: Path | None = None
) -> RunConfig:
    """Validate a parsed configuration (the TOML's tables as dicts)."""
    where = str(source) if source is not None else "the config"
    known = {*_RUN_KEYS, *_FIELD_TABLES, "pipeline"}
    for table, content in document.items():
        if table not in known:
            raise SpatiomeInputError(
                f"unknown table [{table}] in {where}; the tables are {sorted(known)}"
            )
        if not isinstance(content, dict):
            raise SpatiomeInputError(f"{table!r} in {where} must be a table ([{table}])")
    run = {}
    for table, keys in _RUN_KEYS.items():
        given = document.get(table, {})
        _check_known(given, keys, table, where)
        for key, (kind, default, _) in keys.items():
            value = given.get(key, default)
            if not isinstance(value, kind) or (
                kind is list and not all(isinstance(v, str) for v in value)
            ):
                expected = "a list of strings" if kind is list else "a string"
                raise SpatiomeInputError(f"{table}.{key} in {where} must be {expected}")
            run[f"{table}.{key}"] = value
    pipeline = pipeline_config(_pipeline_values(document, where), where)
    paths = [_resolve(base, p, may_be_name=True) for p in run["input.paths"]]
    names = run["input.sample_names"]
    if names and len(names) != len(paths):
        raise SpatiomeInputError(
            f"input.sample_names in {where} has {len(names)} names for {len(paths)} paths"
        )
    if pipeline.reference is not None:
        pipeline.reference = str(_resolve(base, pipeline.reference, may_be_name=True))
    if pipeline.modality_input is not None:
        pipeline.modality_input = str(_resolve(base, pipeline.modality_input))
    if Path(pipeline.lr_resource).suffix.lower() in (".csv", ".tsv", ".gz"):
        pipeline.lr_resource = str(_resolve(base, pipeline.lr_resource))
    return RunConfig(
        inputs=paths,
        sample_names=list(names),
        out=_resolve(base, run["output.dir"]),
        title=run["output.title"],
        pipeline=pipeline,
        source=source,
    )


def _pipeline_values(document: dict[str, Any], where: str) -> dict[str, Any]:
    """The ``[pipeline]`` table with the fields given in other tables (``[qc] remove``)."""
    values = dict(document.get("pipeline", {}))
    for table, fields in _FIELD_TABLES.items():
        given = document.get(table, {})
        _check_known(given, fields, table, where)
        for key, value in given.items():
            name = fields[key]
            if name in values:
                raise SpatiomeInputError(
                    f"{table}.{key} and pipeline.{name} in {where} set the same thing: keep one"
                )
            values[name] = value
    return values


def pipeline_config(values: dict[str, Any], where: str = "the config") -> PipelineConfig:
    """A :class:`PipelineConfig` from a ``[pipeline]`` table, each value type-checked.

    Examples
    --------
    >>> pipeline_config({"n_domains": 7, "domain_methods": ["gnn"]}).domain_methods
    ('gnn',)
    >>> try:
    ...     pipeline_config({"n_domain": 7})
    ... except SpatiomeInputError as err:
    ...     print(err)
    unknown key pipeline.n_domain in the config; did you mean pipeline.n_domains?
    """
    fields = {f.name: f for f in dataclasses.fields(PipelineConfig)}
    _check_known(values, fields, "pipeline", where)
    hints = typing.get_type_hints(PipelineConfig)
    converted = {}
    for key, value in values.items():
        converted[key] = _convert(value, hints[key], f"pipeline.{key}", where)
    try:
        return PipelineConfig(**converted)
    except SpatiomeInputError as err:
        raise SpatiomeInputError(f"pipeline: {err} (in {where})") from None


def _check_known(given: dict[str, Any], keys, table: str, where: str) -> None:
    import difflib

    for key in given:
        if key not in keys:
            close = difflib.get_close_matches(key, list(keys), n=1)
            hint = f"; did you mean {table}.{close[0]}?" if close else (
                f"; the keys of [{table}] are {sorted(keys)}"
            )  # fmt: skip
            raise SpatiomeInputError(f"unknown key {table}.{key} in {where}{hint}")


def _convert(value: Any, hint: Any, key: str, where: str) -> Any:
    """``value`` checked against the annotation ``hint``; lists become tuples."""
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    for option in options:
        if option is type(None):
            continue
        origin = typing.get_origin(option)
        if origin is tuple and isinstance(value, list | tuple):
            if all(isinstance(v, str) for v in value):
                return tuple(value)
        elif option is bool and isinstance(value, bool):
            return value
        elif option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        elif option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        elif option is str and isinstance(value, str):
            return value
    names = " or ".join(_type_name(o) for o in options if o is not type(None))
    nullable = " (leave the key out for the default)" if type(None) in options else ""
    raise SpatiomeInputError(f"{key} in {where} must be {names}{nullable}, got {value!r}")


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        return "a list of strings"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, str(hint)
    )


def _resolve(base: Path, value: str, *, may_be_name: bool = False) -> Path:
    """``value`` taken from the config file's folder. With ``may_be_name``, a bare name that
    is no file there stays as it is, so it can name a registered dataset
    (``spatiome datasets list``)."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    bare = len(path.parts) == 1 and "." not in value
    if may_be_name and bare and not (base / path).exists():
        return path
    return base / path


def _field_docs() -> dict[str, str]:
    """Each field's text from the Attributes section of PipelineConfig's docstring."""
    lines = (PipelineConfig.__doc__ or "").splitlines()
    docs: dict[str, list[str]] = {}
    current: list[str] = []
    for line in lines:
        stripped = line.strip()
        if line.startswith("    ") and not line.startswith("        ") and stripped:
            names = [n.strip() for n in stripped.split(",")]
            if all(n.isidentifier() for n in names):
                current = []
                for name in names:
                    docs[name] = current
                continue
        if line.startswith("        "):
            current.append(stripped)
    return {name: " ".join(text) for name, text in docs.items()}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def _comment(text: str, width: int = 88) -> list[str]:
    import textwrap

    return [f"# {line}" for line in textwrap.wrap(text, width - 2)] if text else []


def default_toml() -> str:
    """The configuration with every key at its default, documented (``spatiome config --default``).

    Keys whose default is "none" are written commented out (TOML has no null).

    Examples
    --------
    >>> text = default_toml()
    >>> config = config_from_dict(tomllib.loads(text))
    >>> config.pipeline == PipelineConfig()
    True
    """
    out = ["# spatiome run configuration; run with: spatiome run THIS_FILE.toml", ""]
    for table, keys in _RUN_KEYS.items():
        out.append(f"[{table}]")
        for key, (_, default, doc) in keys.items():
            out += _comment(doc)
            out.append(f"{key} = {_toml_value(default)}")
        out.append("")
    docs = _field_docs()
    defaults = PipelineConfig()
    for table, fields in _FIELD_TABLES.items():
        out.append(f"[{table}]")
        for key, name in fields.items():
            out += _comment(docs.get(name, ""))
            out.append(_toml_line(key, getattr(defaults, name)))
        out.append("")
    out.append("[pipeline]")
    elsewhere = {name for fields in _FIELD_TABLES.values() for name in fields.values()}
    written: set[str] = set()
    for item in dataclasses.fields(PipelineConfig):
        if item.name in elsewhere:
            continue
        value = getattr(defaults, item.name)
        doc = docs.get(item.name, "")
        if doc not in written:  # fields documented together are documented once
            out += _comment(doc)
            written.add(doc)
        out.append(_toml_line(item.name, value))
    return "\n".join(out) + "\n"


def _toml_line(key: str, value: Any) -> str:
    """``key = value``; commented out when the value is None (TOML has no null).

    Examples
    --------
    >>> _toml_line("seed", 0), _toml_line("scheduler", None)
    ('seed = 0', '# scheduler =   (unset by default)')
    """
    if value is None:
        return f"# {key} =   (unset by default)"
    return f"{key} = {_toml_value(value)}"
