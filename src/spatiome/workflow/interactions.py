"""Pipeline steps for tissue neighbourhoods and ligand-receptor interactions, and their
report section.

``neighbourhoods`` runs whenever the data have groups (:func:`interaction_groups`): the
neighbourhood enrichment of every pair of groups on the spatial graph
(:func:`spatiome.interactions.nhood_enrichment`, analytic) and, when cell types are known
(labels, or fractions from deconvolution), niches: clusters of the cell-type composition
of each neighbourhood (:func:`spatiome.interactions.niches`). ``interactions`` (opt-in:
``PipelineConfig.interactions``) scores ligand-receptor pairs of a curated resource for
spatial co-expression (:func:`spatiome.interactions.ligrec`), with per-group-pair scores
when groups exist and local scores of the top pairs for maps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._core.validate import SpatiomeInputError
from .names import domain_key
from .report import Section

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import PipelineConfig

logger = logging.getLogger("spatiome")

#: Where the most abundant cell type of each spot goes when deconvolution gives the groups.
DOMINANT_TYPE_KEY = "dominant_cell_type"
#: A column of this name in the input's obs is taken as cell types.
CELL_TYPE_COLUMN = "cell_type"
FRACTIONS_KEY = "cell_type_fractions"
NICHE_KEY = "niche"
LIGREC_KEY = "ligrec"
#: Groups beyond this many make the neighbourhood statistics unreadable (and are no labels).
MAX_GROUPS = 100
#: Ligand-receptor pairs (and group pairs) listed in the report; all are in the CSVs.
TOP_PAIRS = 20


def interaction_groups(data: AnnData, config: PipelineConfig) -> tuple[str, str]:
    """The ``obs`` column whose groups the neighbourhood statistics compare, and what they are.

    In order: ``config.group_key``; ``config.label_key``; a ``cell_type`` column of the
    input; the most abundant cell type of each spot from deconvolution (written to
    ``obs["dominant_cell_type"]``); the first domain method's domains. Raises
    :class:`~spatiome.SpatiomeInputError` (the step is skipped) when there is none.

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd
    >>> from spatiome.workflow import PipelineConfig
    >>> a = anndata.AnnData(np.zeros((4, 1)))
    >>> a.obs["spatial_domain"] = pd.Categorical(["0", "0", "1", "1"])
    >>> interaction_groups(a, PipelineConfig())
    ('spatial_domain', 'domains')
    >>> a.obs["cell_type"] = ["T", "B", "T", "B"]
    >>> interaction_groups(a, PipelineConfig())
    ('cell_type', 'cell types')
    """
    for key, kind in ((config.group_key, "groups"), (config.label_key, "labels")):
        if key is None:
            continue
        if key not in data.obs:
            option = "group_key" if kind == "groups" else "label_key"
            raise SpatiomeInputError(
                f"{option} {key!r} is not a column of the data's obs "
                f"(columns: {list(map(str, data.obs.columns))[:12]})"
            )
        return _checked(data, key), kind
    if CELL_TYPE_COLUMN in data.obs:
        return _checked(data, CELL_TYPE_COLUMN), "cell types"
    if FRACTIONS_KEY in data.obsm:
        fractions = data.obsm[FRACTIONS_KEY]
        known = fractions.notna().all(axis=1) & (fractions.sum(axis=1) > 0)
        dominant = pd.Series(np.nan, index=data.obs_names, dtype=object)
        dominant[known] = fractions[known].idxmax(axis=1).astype(str)
        data.obs[DOMINANT_TYPE_KEY] = pd.Categorical(
            dominant, categories=[str(c) for c in fractions.columns]
        ).remove_unused_categories()
        return _checked(data, DOMINANT_TYPE_KEY), "most abundant cell types"
    for method in config.domain_methods:
        key = domain_key(config, method)
        if key in data.obs:
            return _checked(data, key), "domains"
    raise SpatiomeInputError(
        "there are no groups to compare: give cell types (group_key, or a 'cell_type' column "
        "in obs), a reference for deconvolution, or a domain method"
    )


def _checked(data: AnnData, key: str) -> str:
    """``key``, once its values are usable groups (made categorical in ``data.obs``)."""
    values = data.obs[key]
    if not isinstance(values.dtype, pd.CategoricalDtype):
        values = pd.Categorical(values.astype("string").astype(object))
        data.obs[key] = values
    n_groups = int(pd.Series(values).nunique())
    if not 2 <= n_groups <= MAX_GROUPS:
        raise SpatiomeInputError(
            f"obs[{key!r}] has {n_groups} distinct values: neighbourhood statistics need 2 to "
            f"{MAX_GROUPS} groups (set group_key to a column of cell types or clusters)"
        )
    return key


def run_neighbourhoods(data: AnnData, config: PipelineConfig) -> dict[str, Any]:
    """Neighbourhood enrichment between groups and, with cell types, niches.

    Returns ``{"group_key", "groups", "enrichment", "niches", "notes", "niche_notes"}``:
    the column and kind of the groups, the enrichment as a long table (one row per ordered
    pair of groups), the niches' composition (or None) and the report's notes on each.
    """
    from .. import interactions

    key, kind = interaction_groups(data, config)
    interactions.nhood_enrichment(data, key, **_library(data, config))
    enrichment = enrichment_table(data, key)
    notes = [
        f"Neighbourhood enrichment of the {int(data.obs[key].nunique())} {kind} in "
        f"obs['{key}'] on the spatial graph (z-scores against random relabelling, exact "
        "moments)."
    ]
    niche_table, niche_note = _niches(data, key, kind, config)
    return {
        "group_key": key,
        "groups": kind,
        "enrichment": enrichment,
        "niches": niche_table,
        "notes": notes,
        "niche_notes": [niche_note],
    }


def _library(data: AnnData, config: PipelineConfig) -> dict[str, str]:
    """``{"library_key": sample column}`` with several samples (statistics per sample)."""
    from .integration import n_samples

    return {"library_key": config.sample_key} if n_samples(data, config) > 1 else {}


def enrichment_table(data: AnnData, key: str) -> pd.DataFrame:
    """``uns[f"{key}_nhood_enrichment"]`` as a long table: group, neighbour group, edge
    count, share of the group's edges, z-score.

    Examples
    --------
    >>> import anndata, numpy as np
    >>> a = anndata.AnnData(np.zeros((2, 1)))
    >>> a.obs["g"] = pd.Categorical(["x", "y"])
    >>> a.uns["g_nhood_enrichment"] = {"zscore": np.array([[1.0, -1.0], [-1.0, 2.0]]),
    ...                                "count": np.array([[3, 1], [1, 5]])}
    >>> enrichment_table(a, "g")[["group", "neighbour_group", "count", "share"]].iloc[1]
    group               x
    neighbour_group     y
    count               1
    share            0.25
    Name: 1, dtype: object
    """
    result = data.uns[f"{key}_nhood_enrichment"]
    groups = [str(g) for g in data.obs[key].cat.categories]
    count = np.asarray(result["count"], dtype=np.int64)
    totals = count.sum(axis=1, keepdims=True)
    share = np.divide(count, totals, out=np.full(count.shape, np.nan), where=totals > 0)
    rows, cols = np.indices(count.shape)
    return pd.DataFrame(
        {
            "group": np.asarray(groups, dtype=object)[rows.ravel()],
            "neighbour_group": np.asarray(groups, dtype=object)[cols.ravel()],
            "count": count.ravel(),
            "share": share.ravel(),
            "zscore": np.asarray(result["zscore"], dtype=float).ravel(),
        }
    )


def _niches(
    data: AnnData, key: str, kind: str, config: PipelineConfig
) -> tuple[pd.DataFrame | None, str]:
    """Niches from cell-type fractions or cell-type labels; (composition table, note)."""
    from .. import interactions

    if FRACTIONS_KEY in data.obsm:
        source = {"composition_key": FRACTIONS_KEY}
        what = "the deconvolved cell-type fractions"
    elif kind in ("groups", "labels", "cell types"):
        source = {"groups": key}
        what = f"the {kind} in obs['{key}']"
    else:
        return None, (
            "Niches were not computed: they cluster the cell-type composition of each "
            "neighbourhood, and these data have no cell types (give a reference for "
            "deconvolution, or cell types as group_key)."
        )
    interactions.niches(
        data,
        **source,
        n_niches=config.n_niches,
        random_state=config.seed,
        key_added=NICHE_KEY,
        **_library(data, config),
    )
    labels = data.obs[NICHE_KEY]
    composition = pd.DataFrame(data.uns[NICHE_KEY]["composition"])
    composition.index = [str(i) for i in composition.index]
    sizes = labels.value_counts().reindex(composition.index).fillna(0).astype(int)
    table = composition.copy()
    table.insert(0, "size", sizes.to_numpy())
    chosen = "chosen by silhouette" if config.n_niches is None else "as set"
    note = f"{len(table)} niches ({chosen}) from the composition of each neighbourhood in {what}."
    return table.rename_axis("niche"), note


def organism_of(symbols: pd.Index) -> str:
    """ "human" when most gene symbols are upper case (ACTB), else "mouse" (Actb).

    Examples
    --------
    >>> organism_of(pd.Index(["ACTB", "CD3E", "Gene1"])), organism_of(pd.Index(["Actb", "Cd3e"]))
    ('human', 'mouse')
    """
    named = [str(s) for s in symbols if any(c.isalpha() for c in str(s))]
    upper = sum(s == s.upper() for s in named)
    return "human" if named and upper >= len(named) / 2 else "mouse"


def run_interactions(
    data: AnnData, config: PipelineConfig, *, client: Any | None = None
) -> dict[str, Any]:
    """Ligand-receptor pairs scored for spatial co-expression (and per pair of groups);
    the blocks of pairs run on ``client``'s Dask cluster when one is given.

    Returns ``{"table", "groups", "group_key", "group_kind", "notes"}``: the pairs, most
    significant first; the group-pair scores (or None); the groups' column (or None) and
    kind; notes.
    """
    from .. import interactions
    from ..interactions.ligrec import gene_symbols

    try:
        key, kind = interaction_groups(data, config)
    except SpatiomeInputError:
        key, kind = None, ""
    resource: Any = config.lr_resource
    if Path(resource).suffix.lower() in (".csv", ".tsv", ".gz") or Path(resource).is_file():
        resource = _read_resource(Path(resource))
    organism = config.organism
    if organism == "auto":
        organism = organism_of(gene_symbols(data))
    try:
        table = interactions.ligrec(
            data,
            resource=resource,
            organism=organism,
            groups=key,
            n_permutations=config.lr_permutations,
            global_pvalue="analytic",
            n_local=max(config.n_top_maps, 1),
            random_state=config.seed,
            key_added=LIGREC_KEY,
            client=client,
        )
    except ImportError as err:
        raise SpatiomeInputError(str(err)) from None
    info = data.uns["spatiome"][LIGREC_KEY]
    called = int((table["qvalue"] < config.fdr).sum())
    source = _resource_name(info.get("resource", {}), config.lr_resource, organism)
    notes = [
        f"{info['n_pairs_tested']:,} ligand-receptor pairs of {source} tested "
        f"({info['n_pairs_missing_genes']:,} lack a gene in the data, "
        f"{info['n_pairs_low_expression']:,} are expressed in too few {_unit(data)}s); "
        f"{called:,} co-located at q < {config.fdr:g}."
    ]
    groups = data.uns.get(f"{LIGREC_KEY}_groups")
    return {"table": table, "groups": groups, "group_key": key, "group_kind": kind,
            "notes": notes}  # fmt: skip


def _read_resource(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise SpatiomeInputError(
            f"lr_resource {str(path)!r} is no file: give a CSV with 'ligand' and 'receptor' "
            "columns, or a resource name such as 'consensus'"
        )
    sep = "\t" if ".tsv" in path.suffixes else ","
    table = pd.read_csv(path, sep=sep)
    table.attrs["source"] = str(path)
    return table


def _resource_name(record: dict[str, Any], configured: str, organism: str) -> str:
    """How the report names the resource: liana's version and table, or the user's file.

    Examples
    --------
    >>> _resource_name({"source": "liana", "liana_version": "1.10.0",
    ...                 "resource": "mouseconsensus"}, "consensus", "mouse")
    "liana 1.10.0's mouseconsensus resource (mouse)"
    >>> _resource_name({"source": "pairs.csv"}, "pairs.csv", "human")
    'the table pairs.csv'
    """
    if record.get("source") == "liana":
        name = record.get("resource", configured)
        return f"liana {record.get('liana_version', '')}'s {name} resource ({organism})"
    return f"the table {configured}"


def _unit(data: AnnData) -> str:
    return str(data.uns.get("spatiome", {}).get("observation", "spot"))


def write_interaction_tables(
    outputs: dict[str, Any], write: Callable[[str, pd.DataFrame, dict], None]
) -> None:
    """The CSVs of the two steps: ``neighbourhood_enrichment.csv``, ``niches.csv``,
    ``ligand_receptor.csv`` and ``ligand_receptor_groups.csv`` (those that ran)."""
    neighbourhoods = outputs.get("neighbourhoods")
    if neighbourhoods:
        write("neighbourhood_enrichment", neighbourhoods["enrichment"], {"index": False})
        if neighbourhoods.get("niches") is not None:
            write("niches", neighbourhoods["niches"], {"index_label": "niche"})
    found = outputs.get("interactions")
    if found:
        write("ligand_receptor", found["table"], {"index": False})
        if found.get("groups") is not None:
            write("ligand_receptor_groups", found["groups"], {"index": False})


def interactions_section(
    data: AnnData,
    neighbourhoods: dict[str, Any] | None,
    found: dict[str, Any] | None,
    config: PipelineConfig,
    figure: Callable[[Any], str],
) -> Section:
    """The report's "Neighbourhoods and interactions" section."""
    section = Section("Neighbourhoods and interactions", "interactions")
    if neighbourhoods:
        _add_neighbourhoods(section, data, neighbourhoods, figure)
    if found:
        _add_pairs(section, data, found, config, figure)
    return section


