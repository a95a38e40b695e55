"""Ligand-receptor pairs: liana's curated consensus table, read as a file.

liana (BSD-3-Clause) ships the table ``liana/resource/omni_resource.csv`` inside its
package: one row per interaction with the UniProt identifiers (``source``, ``target``;
complexes written ``COMPLEX:P1_P2``), the gene symbols (``source_genesymbol``,
``target_genesymbol``; complex subunits joined by ``"_"``, e.g. ``ERBB2_ERBB3``) and the
name of the resource the row belongs to (``resource``). Besides ``"consensus"`` (human,
4,620 pairs in liana 1.10.0) and a dozen single-database resources, the file holds
``"mouseconsensus"``: liana's consensus mapped to mouse orthologs upstream (mouse symbols,
same human UniProt identifiers), which is what ``liana.resource.select_resource
("mouseconsensus")`` returns. Both organisms are therefore available offline.

The file is located through the installed distribution's metadata
(:func:`importlib.metadata.distribution`) and read with pandas; liana's code is never
imported. Every table records where it came from in ``DataFrame.attrs``: the liana version,
the file's sha256 and the resource name, so that a result can be traced to the exact table.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from .._core.files import sha256_file
from .._core.validate import SpatiomeInputError

__all__ = ["ligand_receptor_pairs", "resource_names", "resolve_pairs"]

#: The file inside the liana distribution.
LIANA_TABLE = "liana/resource/omni_resource.csv"
#: The consensus resource per organism.
CONSENSUS = {"human": "consensus", "mouse": "mouseconsensus"}
ORGANISMS = tuple(CONSENSUS)
INSTALL_HINT = 'pip install "spatiome[interactions]"'
#: Columns accepted for user tables, in order of preference.
LIGAND_COLUMNS = ("ligand", "source_genesymbol", "source")
RECEPTOR_COLUMNS = ("receptor", "target_genesymbol", "target")


def _liana_file() -> tuple[Path, str]:
    """Path of liana's table and liana's version; ImportError with the fix if absent."""
    try:
        distribution = importlib.metadata.distribution("liana")
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(
            "the ligand-receptor resource is read from the liana package, which is not "
            f"installed: {INSTALL_HINT} (or pass your own table with 'ligand' and "
            "'receptor' columns as resource=)"
        ) from None
    path = Path(str(distribution.locate_file(LIANA_TABLE)))
    if not path.is_file():
        raise ImportError(
            f"liana {distribution.version} is installed but has no {LIANA_TABLE}: "
            f"reinstall it ({INSTALL_HINT}) or pass your own table as resource="
        )
    return path, distribution.version


@functools.lru_cache(maxsize=4)
def _read_table(path: str, mtime_ns: int) -> tuple[pd.DataFrame, str]:
    """The whole table and its sha256 (cached per file version)."""
    table = pd.read_csv(path, index_col=0)
    missing = {"source_genesymbol", "target_genesymbol", "resource"} - set(table.columns)
    if missing:
        raise ImportError(
            f"{path} lacks the columns {sorted(missing)}: this liana version stores its "
            "resource differently; pass your own table with 'ligand' and 'receptor' columns"
        )
    return table, sha256_file(path)


def _full_table() -> tuple[pd.DataFrame, dict]:
    path, version = _liana_file()
    table, digest = _read_table(str(path), path.stat().st_mtime_ns)
    provenance = {
        "source": "liana",
        "liana_version": version,
        "file": LIANA_TABLE,
        "sha256": digest,
    }
    return table, provenance


def resource_names() -> list[str]:
    """Names of the resources in liana's table (``"consensus"``, ``"mouseconsensus"``, ...).

    Examples
    --------
    >>> import pytest
    >>> _ = pytest.importorskip("liana")
    >>> {"consensus", "mouseconsensus"} <= set(resource_names())
    True
    """
    table, _ = _full_table()
    return sorted(table["resource"].unique().tolist())


def ligand_receptor_pairs(resource: str = "consensus", organism: str = "human") -> pd.DataFrame:
    """Ligand-receptor pairs of one of liana's curated resources.

    Parameters
    ----------
    resource
        ``"consensus"`` (liana's default, curated from the OmniPath resources) or the name
        of another resource in the file (see :func:`resource_names`).
    organism
        ``"human"`` or ``"mouse"``. For mouse the consensus is liana's shipped
        ``"mouseconsensus"`` (mapped to mouse orthologs by liana, not by spatiome). The
        single-database resources exist only for human: for mouse pass your own table to
        the method (a ``DataFrame`` with ``ligand`` and ``receptor`` columns).

    Returns
    -------
    pandas.DataFrame
        Columns ``ligand`` and ``receptor`` (gene symbols; complexes joined by ``"_"``),
        ``ligand_complex`` and ``receptor_complex`` (True where the side is a complex,
        from the ``COMPLEX:`` UniProt identifier, so symbols that contain ``"_"`` but name
        one gene, such as ``C4B_2``, are not split), ``ligand_uniprot``,
        ``receptor_uniprot``. ``attrs`` holds the provenance: ``source``,
        ``liana_version``, ``file``, ``sha256``, ``resource``, ``organism``.

    Raises
    ------
    ImportError
        When liana is not installed (``pip install "spatiome[interactions]"``).

    Examples
    --------
    >>> import pytest
    >>> _ = pytest.importorskip("liana")
    >>> pairs = ligand_receptor_pairs()
    >>> pairs.loc[0, ["ligand", "receptor"]].tolist(), len(pairs.attrs["sha256"])
    (['LGALS9', 'PTPRC'], 64)
    >>> ligand_receptor_pairs(organism="mouse").loc[0, "ligand"][:2].istitle()
    True
    """
    if organism not in ORGANISMS:
        raise SpatiomeInputError(f"organism must be one of {ORGANISMS}, got {organism!r}")
    if not isinstance(resource, str):
        raise SpatiomeInputError(
            f"resource must be a resource name, got {type(resource).__name__}; pass tables "
            "to the method itself"
        )
    name = resource.lower()
    if organism == "mouse":
        if name not in ("consensus", "mouseconsensus"):
            raise SpatiomeInputError(
                f"liana ships resource {resource!r} for human only; for mouse use "
                "resource='consensus' (liana's mouse consensus) or pass your own table "
                "with 'ligand' and 'receptor' columns"
            )
        name = CONSENSUS["mouse"]
    table, provenance = _full_table()
    available = table["resource"].unique()
    if name not in available:
        raise SpatiomeInputError(
            f"resource {resource!r} is not in liana's table; choose one of "
            f"{sorted(available.tolist())}"
        )
    rows = table[table["resource"] == name]
    pairs = pd.DataFrame(
        {
            "ligand": rows["source_genesymbol"].to_numpy(),
            "receptor": rows["target_genesymbol"].to_numpy(),
            "ligand_complex": rows["source"].str.startswith("COMPLEX:").to_numpy(),
            "receptor_complex": rows["target"].str.startswith("COMPLEX:").to_numpy(),
            "ligand_uniprot": rows["source"].to_numpy(),
            "receptor_uniprot": rows["target"].to_numpy(),
        }
    )
    pairs = pairs.drop_duplicates(["ligand", "receptor"], ignore_index=True)
    pairs.attrs.update(provenance, resource=name, organism=organism)
    return pairs


def resolve_pairs(
    resource: str | pd.DataFrame | Iterable[tuple[str, str]], organism: str = "human"
) -> pd.DataFrame:
    """Ligand-receptor pairs from a resource name, a user table or a list of tuples.

    A user ``DataFrame`` needs a ligand and a receptor column: ``ligand``/``receptor``
    (liana's and spatiome's names) or ``source_genesymbol``/``target_genesymbol``
    (OmniPath's). Complexes are written with their subunits joined by ``"_"``; without
    ``ligand_complex``/``receptor_complex`` columns a name with ``"_"`` is treated as a
    complex unless the data has a gene of that exact name.

    Returns
    -------
    pandas.DataFrame
        ``ligand``, ``receptor`` and, when known, ``ligand_complex``/``receptor_complex``,
        with duplicated and incomplete rows dropped; ``attrs`` says where it came from.

    Examples
    --------
    >>> resolve_pairs([("TGFB1", "TGFBR1_TGFBR2")])[["ligand", "receptor"]].values.tolist()
    [['TGFB1', 'TGFBR1_TGFBR2']]
    """
    if isinstance(resource, str):
        return ligand_receptor_pairs(resource, organism)
    if isinstance(resource, pd.DataFrame):
        ligand = next((c for c in LIGAND_COLUMNS if c in resource.columns), None)
        receptor = next((c for c in RECEPTOR_COLUMNS if c in resource.columns), None)
        if ligand is None or receptor is None:
            raise SpatiomeInputError(
                "resource table needs a ligand and a receptor column ('ligand' and "
                f"'receptor'); got columns {list(resource.columns)}"
            )
        pairs = pd.DataFrame(
            {
                "ligand": resource[ligand].to_numpy(),
                "receptor": resource[receptor].to_numpy(),
            }
        )
        for side in ("ligand_complex", "receptor_complex"):
            if side in resource.columns:
                pairs[side] = resource[side].to_numpy(dtype=bool)
        attrs = dict(resource.attrs) or {"source": "user table"}
    else:
        try:
            rows = [tuple(row) for row in resource]
        except TypeError:
            raise SpatiomeInputError(
                "resource must be a resource name, a DataFrame with 'ligand' and 'receptor' "
                f"columns, or a list of (ligand, receptor) tuples; got {type(resource).__name__}"
            ) from None
        if any(len(row) != 2 for row in rows):
            raise SpatiomeInputError("resource tuples must be (ligand, receptor) pairs")
        pairs = pd.DataFrame(rows, columns=["ligand", "receptor"])
        attrs = {"source": "user list"}
    pairs = pairs.dropna(subset=["ligand", "receptor"])
    pairs = pairs.astype({"ligand": str, "receptor": str})
    pairs = pairs.drop_duplicates(["ligand", "receptor"], ignore_index=True)
    if pairs.empty:
        raise SpatiomeInputError("the resource holds no ligand-receptor pair")
    pairs.attrs.update(attrs)
    return pairs
