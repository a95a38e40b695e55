"""The HTML report's sections, each built from the AnnData and the tables a run produced.

The pipeline decides what runs; this module decides how its results are shown. It never
imports :mod:`spatiome.workflow.pipeline`.

What a section reads besides the AnnData, and uses only when present:

- ``summary["observation"]`` (or ``adata.uns["spatiome"]["observation"]``): ``"cell"``
  when the observations are single cells, ``"spot"`` otherwise (the default);
- ``summary["fdr"]``: the false discovery rate of the spatially variable gene calls
  (otherwise the configuration's);
- ``summary["n_obs_input"]``, ``summary["n_obs_removed"]`` and
  ``summary["removed_reasons"]`` (reason -> number of observations): observations removed
  by quality control before the statistics;
- ``summary["n_genes_input"]`` and ``summary["gene_filter"]`` (a phrase such as
  "detected in at least 3 spots"): genes before filtering and the rule that kept them;
- the simulated truth: ``adata.var["is_spatial"]``, ``summary[f"svg_power_{method}"]``,
  ``summary[f"svg_fdr_{method}"]``, ``summary["domain_ari"]``,
  ``summary[f"domain_ari_{method}"]``, ``summary["deconv_rmse"]``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._core.validate import SpatiomeInputError
from .integration import BATCH_TITLES, MODALITY_TITLES, integration_section
from .interactions import interactions_section
from .names import DECONV_TITLES, DOMAIN_TITLES, MODULE_TITLES, SVG_TITLES, domain_key
from .report import Section, format_value, methods_paragraph, table_html

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import PipelineConfig

#: Report figures: resolution, widest image in pixels (a page shows no more) and the size
#: of the palette they are reduced to (see :func:`spatiome.pl.figure_to_base64_png`).
FIGURE_DPI = 100
FIGURE_MAX_WIDTH = 1300
FIGURE_COLORS = 128
#: Rows of each spatially variable gene table shown in the report (all are in the CSV).
SVG_TABLE_ROWS = 200
#: Plain names of the QC flags, and of the QC metrics.
FLAG_NAMES = {
    "low_quality": "low quality",
    "local_outlier": "local outlier",
    "artifact": "artifact",
    "doublet": "doublet",
}
METRIC_NAMES = {
    "total_counts": "total counts",
    "n_genes_by_counts": "detected genes",
    "pct_counts_mt": "mitochondrial share",
}
#: Columns of the spatially variable gene tables shown in the report, with their headers.
_SVG_COLUMNS = {
    "statistic": "statistic",
    "zscore": "z-score",
    "llr": "log-likelihood ratio",
    "fsv": "fraction of spatial variance",
    "length_scale": "length scale",
}
_STATISTIC_NAMES = {"moran": "Moran's I", "geary": "Geary's C"}
#: A module step's note that only counts its modules ("stIHC: 7 modules from 300 genes").
_MODULE_COUNT_NOTE = re.compile(r": \d+ modules? (of two or more genes )?from \d+ genes")

#: Encodes a matplotlib figure for the page (and closes it).
FigureEncoder = Callable[[Any], str]


def module_column(data: AnnData, key: str) -> str:
    """The column of ``data.var`` holding the module of each gene for a module method.

    Examples
    --------
    >>> import anndata, numpy as np
    >>> a = anndata.AnnData(np.zeros((2, 2)))
    >>> a.var["module_stihc_module"] = [1, 1]
    >>> module_column(a, "module_stihc")
    'module_stihc_module'
    """
    for suffix in ("_module", "_pattern"):
        if f"{key}{suffix}" in data.var:
            return f"{key}{suffix}"
    raise SpatiomeInputError(f"no module column for {key!r} in adata.var")


def observation_kind(data: AnnData | None, summary: Mapping[str, Any]) -> str:
    """``"cell"`` when the observations are single cells, else ``"spot"``.

    Read from ``summary["observation"]``, then ``data.uns["spatiome"]["observation"]``.

    Examples
    --------
    >>> observation_kind(None, {"observation": "cell"}), observation_kind(None, {})
    ('cell', 'spot')
    """
    stated = summary.get("observation")
    if stated is None and data is not None:
        info = data.uns.get("spatiome", {})
        stated = info.get("observation") if isinstance(info, Mapping) else None
    return "cell" if stated == "cell" else "spot"


def _noun(kind: str, count: int = 2) -> str:
    return kind if count == 1 else f"{kind}s"


def subtitle(summary: dict[str, Any], data: AnnData | None = None) -> str:
    """The line under the report's title: size of the data and the main results.

    Examples
    --------
    >>> subtitle({"n_spots": 3000, "n_genes": 300, "n_svg": 77, "svg_method": "moran",
    ...           "fdr": 0.05, "n_clusters": 5})
    "3,000 spots \u00d7 300 genes; 77 spatially variable genes (Moran's I, FDR 0.05); 5 clusters"
    """
    kind = observation_kind(data, summary)
    n_obs = summary.get("n_spots", 0)
    n_genes = format_value(summary["n_genes"])
    parts = [f"{format_value(n_obs)} {_noun(kind, n_obs)} \u00d7 {n_genes} genes"]
    if "n_svg" in summary and summary.get("svg_method") in SVG_TITLES:
        fdr = f", FDR {summary['fdr']:g}" if "fdr" in summary else ""
        parts.append(
            f"{format_value(summary['n_svg'])} spatially variable genes "
            f"({SVG_TITLES[summary['svg_method']]}{fdr})"
        )
    if "n_clusters" in summary:
        parts.append(f"{format_value(summary['n_clusters'])} clusters")
    return "; ".join(parts)


def report_sections(
    data: AnnData,
    tables: dict[str, pd.DataFrame],
    notes: dict[str, list[str]],
    summary: dict[str, Any],
    provenance: dict[str, Any],
    config: PipelineConfig,
    extra: dict[str, Any],
) -> list[Section]:
    """Every section of the report, in order.

    Parameters
    ----------
    data
        The run's annotated data.
    tables
        Spatially variable gene table of each method, most significant first.
    notes
        Notes of the steps ("qc", "domains", "modules", "deconvolution", "integration",
        and one per SVG method).
    summary
        The run's summary (see the module docstring for the keys read when present).
    provenance
        The provenance record.
    config
        The run's parameters.
    extra
        Domain markers ("markers"), module tables ("modules"), sample mixing ("mixing"),
        the neighbourhood and ligand-receptor results ("neighbourhoods", "interactions").

    Returns
    -------
    list of Section
    """
    import matplotlib.pyplot as plt

    from .. import pl

    def figure(fig) -> str:
        encoded = pl.figure_to_base64_png(
            fig, dpi=FIGURE_DPI, max_width=FIGURE_MAX_WIDTH, colors=FIGURE_COLORS
        )
        plt.close(fig)
        return encoded

    kind = observation_kind(data, summary)
    info = data.uns.setdefault("spatiome", {})
    if isinstance(info, dict) and "observation" in summary:
        # The plots read what the observations are from the data, as a notebook user's do.
        info.setdefault("observation", kind)
    fdr = float(summary.get("fdr", config.fdr))
    modules = extra.get("modules") or {}

    overview = Section("Summary", "tissue")
    overview.add_table(
        summary_table(data, tables, summary, config, modules),
        sortable=False,
        css_class="summary",
        header=False,
    )
    for note in notes.get("input", []):
        overview.add_text(f"Input: {note}.")
    skipped = extra.get("skipped") or {}
    if skipped:
        overview.add_html("<h3>Steps that did not run</h3>")
        overview.add_text(
            "Each step below could not run on these data; the reason says what would make it "
            "run. Everything else in this report was computed."
        )
        overview.add_table(
            pd.DataFrame({"why it did not run": pd.Series(skipped)}).rename_axis("step"),
            sortable=False,
        )
    sections = [
        overview,
        _qc_section(
            extra.get("all_observations", data),
            notes.get("qc", []),
            summary,
            kind,
            figure,
            seed=config.seed,
        ),
        _cluster_section(data, kind, figure, seed=config.seed),
    ]
    if config.domain_methods:
        sections.append(
            _domain_section(
                data, extra.get("markers"), notes.get("domains", []), config, kind, figure
            )
        )
    if "cell_type_fractions" in data.obsm:
        sections.append(
            _deconvolution_section(
                data, notes.get("deconvolution", []), kind, figure, seed=config.seed
            )
        )
    if notes.get("integration"):
        sections.append(
            integration_section(data, notes["integration"], extra.get("mixing"), config, figure)
        )
    if extra.get("neighbourhoods") or extra.get("interactions"):
        sections.append(
            interactions_section(
                data, extra.get("neighbourhoods"), extra.get("interactions"), config, figure
            )
        )
    first_svg = len(sections)
    mapped: dict[str, str] = {}
    for rank, (method, table) in enumerate(tables.items()):
        sections.append(
            _svg_section(
                data,
                method,
                table,
                notes.get(method, []),
                config,
                fdr,
                kind,
                figure,
                anchor_first=rank,
                mapped=mapped,
            )
        )
    if len(tables) > 1:
        sections[first_svg].add_html("<h3>Agreement between the methods</h3>")
        sections[first_svg].add_text(
            f"Genes each method calls at FDR {fdr:g}, and the Jaccard index of each pair of "
            "call sets (shared genes over genes called by either; 1: the same genes)."
        )
        sections[first_svg].add_table(_agreement(tables, fdr), sortable=False)
    if config.module_methods:
        sections.append(
            _module_section(data, modules, notes.get("modules", []), figure, seed=config.seed)
        )
    truth = _truth_section(data, tables, summary, config, fdr, kind)
    if truth is not None:
        sections.append(truth)

    methods = Section("Methods and provenance", "methods")
    removed = summary.get("n_obs_removed")
    methods.add_html(
        methods_paragraph(
            provenance,
            list(provenance["parameters"]["steps"]),
            observation=kind,
            n_removed=int(removed) if removed else None,
        )
    )
    methods.add_html(
        "<pre>"
        + json.dumps(
            {k: provenance[k] for k in ("parameters", "seed", "versions", "inputs", "steps")},
            indent=2,
            default=str,
        )
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        + "</pre>"
    )
    sections.append(methods)
    return sections


def summary_table(
    data: AnnData,
    tables: Mapping[str, pd.DataFrame],
    summary: Mapping[str, Any],
    config: PipelineConfig,
    modules: Mapping[str, pd.DataFrame | None] | None = None,
) -> pd.DataFrame:
    """The report's opening table: what was analysed and what was found, in plain words.

    One row per fact: observations (spots or cells) and genes analysed, observations
    removed and why (when the run records it), spatially variable genes of each method at
    the run's FDR, clusters, domains of each method, gene modules of two or more genes,
    cell types and samples.

    Parameters
    ----------
    data
        The run's annotated data.
    tables
        Spatially variable gene table of each method.
    summary
        The run's summary.
    config
        The run's parameters.
    modules
        Result table of each module method (None for a method that did not run).

    Returns
    -------
    pandas.DataFrame
        One column, ``"value"``, indexed by the fact.

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd
    >>> from spatiome.workflow import PipelineConfig
    >>> data = anndata.AnnData(np.zeros((1660, 3)))
    >>> data.uns["spatiome"] = {"observation": "cell"}
    >>> table = pd.DataFrame({"qval": [0.001, 0.2, np.nan]}, index=["a", "b", "c"])
    >>> summary = {"n_spots": 1660, "n_genes": 3, "n_clusters": 4, "fdr": 0.05}
    >>> config = PipelineConfig(svg_methods=("moran",), domain_methods=(), module_methods=())
    >>> summary_table(data, {"moran": table}, summary, config)["value"].to_dict()
    ... # doctest: +NORMALIZE_WHITESPACE
    {'Cells analysed': 1660, 'Genes': 3,
     "Spatially variable genes (Moran's I)": '1 of 2 genes tested, at FDR 0.05',
     'Clusters (Leiden, expression only)': 4}
    """
    kind = observation_kind(data, summary)
    units = _noun(kind).capitalize()
    fdr = float(summary.get("fdr", config.fdr))
    rows: dict[str, Any] = {}
    n_obs = int(summary.get("n_spots", data.n_obs))
    if "n_obs_input" in summary:
        rows[f"{units} analysed"] = (
            f"{format_value(n_obs)} of {format_value(int(summary['n_obs_input']))}"
        )
    else:
        rows[f"{units} analysed"] = n_obs
    if "n_obs_removed" in summary:
        rows[f"{units} removed"] = _removed_text(summary)
    else:
        flagged = _flag_counts(data)
        if flagged:
            rows[f"{units} flagged by quality control (kept)"] = "; ".join(
                f"{format_value(n)} {FLAG_NAMES.get(flag, flag)}{'s' if n != 1 else ''}"
                for flag, n in flagged.items()
            )
    n_genes = int(summary.get("n_genes", data.n_vars))
    genes: Any = n_genes
    if "n_genes_input" in summary:
        genes = f"{format_value(n_genes)} of {format_value(int(summary['n_genes_input']))} kept"
        if summary.get("gene_filter"):
            genes += f" ({summary['gene_filter']})"
    rows["Genes"] = genes
    tested = summary.get("n_genes_tested")
    if tested is not None and int(tested) < n_genes:
        rows["Genes tested for spatial variation"] = (
            f"{format_value(int(tested))} of {format_value(n_genes)} (the others have fewer "
            f"than {config.min_gene_counts} counts in the analysed {units.lower()})"
        )
    if summary.get("n_samples"):
        correction = BATCH_TITLES.get(str(summary.get("batch_correction")))
        rows["Samples"] = (
            f"{format_value(summary['n_samples'])}, corrected by {correction}"
            if correction
            else summary["n_samples"]
        )
    for method, table in tables.items():
        called = summary.get(f"n_svg_{method}", int((table["qval"] < fdr).sum()))
        tested = int(table["qval"].notna().sum())
        rows[f"Spatially variable genes ({SVG_TITLES.get(method, method)})"] = (
            f"{format_value(called)} of {format_value(tested)} genes tested, at FDR {fdr:g}"
        )
    if "n_clusters" in summary:
        rows["Clusters (Leiden, expression only)"] = summary["n_clusters"]
    for method in config.domain_methods:
        if f"n_domains_{method}" in summary:
            rows[f"Spatial domains ({DOMAIN_TITLES.get(method, method)})"] = summary[
                f"n_domains_{method}"
            ]
    if "n_domains_multimodal" in summary:
        modality = MODALITY_TITLES.get(str(summary.get("modality")), "second modality")
        rows[f"Spatial domains (RNA + {modality})"] = summary["n_domains_multimodal"]
    for method in config.module_methods:
        rows[f"Gene modules ({MODULE_TITLES.get(method, method)})"] = _module_text(
            data, method, (modules or {}).get(method)
        )
    if "n_cell_types" in summary:
        title = DECONV_TITLES.get(str(summary.get("deconv_method")), "deconvolution")
        rows[f"Cell types ({title})"] = summary["n_cell_types"]
    if "n_niches" in summary:
        rows["Niches (neighbourhood composition)"] = summary["n_niches"]
    if "n_lr_pairs" in summary:
        fdr = float(summary.get("fdr", config.fdr))
        rows[f"Ligand-receptor pairs co-located (q < {fdr:g})"] = (
            f"{summary['n_lr_pairs']:,} of {summary['n_lr_pairs_tested']:,} tested"
        )
    return pd.DataFrame({"value": pd.Series(rows, dtype=object)})


def _removed_text(summary: Mapping[str, Any]) -> str:
    removed = int(summary["n_obs_removed"])
    if removed == 0:
        return "none"
    reasons = summary.get("removed_reasons") or {}
    if not reasons:
        return format_value(removed)
    detail = "; ".join(f"{format_value(int(n))} {reason}" for reason, n in reasons.items())
    return f"{format_value(removed)} ({detail})"


def _flag_counts(data: AnnData) -> dict[str, int]:
    return {
        flag: int(data.obs[flag].sum())
        for flag in FLAG_NAMES
        if flag in data.obs and pd.api.types.is_bool_dtype(data.obs[flag])
    }


def _module_text(data: AnnData, method: str, table: pd.DataFrame | None) -> str:
    counted = _module_counts(data, method, table)
    if counted is None:
        return "not run (see Gene modules)"
    n_modules, n_genes, n_unassigned = counted
    text = f"{n_modules} module{'s' if n_modules != 1 else ''} of two or more genes"
    text += f", from {format_value(n_genes)} genes"
    if n_unassigned:
        text += f"; {format_value(n_unassigned)} in no module"
    return text


def _module_counts(
    data: AnnData, method: str, table: pd.DataFrame | None
) -> tuple[int, int, int] | None:
    from ..pl.domains import UNASSIGNED, module_labels

    try:
        column = module_column(data, f"module_{method}")
    except SpatiomeInputError:
        return None
    genes = None if table is None else table.index
    labels = module_labels(data.var[column], genes)
    assigned = labels[labels != UNASSIGNED]
    return int(assigned.nunique()), int(labels.size), int(labels.size - assigned.size)


def _qc_section(
    data: AnnData,
    notes: list[str],
    summary: Mapping[str, Any],
    kind: str,
    figure: FigureEncoder,
    *,
    seed: int = 0,
) -> Section:
    from .. import pl
    from ..pl.qc import QC_KEYS, informative_metrics

    units = _noun(kind)
    section = Section("Quality control", "qc")
    try:
        metrics = informative_metrics(data, QC_KEYS, default=True)
    except SpatiomeInputError:
        metrics = []
    if metrics:
        names = ", ".join(METRIC_NAMES.get(m, m) for m in metrics)
        section.add_figure(
            figure(pl.qc_violin(data, metrics, random_state=seed)),
            f"Per-{kind} QC metrics: {names}.",
        )
    counts = _flag_counts(data)
    flags = list(counts)
    if flags:
        section.add_table(
            pd.DataFrame(
                {
                    f"{units} flagged": list(counts.values()),
                    "share": [f"{n / max(data.n_obs, 1):.1%}" for n in counts.values()],
                },
                index=pd.Index([FLAG_NAMES[f] for f in counts], name="flag"),
            ),
            sortable=False,
            css_class="metrics",
        )
    removed = summary.get("n_obs_removed")
    if removed:
        section.add_text(
            f"{format_value(int(removed))} {_noun(kind, int(removed))} were removed before the "
            "statistics; the results keep them, marked (obs low_quality and "
            "low_quality_reason), with missing values for the statistics."
        )
        _add_removal(section, data, summary, kind, figure, seed=seed)
    elif flags:
        section.add_text(f"Flags are recorded in the results; no {kind} was removed.")
    if metrics:
        # A flag that marks nothing would only repeat the maps without outlines.
        outlined = [flag for flag in flags if counts[flag] > 0]
        caption = "QC metrics on the tissue" + (
            f"; flagged {units} are outlined." if outlined else "."
        )
        section.add_figure(
            figure(pl.qc_spatial(data, metrics, flags=outlined, random_state=seed)), caption
        )
    for metric in QC_KEYS:
        if metric in data.obs and metric not in metrics:
            what = METRIC_NAMES.get(metric, metric)
            reason = " (no mitochondrial genes were found)" if metric == "pct_counts_mt" else ""
            section.add_text(
                f"The {what} is zero or missing in every {kind}{reason}, so it is not shown."
            )
    for note in notes:
        section.add_text(f"Note: {note}")
    return section


def _add_removal(
    section: Section,
    data: AnnData,
    summary: Mapping[str, Any],
    kind: str,
    figure: FigureEncoder,
    *,
    seed: int = 0,
) -> None:
    """The removed observations by reason (a table) and where they lie (a map)."""
    from .. import pl

    reasons = summary.get("removed_reasons") or {}
    units = _noun(kind)
    if reasons:
        section.add_table(
            pd.DataFrame(
                {f"{units} removed": [format_value(int(n)) for n in reasons.values()]},
                index=pd.Index(list(reasons), name="reason"),
            ),
            sortable=False,
            css_class="metrics",
        )
        section.add_text(f"A {kind} removed for several reasons is counted once for each.")
    if "low_quality" not in data.obs or "spatial" not in data.obsm:
        return
    removed = data.obs["low_quality"].to_numpy(dtype=bool)
    status = pd.Categorical(np.where(removed, "removed", "kept"), categories=["kept", "removed"])
    import scipy.sparse as sp

    view = AnnData(  # the map needs the coordinates and one column, not the expression
        sp.csr_matrix((data.n_obs, 1), dtype=np.float32),
        obs=pd.DataFrame({"quality control": status}, index=data.obs_names),
        obsm={"spatial": np.asarray(data.obsm["spatial"])},
        uns={k: data.uns[k] for k in ("spatial_unit", "spatiome") if k in data.uns},
    )
    axes = pl.spatial(
        view,
        "quality control",
        palette={"kept": "#c8c8c8", "removed": "#e8000b"},
        random_state=seed,
    )
    section.add_figure(
        figure(axes.figure), f"Where the {format_value(int(removed.sum()))} removed {units} lie."
    )


def _umap_subsample_note(data: AnnData, kind: str) -> str:
    """How the UMAP layout was fitted when it was fitted on a subsample, else ""."""
    record = data.uns.get("spatiome", {}).get("reduce", {}).get("umap_subsample")
    if not record:
        return ""
    total = record["fitted"] + record["placed"] + record["unplaced"]
    return (
        f" The layout was fitted on {format_value(record['fitted'])} of "
        f"{format_value(total)} {_noun(kind)} chosen at random; the other "
        f"{_noun(kind)} sit at the mean position of their expression neighbours."
    )


def _cluster_section(data: AnnData, kind: str, figure: FigureEncoder, *, seed: int = 0) -> Section:
    from .. import pl

    section = Section("Embedding and clusters", "clusters")
    if "leiden" not in data.obs:
        section.add_text("No clusters: the clustering step did not run (see the summary).")
        return section
    section.add_figure(
        figure(pl.spatial(data, "leiden", random_state=seed).figure),
        f"Leiden clusters of the {_noun(kind)} (expression only) on the tissue.",
    )
    if "X_umap" in data.obsm:
        section.add_figure(
            figure(pl.embedding(data, "leiden", random_state=seed).figure),
            "UMAP of expression coloured by Leiden cluster." + _umap_subsample_note(data, kind),
        )
    if "domain" in data.obs:
        section.add_figure(
            figure(pl.spatial(data, "domain", random_state=seed).figure), "Simulated true domains."
        )
    return section


def _domain_section(
    data: AnnData,
    markers: pd.DataFrame | None,
    notes: list[str],
    config: PipelineConfig,
    kind: str,
    figure: FigureEncoder,
) -> Section:
    from .. import domains, pl

    section = Section("Spatial domains", "domains")
    for method in config.domain_methods:
        key = domain_key(config, method)
        if key not in data.obs:
            continue
        section.add_figure(
            figure(pl.spatial(data, key, random_state=config.seed).figure),
            f"Domains by {DOMAIN_TITLES[method]} (obs['{key}']).",
        )
    for note in notes:
        section.add_text(note)
    if markers is None:
        return section
    first = domain_key(config, config.domain_methods[0])
    try:
        section.add_figure(
            figure(pl.markers(data, markers, first, n_genes=config.n_markers)),
            f"Top {config.n_markers} marker genes per domain (Wilcoxon, q < 0.05): dot size is "
            f"the share of the domain's {_noun(kind)} expressing the gene, colour its scaled "
            "mean; each domain's label is on its colour in the maps.",
        )
    except SpatiomeInputError as err:
        section.add_text(f"No marker plot: {err}")
    top = domains.top_markers(markers, config.n_markers)
    section.add_table(
        pd.DataFrame(
            {"markers": {d: ", ".join(g) or "\u2014" for d, g in top.items()}}
        ).rename_axis("domain"),
        sortable=False,
    )
    section.add_text("All markers with statistics are in markers.csv.")
    return section


def _deconvolution_section(
    data: AnnData, notes: list[str], kind: str, figure: FigureEncoder, *, seed: int = 0
) -> Section:
    from .. import pl

    units = _noun(kind)
    section = Section("Cell-type deconvolution", "deconvolution")
    for note in notes:
        section.add_text(note)
    fractions = data.obsm["cell_type_fractions"]
    section.add_figure(
        figure(pl.dominant_cell_type(data, random_state=seed).figure),
        f"Most abundant cell type of each {kind}.",
    )
    section.add_figure(
        figure(pl.scatter_pies(data).figure),
        f"Cell-type fractions of each {kind} as a pie (same colours as the map of the most "
        "abundant type).",
    )
    section.add_figure(
        figure(pl.cell_type_maps(data, random_state=seed)),
        f"Fraction of each cell type in each {kind} (0 to 1).",
    )
    dominant = fractions.dropna().idxmax(axis=1).value_counts()
    table = pd.DataFrame(
        {
            "mean fraction": fractions.mean(axis=0),
            f"{units} where dominant": dominant.reindex(fractions.columns).fillna(0).astype(int),
        }
    ).sort_values("mean fraction", ascending=False)
    section.add_table(table.rename_axis("cell type"))
    missing = int(fractions.isna().any(axis=1).sum())
    if missing:
        section.add_text(
            f"{format_value(missing)} {_noun(kind, missing)} have no estimate (too few "
            "counts on the reference's genes) and are grey in the maps."
        )
    section.add_text(f"Fractions of every {kind} are in cell_type_fractions.csv.")
    return section


def svg_display_table(
    table: pd.DataFrame, method: str, rows: int = SVG_TABLE_ROWS
) -> tuple[pd.DataFrame, dict[str, str]]:
    """The first ``rows`` genes of a spatially variable gene table, as the report shows them.

    The statistic columns under plain headers, then the p-value (from ``log10_pval`` when
    the table has it, so that p-values below the smallest double stay ordered) and the
    Benjamini-Hochberg q-value.

    Returns
    -------
    tuple
        The table, and the kind of each p-value column for :func:`table_html`.

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"statistic": [0.8], "zscore": [70.0], "pval": [2.2e-308],
    ...                       "log10_pval": [-1551.3], "qval": [2.5e-306]}, index=["g"])
    >>> shown, kinds = svg_display_table(table, "moran")
    >>> list(shown.columns)
    ["Moran's I", 'z-score', 'p-value', 'q-value']
    >>> kinds
    {'p-value': 'log10_pvalue', 'q-value': 'pvalue'}
    """
    top = table.head(rows)
    shown = pd.DataFrame(index=top.index.rename("gene"))
    for column, header in _SVG_COLUMNS.items():
        if column in top:
            header = _STATISTIC_NAMES.get(method, header) if column == "statistic" else header
            shown[header] = top[column].to_numpy()
    kinds: dict[str, str] = {}
    if "log10_pval" in top:
        shown["p-value"] = top["log10_pval"].to_numpy()
        kinds["p-value"] = "log10_pvalue"
    elif "pval" in top:
        shown["p-value"] = top["pval"].to_numpy()
        kinds["p-value"] = "pvalue"
    if "qval" in top:
        shown["q-value"] = top["qval"].to_numpy()
        kinds["q-value"] = "pvalue"
    return shown, kinds


def _svg_section(
    data: AnnData,
    method: str,
    table: pd.DataFrame,
    notes: list[str],
    config: PipelineConfig,
    fdr: float,
    kind: str,
    figure: FigureEncoder,
    *,
    anchor_first: int,
    mapped: dict[str, str],
) -> Section:
    from .. import pl

    title = SVG_TITLES[method]
    anchor = "svg" if anchor_first == 0 else f"svg-{method}"
    section = Section(f"Spatially variable genes ({title})", anchor)
    called = int((table["qval"] < fdr).sum())
    tested = int(table["qval"].notna().sum())
    text = f"{format_value(called)} of {format_value(tested)} tested genes have BH q < {fdr:g}"
    untested = len(table) - tested
    if untested:
        text += (
            f"; {format_value(untested)} {'gene' if untested == 1 else 'genes'} could not be "
            f"tested (no counts, or the same value, in every {kind})"
        )
    listed = "all genes" if len(table) <= SVG_TABLE_ROWS else f"the first {SVG_TABLE_ROWS} genes"
    section.add_text(f"{text}. The table lists {listed}; click a column header to sort.")
    for note in notes:
        section.add_text(f"Note: {note}")
    shown, kinds = svg_display_table(table, method)
    section.add_html(table_html(shown, kinds=kinds))
    for note in _nonfinite_notes(shown, kind):
        section.add_text(note)
    top = [str(g) for g in table.index[: config.n_top_maps]]
    new = [g for g in top if g not in mapped]
    if new:
        caption = f"Log-normalized expression of the top genes by {title}."
        repeated = [g for g in top if g in mapped]
        if repeated:
            where = sorted({mapped[g] for g in repeated})
            caption += (
                f" {', '.join(repeated)} {'is' if len(repeated) == 1 else 'are'} also among "
                f"them, mapped under {' and '.join(where)}."
            )
        section.add_figure(figure(pl.spatial(data, new, random_state=config.seed)), caption)
    elif top:
        section.add_text(f"The top genes by {title} are mapped above.")
    for gene in new:
        mapped[gene] = title
    return section


def _nonfinite_notes(shown: pd.DataFrame, kind: str) -> list[str]:
    """Why some cells of an SVG table show a dash."""
    notes = []
    values = shown.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    infinite = np.isinf(values).any(axis=1)
    if infinite.any():
        notes.append(
            f"\u2014 for {format_value(int(infinite.sum()))} gene(s): the statistic is too "
            "large for a floating-point number (overwhelming evidence); the p-value comes "
            "from its logarithm and the ranking is exact."
        )
    missing = np.isnan(values).any(axis=1) & ~infinite
    if missing.any():
        notes.append(
            f"\u2014 for {format_value(int(missing.sum()))} gene(s): not computed (no counts, "
            f"or the same value, in every {kind})."
        )
    return notes


def _agreement(tables: Mapping[str, pd.DataFrame], fdr: float) -> pd.DataFrame:
    """Genes called by each method and the Jaccard index of every pair of call sets."""
    called = {m: set(t.index[t["qval"] < fdr]) for m, t in tables.items()}
    rows = {}
    for method, genes in called.items():
        row: dict[str, Any] = {"genes called": len(genes)}
        for other, other_genes in called.items():
            union = genes | other_genes
            row[f"Jaccard vs {SVG_TITLES[other]}"] = (
                len(genes & other_genes) / len(union) if union else float("nan")
            )
        rows[SVG_TITLES[method]] = row
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("method")
    return table.astype({"genes called": int})


def _module_section(
    data: AnnData,
    tables: Mapping[str, pd.DataFrame | None],
    notes: list[str],
    figure: FigureEncoder,
    *,
    seed: int = 0,
) -> Section:
    from .. import pl
    from ..pl.domains import UNASSIGNED, module_labels, module_sizes

    section = Section("Gene modules", "modules")
    for note in notes:
        # The section counts the modules itself (of two or more genes, among the genes the
        # method analysed); a step's own count would only repeat or contradict it.
        if not _MODULE_COUNT_NOTE.search(note):
            section.add_text(note)
    for method, table in tables.items():
        if table is None:
            continue
        column = module_column(data, f"module_{method}")
        labels = module_labels(data.var[column], table.index)
        sizes = module_sizes(labels)
        examples = [", ".join(labels.index[labels == m][:6].astype(str)) for m in sizes.index]
        summary = pd.DataFrame({"genes": sizes.to_numpy(), "examples": examples}, index=sizes.index)
        n_modules = int((sizes.index != UNASSIGNED).sum())
        section.add_html(f"<h3>{MODULE_TITLES[method]}</h3>")
        text = (
            f"{n_modules} module{'s' if n_modules != 1 else ''} of two or more genes among "
            f"{format_value(int(labels.size))} genes."
        )
        if UNASSIGNED in sizes.index:
            text += (
                f" {format_value(int(sizes[UNASSIGNED]))} genes are in no module "
                "(unassigned, including genes alone in a module of one)."
            )
        section.add_text(text)
        section.add_table(summary.rename_axis("module"), sortable=False)
        if n_modules:
            section.add_figure(
                figure(pl.module_scores(data, column, random_state=seed)),
                "Module scores (mean z-scored expression of the module's genes) on the tissue.",
            )
    return section


def _truth_section(
    data: AnnData,
    tables: Mapping[str, pd.DataFrame],
    summary: Mapping[str, Any],
    config: PipelineConfig,
    fdr: float,
    kind: str,
) -> Section | None:
    rows = _truth_rows(data, tables, summary, config, fdr, kind)
    if not rows:
        return None
    section = Section("Recovery of the simulated truth", "truth")
    section.add_text(
        "The data were simulated, so what the analysis found can be compared with what was put in."
    )
    table = pd.DataFrame(rows, columns=["measure", "value", "what is compared"]).set_index(
        "measure"
    )
    section.add_table(table, sortable=False, css_class="metrics explained")
    return section


def _capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


def _truth_rows(
    data: AnnData,
    tables: Mapping[str, pd.DataFrame],
    summary: Mapping[str, Any],
    config: PipelineConfig,
    fdr: float,
    kind: str,
) -> list[tuple[str, Any, str]]:
    rows: list[tuple[str, Any, str]] = []
    units = _noun(kind)
    truth = None
    if "is_spatial" in data.var:
        truth = data.var["is_spatial"].fillna(False).astype(bool)
    if truth is not None and any(f"svg_power_{m}" in summary for m in tables):
        rows.append(
            ("Truly spatial genes", int(truth.sum()), "Genes simulated with a spatial pattern.")
        )
    for method, table in tables.items():
        if f"svg_power_{method}" not in summary:
            continue
        title = SVG_TITLES[method]
        power = format_value(summary[f"svg_power_{method}"])
        false_rate = format_value(summary.get(f"svg_fdr_{method}"))
        if truth is not None:
            called = set(table.index[table["qval"] < fdr])
            spatial = set(truth.index[truth.to_numpy()])
            hits = len(called & spatial)
            power += f" ({format_value(hits)} of {format_value(len(spatial))})"
            false_rate += f" ({format_value(len(called) - hits)} of {format_value(len(called))})"
        rows.append(
            (
                f"{title}: power",
                power,
                f"Share of the genes simulated with a spatial pattern that {title} calls "
                f"spatially variable at FDR {fdr:g}.",
            )
        )
        rows.append(
            (
                f"{title}: observed false discovery rate",
                false_rate,
                f"Share of the genes {title} calls at FDR {fdr:g} that were simulated without "
                f"a spatial pattern; about {fdr:g} or less is expected.",
            )
        )
    ari = (
        "adjusted Rand index: 1 when the two partitions are the same, about 0 when they agree "
        "no more than by chance"
    )
    if "domain_ari" in summary:
        rows.append(
            (
                "Leiden clusters vs simulated domains",
                format_value(summary["domain_ari"]),
                f"The Leiden clusters of the {units} (expression only) compared with the "
                f"simulated domains; {ari}.",
            )
        )
    for method in config.domain_methods:
        if f"domain_ari_{method}" in summary:
            rows.append(
                (
                    f"{_capitalized(DOMAIN_TITLES[method])} vs simulated domains",
                    format_value(summary[f"domain_ari_{method}"]),
                    f"The spatial domains found by {DOMAIN_TITLES[method]} compared with the "
                    f"simulated domains; {ari}.",
                )
            )
    if "domain_ari_multimodal" in summary:
        rows.append(
            (
                "RNA + second modality vs simulated domains",
                format_value(summary["domain_ari_multimodal"]),
                "The domains of the integrated RNA and second-modality embedding compared "
                f"with the simulated domains; {ari}.",
            )
        )
    if "deconv_rmse" in summary:
        rows.append(
            (
                "Cell-type fractions: error",
                format_value(summary["deconv_rmse"]),
                f"Root mean squared difference between the estimated and the simulated "
                f"fraction of each cell type in each {kind} (0: exact; fractions run from 0 "
                "to 1).",
            )
        )
    return rows