def _add_neighbourhoods(
    section: Section, data: AnnData, result: dict[str, Any], figure: Callable[[Any], str]
) -> None:
    from .. import pl

    key = result["group_key"]
    unit = _unit(data)
    section.add_html("<h3>Neighbourhood enrichment</h3>")
    for note in result["notes"]:
        section.add_text(note)
    section.add_figure(
        figure(pl.nhood_enrichment(data, key).figure),
        f"Neighbourhood enrichment z-scores: red where {unit}s of the row's group have more "
        f"neighbours of the column's group than a random arrangement of the groups gives, "
        "blue where fewer.",
    )
    if result["groups"] == "domains":
        section.add_text(
            "Domains are spatial by construction, so the diagonal is large; the off-diagonal "
            "entries say which domains border which."
        )
    section.add_text("Counts, shares and z-scores are in neighbourhood_enrichment.csv.")
    if result.get("niches") is None:
        for note in result.get("niche_notes", []):
            section.add_text(note)
        return
    section.add_html("<h3>Niches</h3>")
    for note in result.get("niche_notes", []):
        section.add_text(note)
    section.add_figure(
        figure(pl.spatial(data, NICHE_KEY).figure),
        f"Niche of each {unit}: {unit}s whose neighbourhoods have a similar cell-type "
        "composition share a niche.",
    )
    section.add_figure(
        figure(pl.niche_composition(data, NICHE_KEY).figure),
        "Mean cell-type composition of the neighbourhoods in each niche (rows sum to 1).",
    )
    section.add_text("Each niche's size and composition is in niches.csv.")


