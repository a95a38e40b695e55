"""Per-spot and per-gene quality-control metrics (computed by scanpy)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData

from .._core.validate import SpatiomeInputError, check_adata, check_counts, get_matrix

# Gene-name conventions: HGNC symbols are upper case, MGI symbols are capitalized.
SPECIES_PREFIXES: dict[str, dict[str, object]] = {
    "human": {"mito": "MT-", "ribo": ("RPS", "RPL"), "hb": r"^HB[AB]"},
    "mouse": {"mito": "mt-", "ribo": ("Rps", "Rpl"), "hb": r"^Hb[ab]"},
}


def qc_metrics(
    adata: AnnData,
    *,
    layer: str | None = "counts",
    mito_prefix: str | None = None,
    ribo_prefix: str | Sequence[str] | None = None,
    hb_pattern: str | None = None,
    species: str = "auto",
    copy: bool = False,
) -> AnnData | None:
    """Compute per-spot and per-gene quality-control metrics on raw counts.

    Calls :func:`scanpy.pp.calculate_qc_metrics` with the quality-control gene sets
    ``mt`` (mitochondrial), ``ribo`` (ribosomal) and ``hb`` (hemoglobin), so the column
    names are scanpy's: per spot ``total_counts``, ``n_genes_by_counts``,
    ``total_counts_mt``, ``pct_counts_mt``, ``pct_counts_ribo``, ``pct_counts_hb``; per gene
    ``n_cells_by_counts``, ``mean_counts``, ``pct_dropout_by_counts``, ``total_counts``.
    The boolean gene flags are written to ``adata.var[["mt", "ribo", "hb"]]``.

    Parameters
    ----------
    adata
        Spots x genes data.
    layer
        Layer holding raw integer counts; ``None`` uses ``adata.X``.
    mito_prefix
        Prefix of mitochondrial gene names (case-sensitive). Default from ``species``:
        ``"MT-"`` (human) or ``"mt-"`` (mouse).
    ribo_prefix
        Prefix or prefixes of ribosomal protein genes. Default ``("RPS", "RPL")`` (human)
        or ``("Rps", "Rpl")`` (mouse).
    hb_pattern
        Regular expression matched at the start of hemoglobin gene names. Default
        ``"^HB[AB]"`` (human) or ``"^Hb[ab]"`` (mouse).
    species
        ``"human"``, ``"mouse"`` or ``"auto"``: decided from the case of the gene names
        (mostly upper case -> human, mostly capitalized -> mouse).
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``; otherwise None and ``adata`` is updated in place.
        Parameters go to ``adata.uns["spatiome"]["qc_metrics"]``.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp, anndata as ad
    >>> from spatiome.pp import qc_metrics
    >>> counts = sp.csr_matrix(np.array([[5, 0, 5], [1, 1, 8]]))
    >>> adata = ad.AnnData(counts.copy(), var={"gene": ["MT-CO1", "ACTB", "GAPDH"]})
    >>> adata.var_names = adata.var["gene"]
    >>> adata.layers["counts"] = counts
    >>> qc_metrics(adata)
    >>> adata.obs["pct_counts_mt"].tolist()
    [50.0, 10.0]
    >>> adata.uns["spatiome"]["qc_metrics"]["species"]
    'human'
    """
    check_adata(adata)
    counts = get_matrix(adata, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    check_counts(counts, where=where)
    names = pd.Index(adata.var_names.astype(str))
    resolved = _resolve_species(names, species)
    defaults = SPECIES_PREFIXES[resolved]
    mito = mito_prefix if mito_prefix is not None else str(defaults["mito"])
    ribo = _as_prefixes(ribo_prefix if ribo_prefix is not None else defaults["ribo"])
    hb = hb_pattern if hb_pattern is not None else str(defaults["hb"])
    try:
        hb_regex = re.compile(hb)
    except re.error as err:
        raise SpatiomeInputError(
            f"hb_pattern {hb!r} is not a valid regular expression: {err}"
        ) from None

    adata = adata.copy() if copy else adata
    adata.var["mt"] = names.str.startswith(mito)
    adata.var["ribo"] = np.asarray(names.str.startswith(ribo), dtype=bool)
    adata.var["hb"] = np.array([hb_regex.match(name) is not None for name in names], dtype=bool)
    sc.pp.calculate_qc_metrics(
        adata,
        qc_vars=("mt", "ribo", "hb"),
        layer=layer,
        percent_top=None,
        log1p=False,
        inplace=True,
    )
    adata.uns.setdefault("spatiome", {})
    adata.uns["spatiome"]["qc_metrics"] = {
        "layer": "X" if layer is None else layer,
        "species": resolved,
        "mito_prefix": mito,
        "ribo_prefix": list(ribo),
        "hb_pattern": hb,
        "n_mito_genes": int(adata.var["mt"].sum()),
        "n_ribo_genes": int(adata.var["ribo"].sum()),
        "n_hb_genes": int(adata.var["hb"].sum()),
    }
    return adata if copy else None


def detect_species(gene_names: Sequence[str]) -> str:
    """Guess ``"human"`` or ``"mouse"`` from gene symbols.

    Mitochondrial genes decide when only one convention is present (``MT-`` human,
    ``mt-`` mouse). Otherwise the case of the symbols does: human (HGNC) symbols are upper
    case (``ACTB``), mouse (MGI) symbols capitalized (``Actb``). Names without letters or
    looking like Ensembl ids are ignored; ties and undecidable inputs fall back to
    ``"human"``.

    Examples
    --------
    >>> detect_species(["Actb", "Gapdh", "mt-Co1"])
    'mouse'
    >>> detect_species(["ACTB", "GAPDH", "MT-CO1"])
    'human'
    >>> detect_species(["Gene0001", "Gene0002", "MT-ND1"])
    'human'
    """
    names = pd.Index(np.asarray(gene_names).astype(str))
    names = names[~names.str.match(r"^ENS[A-Z]*G\d")]
    n_lower_mt = int(names.str.startswith("mt-").sum())
    n_upper_mt = int(names.str.startswith("MT-").sum())
    if (n_lower_mt > 0) != (n_upper_mt > 0):
        return "mouse" if n_lower_mt else "human"
    letters = names.str.replace(r"[^A-Za-z]", "", regex=True)
    letters = letters[letters.str.len() > 1]
    n_upper = int(letters.str.isupper().sum())
    n_capitalized = int((letters.str[0].str.isupper() & letters.str[1:].str.islower()).sum())
    if n_capitalized + n_lower_mt > n_upper + n_upper_mt:
        return "mouse"
    return "human"


def _resolve_species(names: pd.Index, species: str) -> str:
    if species == "auto":
        return detect_species(names)
    if species not in SPECIES_PREFIXES:
        raise SpatiomeInputError(
            f"species must be 'auto', 'human' or 'mouse', got {species!r}; for other species "
            "pass mito_prefix=, ribo_prefix= and hb_pattern= explicitly"
        )
    return species


def _as_prefixes(prefix: object) -> tuple[str, ...]:
    if isinstance(prefix, str):
        return (prefix,)
    prefixes = tuple(str(p) for p in prefix)  # type: ignore[attr-defined]
    if not prefixes:
        raise SpatiomeInputError("ribo_prefix must name at least one prefix, e.g. ('RPS', 'RPL')")
    return prefixes
