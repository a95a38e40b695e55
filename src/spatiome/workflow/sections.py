"""The HTML report's sections, each built from the AnnData and the tables a run produced.

The pipeline decides what runs; this module decides how its results are shown. It never
imports :mod:`spatiome.workflow.pipeline`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pandas as pd
from anndata import AnnData

from .._core.validate import SpatiomeInputError
from .integration import integration_section
from .names import DOMAIN_TITLES, MODULE_TITLES, SVG_TITLES
from .report import Section, methods_paragraph, table_html

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import PipelineConfig


def module_column(data: AnnData, key: str) -> str:
    for suffix in ("_module", "_pattern"):
        if f"{key}{suffix}" in data.var:
            return f"{key}{suffix}"
    raise SpatiomeInputError(f"no module column for {key!r} in adata.var")


def subtitle(summary: dict[str, Any]) -> str:
    return (
        f"{summary['n_spots']:,} spots x {summary['n_genes']:,} genes; "
        f"{summary['n_svg']:,} spatially variable genes ({SVG_TITLES[summary['svg_method']]}); "
        f"{summary['n_clusters']} clusters"
    )


def report_sections(
    data: AnnData,
    tables: dict[str, pd.DataFrame],
    notes: dict[str, list[str]],
    summary: dict[str, Any],
    provenance: dict[str, Any],
    config: PipelineConfig,
    extra: dict[str, Any],
) -> list[Section]:
    import matplotlib.pyplot as plt

    from .. import pl

    def figure(fig) -> str:
        encoded = pl.figure_to_base64_png(fig)
        plt.close(fig)
        return encoded

    overview = Section("Tissue", "tissue")
    overview.add_figure(
        figure(pl.spatial(data, "total_counts").figure), "Total counts per spot on the tissue."
    )
    overview.add_table(
        pd.DataFrame({"value": pd.Series(summary, dtype=object)}),
        sortable=False,
        css_class="metrics",
    )

    qc = Section("Quality control", "qc")
    qc.add_figure(figure(pl.qc_violin(data)), "Per-spot QC metrics.")
    flags = [key for key in ("local_outlier", "artifact", "doublet") if key in data.obs]
    if flags:
        counts = {key: int(data.obs[key].sum()) for key in flags}
        qc.add_table(
            pd.DataFrame({"flagged": pd.Series(counts), "share": pd.Series(counts) / data.n_obs}),
            sortable=False,
            css_class="metrics",
        )
        qc.add_text("Flags are recorded in the results; no spot was removed.")
        qc.add_figure(
            figure(pl.qc_spatial(data, flags=flags)),
            "QC metrics on the tissue; flagged spots are outlined.",
        )
    for note in notes.get("qc", []):
        qc.add_text(f"Note: {note}")
    if "pct_counts_mt" in data.obs and not flags:
        qc.add_figure(
            figure(pl.spatial(data, "pct_counts_mt").figure), "Mitochondrial percentage per spot."
        )

    clusters = Section("Embedding and clusters", "clusters")
    clusters.add_figure(figure(pl.spatial(data, "leiden").figure), "Leiden clusters on the tissue.")
    if "X_umap" in data.obsm:
        clusters.add_figure(
            figure(pl.embedding(data, "leiden").figure),
            "UMAP of expression coloured by Leiden cluster.",
        )
    if "domain" in data.obs:
        clusters.add_figure(figure(pl.spatial(data, "domain").figure), "Simulated true domains.")

    sections = [overview, qc, clusters]
    if config.domain_methods:
        sections.append(_domain_section(data, extra["markers"], notes["domains"], config, figure))
    if "cell_type_fractions" in data.obsm:
        sections.append(_deconvolution_section(data, notes.get("deconvolution", []), figure))
    if notes.get("integration"):
        sections.append(
            integration_section(data, notes["integration"], extra.get("mixing"), config, figure)
        )
    first_svg = len(sections)
    for rank, (method, table) in enumerate(tables.items()):
        sections.append(
            _svg_section(data, method, table, notes[method], config, figure, anchor_first=rank)
        )
    if len(tables) > 1:
        sections[first_svg].add_html("<h3>Agreement between the methods</h3>")
        sections[first_svg].add_table(_agreement(tables, config.fdr), sortable=False)
    if config.module_methods:
        sections.append(_module_section(data, extra["modules"], notes["modules"], figure))
    if any(k in summary for k in ("svg_power", "domain_ari", "deconv_rmse")):
        truth = Section("Recovery of the simulated truth", "truth")
        truth.add_table(_truth_table(summary, config), sortable=False, css_class="metrics")
        sections.append(truth)

    methods = Section("Methods and provenance", "methods")
    methods.add_html(methods_paragraph(provenance, list(provenance["parameters"]["steps"])))
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


def _domain_section(
    data: AnnData,
    markers: pd.DataFrame,
    notes: list[str],
    config: PipelineConfig,
    figure: Callable[[Any], str],
) -> Section:
    from .. import domains, pl

    section = Section("Spatial domains", "domains")
    for method in config.domain_methods:
        key = f"domain_{method}"
        section.add_figure(
            figure(pl.spatial(data, key).figure),
            f"Domains by {DOMAIN_TITLES[method]} (obs['{key}']).",
        )
    for note in notes:
        section.add_text(note)
    first = f"domain_{config.domain_methods[0]}"
    try:
        section.add_figure(
            figure(pl.markers(data, markers, first, n_genes=config.n_markers)),
            f"Top {config.n_markers} marker genes per domain (Wilcoxon, q < 0.05): dot size is "
            "the share of spots expressing the gene, colour its scaled mean.",
        )
    except SpatiomeInputError as err:
        section.add_text(f"No marker plot: {err}")
    top = domains.top_markers(markers, config.n_markers)
    section.add_table(
        pd.DataFrame({"markers": {d: ", ".join(g) or "-" for d, g in top.items()}}),
        sortable=False,
    )
    section.add_text("All markers with statistics are in markers.csv.")
    return section


def _module_section(
    data: AnnData,
    tables: dict[str, pd.DataFrame | None],
    notes: list[str],
    figure: Callable[[Any], str],
) -> Section:
    from .. import pl
    from ..pl.domains import module_labels

    section = Section("Gene modules", "modules")
    for note in notes:
        section.add_text(note)
    for method, table in tables.items():
        if table is None:
            continue
        column = module_column(data, f"module_{method}")
        members = module_labels(data.var[column])
        sizes = members.value_counts().sort_index()
        summary = pd.DataFrame(
            {
                "genes": sizes,
                "examples": [", ".join(members.index[members == m][:6]) for m in sizes.index],
            }
        ).rename_axis("module")
        section.add_html(f"<h3>{MODULE_TITLES[method]}</h3>")
        section.add_table(summary, sortable=False)
        section.add_figure(
            figure(pl.module_scores(data, column)),
            "Module scores (mean z-scored expression of the module's genes) on the tissue.",
        )
    return section


def _deconvolution_section(
    data: AnnData, notes: list[str], figure: Callable[[Any], str]
) -> Section:
    from .. import pl

    section = Section("Cell-type deconvolution", "deconvolution")
    for note in notes:
        section.add_text(note)
    fractions = data.obsm["cell_type_fractions"]
    section.add_figure(
        figure(pl.dominant_cell_type(data).figure), "Most abundant cell type of each spot."
    )
    section.add_figure(
        figure(pl.scatter_pies(data).figure), "Cell-type fractions of each spot as a pie."
    )
    section.add_figure(
        figure(pl.cell_type_maps(data)), "Fraction of each cell type in each spot (0 to 1)."
    )
    dominant = fractions.dropna().idxmax(axis=1).value_counts()
    table = pd.DataFrame(
        {
            "mean fraction": fractions.mean(axis=0),
            "spots where dominant": dominant.reindex(fractions.columns).fillna(0).astype(int),
        }
    ).sort_values("mean fraction", ascending=False)
    section.add_table(table.rename_axis("cell type"))
    section.add_text("Fractions of every spot are in cell_type_fractions.csv.")
    return section


#: Columns of each method's table shown in the report, when present.
_REPORT_COLUMNS = (
    "statistic",
    "zscore",
    "llr",
    "fsv",
    "length_scale",
    "pval",
    "log10_pval",
    "qval",
)


def _svg_section(
    data: AnnData,
    method: str,
    table: pd.DataFrame,
    notes: list[str],
    config: PipelineConfig,
    figure: Callable[[Any], str],
    *,
    anchor_first: int,
) -> Section:
    from .. import pl

    anchor = "svg" if anchor_first == 0 else f"svg-{method}"
    section = Section(f"Spatially variable genes ({SVG_TITLES[method]})", anchor)
    called = int((table["qval"] < config.fdr).sum())
    section.add_text(
        f"{called:,} of {len(table):,} genes have BH q < {config.fdr}. "
        "The table lists the top 200 genes; click a column header to sort."
    )
    for note in notes:
        section.add_text(f"Note: {note}")
    columns = [c for c in _REPORT_COLUMNS if c in table]
    section.add_html(table_html(table[columns].head(200)))
    top = list(table.index[: config.n_top_maps])
    if top:
        section.add_figure(
            figure(pl.spatial(data, top)),
            f"Log-normalized expression of the top genes by {SVG_TITLES[method]}.",
        )
    return section


def _agreement(tables: dict[str, pd.DataFrame], fdr: float) -> pd.DataFrame:
    """Genes called by each method and the Jaccard index of every pair of call sets."""
    called = {m: set(t.index[t["qval"] < fdr]) for m, t in tables.items()}
    rows = {}
    for method, genes in called.items():
        row: dict[str, Any] = {"called": len(genes)}
        for other, other_genes in called.items():
            union = genes | other_genes
            row[f"Jaccard vs {SVG_TITLES[other]}"] = (
                len(genes & other_genes) / len(union) if union else float("nan")
            )
        rows[SVG_TITLES[method]] = row
    return pd.DataFrame(rows).T


def _truth_table(summary: dict[str, Any], config: PipelineConfig) -> pd.DataFrame:
    rows: dict[str, Any] = {}
    if "n_true" in summary:
        rows["true spatial genes"] = summary["n_true"]
    for method in config.svg_methods:
        title = SVG_TITLES[method]
        if f"svg_power_{method}" in summary:
            rows[f"{title}: power (true spatial genes called)"] = summary[f"svg_power_{method}"]
            rows[f"{title}: observed FDR"] = summary[f"svg_fdr_{method}"]
            rows[f"{title}: genes called"] = summary[f"n_svg_{method}"]
    if "domain_ari" in summary:
        rows["ARI of Leiden clusters vs true domains"] = summary["domain_ari"]
    if "deconv_rmse" in summary:
        rows["RMSE of cell-type fractions vs truth"] = summary["deconv_rmse"]
    for method in config.domain_methods:
        if f"domain_ari_{method}" in summary:
            rows[f"ARI of {DOMAIN_TITLES[method]} vs true domains"] = summary[
                f"domain_ari_{method}"
            ]
    if "domain_ari_multimodal" in summary:
        rows["ARI of the RNA + second modality domains vs true domains"] = summary[
            "domain_ari_multimodal"
        ]
    return pd.DataFrame({"value": pd.Series(rows, dtype=object)})