def _add_pairs(
    section: Section,
    data: AnnData,
    found: dict[str, Any],
    config: PipelineConfig,
    figure: Callable[[Any], str],
) -> None:
    from .. import pl

    table = found["table"]
    unit = _unit(data)
    section.add_html("<h3>Ligand-receptor pairs</h3>")
    for note in found["notes"]:
        section.add_text(note)
    if table.empty:
        section.add_text("No pair had both genes expressed widely enough to be tested.")
        return
    columns = ["ligand", "receptor", "score", "zscore", "pvalue", "qvalue"]
    columns += ["ligand_cells", "receptor_cells"]
    section.add_table(_ranked(table[columns]), css_class="metrics")
    section.add_text(
        "score: bivariate Moran's I of the ligand in each "
        f"{unit} and the receptor in its neighbours (0: no spatial association). All pairs "
        "are in ligand_receptor.csv."
    )
    local = data.obsm.get(f"{LIGREC_KEY}_local")
    if local is not None and local.shape[1]:
        shown = list(local.columns[: max(config.n_top_maps, 1)])
        section.add_figure(
            figure(pl.ligrec_local(data, shown)),
            f"Local scores of the top pairs: the ligand in each {unit} times the receptor "
            f"in its neighbours (standardized); high where the pair meets.",
        )
    groups = found.get("groups")
    if groups is not None and len(groups):
        section.add_html("<h4>Between groups</h4>")
        group_columns = [c for c in ("sender", "receiver", "ligand", "receptor", "score",
                                     "pvalue", "qvalue") if c in groups]  # fmt: skip
        section.add_text(
            f"Each pair scored between the {found['group_kind']} in "
            f"obs['{found['group_key']}']: the ligand in the sender group and the receptor in "
            "its neighbours of the receiver group. All group pairs are in "
            "ligand_receptor_groups.csv."
        )
        section.add_table(_ranked(groups[group_columns]), css_class="metrics")


def _ranked(table: pd.DataFrame) -> pd.DataFrame:
    """The first rows of ``table``, indexed by rank from 1."""
    top = table.head(TOP_PAIRS).copy()
    top.index = pd.RangeIndex(1, len(top) + 1, name="rank")
    return top
