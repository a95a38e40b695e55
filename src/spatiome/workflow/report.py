"""A self-contained HTML report: figures embedded as base64 PNG, no external assets.

Every number of every table goes through :func:`format_value`, so that the whole report
prints counts, statistics and p-values the same way.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._core.files import write_text_atomic

#: Citations for the methods a run may use, keyed by step name.
CITATIONS = {
    "qc": "Wolf, Angerer & Theis (2018) SCANPY: large-scale single-cell gene expression data "
    "analysis. Genome Biology 19:15.",
    "scater": "McCarthy, Campbell, Lun & Wills (2017) Scater: pre-processing, quality "
    "control, normalization and visualization of single-cell RNA-seq data in R. "
    "Bioinformatics 33:1179-1186.",
    "moran": "Moran (1950) Notes on continuous stochastic phenomena. Biometrika 37:17-23.",
    "geary": "Geary (1954) The contiguity ratio and statistical mapping. The Incorporated "
    "Statistician 5:115-145.",
    "sparkx": "Zhu, Sun & Zhou (2021) SPARK-X: non-parametric modeling enables scalable and "
    "robust detection of spatial expression patterns for large spatial transcriptomic "
    "studies. Genome Biology 22:184.",
    "acat": "Liu & Xie (2020) Cauchy combination test: a powerful test with analytic p-value "
    "calculation under arbitrary dependency structures. JASA 115:393-402.",
    "spatialde": "Svensson, Teichmann & Stegle (2018) SpatialDE: identification of spatially "
    "variable genes. Nature Methods 15:343-346.",
    "trendseek": "Edsgard, Johnsson & Sandberg (2018) Identification of spatial expression "
    "trends in single-cell gene expression data. Nature Methods 15:339-342.",
    "umap": "McInnes, Healy & Melville (2018) UMAP: Uniform Manifold Approximation and "
    "Projection. arXiv:1802.03426.",
    "leiden": "Traag, Waltman & van Eck (2019) From Louvain to Leiden: guaranteeing "
    "well-connected communities. Scientific Reports 9:5233.",
    "bh": "Benjamini & Hochberg (1995) Controlling the false discovery rate. JRSS B 57:289-300.",
    "spotsweeper": "Totty et al. (2025) SpotSweeper: spatially aware quality control for "
    "spatial transcriptomics. Nature Methods.",
    "scrublet": "Wolock, Lopez & Klein (2019) Scrublet: computational identification of cell "
    "doublets in single-cell transcriptomic data. Cell Systems 8:281-291.",
    "banksy": "Singhal et al. (2024) BANKSY unifies cell typing and tissue domain segmentation "
    "for scalable spatial omics data analysis. Nature Genetics 56:431-441.",
    "bison": "Zhu, Cassese, Vannucci, Guindani & Li (2025) BISON: bi-clustering of spatial "
    "omics data with feature selection. Bioinformatics, btaf495.",
    "stagate": "Dong & Zhang (2022) Deciphering spatial domains from spatially resolved "
    "transcriptomics with an adaptive graph attention auto-encoder. Nature Communications "
    "13:1739.",
    "wilcoxon": "Wilcoxon (1945) Individual comparisons by ranking methods. Biometrics "
    "Bulletin 1:80-83.",
    "rctd": "Cable et al. (2022) Robust decomposition of cell type mixtures in spatial "
    "transcriptomics. Nature Biotechnology 40:517-526.",
    "cell2location": "Kleshchevnikov et al. (2022) Cell2location maps fine-grained cell types "
    "in spatial transcriptomics. Nature Biotechnology 40:661-671.",
    "card": "Ma & Zhou (2022) Spatially informed cell-type deconvolution for spatial "
    "transcriptomics. Nature Biotechnology 40:1349-1359.",
    "nnls": "Lawson & Hanson (1974) Solving Least Squares Problems. Prentice-Hall.",
    "stihc": "Higgins, Li & Carey (2025) stIHC: a spatial transcriptomics iterative "
    "hierarchical clustering method for identifying spatial gene co-expression modules. "
    "Quantitative Biology, doi:10.1002/qub2.70011.",
    "harmony": "Korsunsky et al. (2019) Fast, sensitive and accurate integration of single-cell "
    "data with Harmony. Nature Methods 16:1289-1296.",
    "mnn": "Haghverdi, Lun, Morgan & Marioni (2018) Batch effects in single-cell RNA-sequencing "
    "data are corrected by matching mutual nearest neighbors. Nature Biotechnology 36:421-427.",
    "cca": "Butler, Hoffman, Smibert, Papalexi & Satija (2018) Integrating single-cell "
    "transcriptomic data across different conditions, technologies, and species. Nature "
    "Biotechnology 36:411-420.",
    "lisi": "Korsunsky et al. (2019) (LISI) Nature Methods 16:1289-1296; silhouette: Rousseeuw "
    "(1987) J. Comput. Appl. Math. 20:53-65.",
    "spatialglue": "Long et al. (2024) Deciphering spatial domains from spatial multi-omics "
    "with SpatialGlue. Nature Methods 21:1658-1667.",
}

_STYLE = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#222;
background:#fafafa}
header{background:#1f3b57;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:24px} header p{margin:4px 0 0;opacity:.85}
nav{padding:8px 32px;background:#e9eef3;font-size:14px} nav a{margin-right:16px;color:#1f3b57}
section{background:#fff;margin:18px 32px;padding:16px 24px;border-radius:6px;
box-shadow:0 1px 3px rgba(0,0,0,.12)}
h2{margin-top:0;color:#1f3b57;font-size:20px}
figure{display:inline-block;margin:8px;vertical-align:top}
figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:13px;color:#555;max-width:560px}
table{border-collapse:collapse;font-size:13px}
th,td{padding:4px 10px;border-bottom:1px solid #e3e3e3;text-align:right}
th{background:#f0f3f6;cursor:pointer;position:sticky;top:0} th:first-child,td:first-child
{text-align:left}
.scroll{max-height:480px;overflow:auto;display:inline-block}
.metrics td:first-child{font-weight:600}
td.text{text-align:left}
.summary td{text-align:left} .summary td:first-child{font-weight:600;padding-right:24px}
.explained td,.explained th{text-align:left;vertical-align:top}
.explained td:last-child{max-width:560px}
p.note{color:#555;font-size:14px}
pre{background:#f5f5f5;padding:10px;overflow:auto;font-size:12px;max-height:360px}
"""

_SORT_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th, col){
    th.addEventListener('click', function(){
      var body = table.tBodies[0];
      var rows = Array.from(body.rows);
      var asc = th.dataset.order !== 'asc';
      rows.sort(function(a, b){
        var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
        if (x === undefined || y === undefined) {
          if (x !== undefined) return -1;
          if (y !== undefined) return 1;
          var cmp = a.cells[col].textContent.localeCompare(b.cells[col].textContent,
                                                           undefined, {numeric: true});
          return asc ? cmp : -cmp;
        }
        var nx = parseFloat(x), ny = parseFloat(y);
        var diff = nx === ny ? 0 : (nx < ny ? -1 : 1);
        return asc ? diff : -diff;
      });
      rows.forEach(function(r){ body.appendChild(r); });
      th.dataset.order = asc ? 'asc' : 'desc';
    });
  });
});
"""


#: p-values below this are printed as "< 1e-300": beyond it digits only reflect rounding.
PVALUE_FLOOR = 1e-300
#: What a table shows for a value that does not exist (NaN, infinite, missing).
MISSING = "\u2014"
#: Column names whose values are p-values (or q-values), and log10 p-values.
PVALUE_COLUMNS = frozenset(
    {"pval", "qval", "p-value", "q-value", "pvals", "pvals_adj", "pval_rand", "qval_by"}
)
LOG10_PVALUE_COLUMNS = frozenset({"log10_pval", "log10 p", "log10_p"})
_KINDS = ("auto", "pvalue", "log10_pvalue")
_BELOW_FLOOR = "< 1e-300"


def format_value(value: Any, kind: str = "auto", *, digits: int = 3) -> str:
    """The text of one value as every table of the report prints it.

        Integers (and floats holding a whole number below a million) print as integers with
        thousands separators; other floats with ``digits`` significant digits, in scientific
        notation below 0.001 and from a million on, as ``"> 1e300"`` beyond 1e300 (an overflow
    kept finite). NaN, infinite and missing values print as
        a dash: the section says why in a note. Numbers (p-values above all) print down to
        1e-300 and as ``"< 1e-300"`` beyond, where the digits of a double only reflect
        rounding (the smallest double, 2.2e-308, is what an underflowed p-value becomes).

        Parameters
        ----------
        value
            A number, or anything else (printed with ``str``).
        kind
            ``"auto"``; ``"pvalue"`` for p- and q-values; ``"log10_pvalue"`` for the log10 of
            a p-value, printed as the p-value itself.
        digits
            Significant digits of floats.

        Returns
        -------
        str

        Examples
        --------
        >>> [format_value(v) for v in (1660, 1660.0, 16218, 0.55123, 9.58e13, 2.5e-5)]
        ['1,660', '1,660', '16,218', '0.551', '9.58e13', '2.5e-5']
        >>> [format_value(v) for v in (float("inf"), float("nan"), None, True)]
        ['\u2014', '\u2014', '\u2014', 'yes']
        >>> [format_value(p, "pvalue") for p in (0.0123, 1.05e-62, 2.2250738585072014e-308, 0.0)]
        ['0.0123', '1.05e-62', '< 1e-300', '< 1e-300']
        >>> format_value(-62.0, "log10_pvalue"), format_value(-1551.3, "log10_pvalue")
        ('1e-62', '< 1e-300')
        >>> format_value(1.7976931348623157e308)
        '> 1e300'
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if value is None or value is pd.NA or value is pd.NaT:
        return MISSING
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, Integral):
        return f"{int(value):,}"
    if not isinstance(value, Real):
        return str(value)
    number = float(value)
    if kind == "log10_pvalue":
        if math.isnan(number) or number == math.inf:
            return MISSING
        if number < math.log10(PVALUE_FLOOR):
            return _BELOW_FLOOR
        return _significant(10.0**number, digits)
    if not math.isfinite(number):
        return MISSING
    if kind == "pvalue":
        if number < PVALUE_FLOOR:
            return _BELOW_FLOOR
        return _significant(number, digits)
    if number == round(number) and abs(number) < 1e6:
        return f"{int(round(number)):,}"
    if abs(number) < PVALUE_FLOOR:
        # Below 1e-300 a double holds an underflow, not a measurement.
        return _BELOW_FLOOR if number > 0 else "> -1e-300"
    if abs(number) >= 1 / PVALUE_FLOOR:
        # Beyond 1e300 a double holds an overflow kept finite (the CSV's note says the size).
        return "> 1e300" if number > 0 else "< -1e300"
    return _significant(number, digits)


def _significant(number: float, digits: int) -> str:
    size = abs(number)
    if size == 0:
        return "0"
    if size >= 1e6 or size < 1e-3:
        mantissa, exponent = f"{number:.{digits - 1}e}".split("e")
        if "." in mantissa:
            mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    if size >= 1000:
        return f"{number:,.0f}"
    text = f"{number:.{digits}g}"
    return f"{number:,.0f}" if "e" in text else text


def column_kind(name: Any) -> str:
    """How :func:`format_value` prints a column, from its name.

    Examples
    --------
    >>> column_kind("qval"), column_kind("log10_pval"), column_kind("statistic")
    ('pvalue', 'log10_pvalue', 'auto')
    """
    text = str(name).lower()
    if text in PVALUE_COLUMNS:
        return "pvalue"
    if text in LOG10_PVALUE_COLUMNS:
        return "log10_pvalue"
    return "auto"


@dataclass
class Section:
    """One report section: a title, an anchor id, and HTML blocks."""

    title: str
    anchor: str
    blocks: list[str] = field(default_factory=list)

    def add_text(self, text: str) -> None:
        """Append a paragraph of plain text (escaped)."""
        self.blocks.append(f"<p>{html.escape(text)}</p>")

    def add_figure(self, png_base64: str, caption: str) -> None:
        """Append an embedded PNG figure with a caption."""
        self.blocks.append(
            f'<figure><img alt="{html.escape(caption)}" '
            f'src="data:image/png;base64,{png_base64}"/>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def add_table(
        self,
        table: pd.DataFrame,
        *,
        sortable: bool = True,
        css_class: str = "",
        kinds: Mapping[str, str] | None = None,
        header: bool = True,
    ) -> None:
        """Append a table; numbers keep full precision for sorting but print as
        :func:`format_value` writes them (see :func:`table_html`)."""
        self.blocks.append(
            table_html(table, sortable=sortable, css_class=css_class, kinds=kinds, header=header)
        )

    def add_html(self, fragment: str) -> None:
        """Append a trusted HTML fragment."""
        self.blocks.append(fragment)


def table_html(
    table: pd.DataFrame,
    *,
    sortable: bool = True,
    css_class: str = "",
    kinds: Mapping[str, str] | None = None,
    header: bool = True,
) -> str:
    """Render a DataFrame (index as first column) as an HTML table.

    Every value is printed by :func:`format_value`; ``kinds`` maps a column to its kind
    (``"pvalue"``, ``"log10_pvalue"``), otherwise :func:`column_kind` decides from the
    column's name. Numeric cells carry their exact value (log10 for p-values) in
    ``data-value`` so that sorting by a column orders by number, missing values last; a
    log10 p-value below 1e-300 shows its exponent when the pointer rests on it.

    Examples
    --------
    >>> table = pd.DataFrame({"called": [1660, 12], "pval": [2.2e-308, 0.01]},
    ...                      index=pd.Index(["a", "b"], name="method"))
    >>> text = table_html(table)
    >>> ">1,660<" in text and ">&lt; 1e-300<" in text and "e-308" not in text
    True
    """
    classes = " ".join(c for c in ("sortable" if sortable else "", css_class) if c)
    kinds = dict(kinds or {})
    columns = list(table.columns)
    column_kinds = [kinds.get(c, column_kind(c)) for c in columns]
    head = ""
    if header:
        names = [table.index.name or "", *columns]
        head = "<thead><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in names)
        head += "</tr></thead>"
    rows = []
    for label, row in zip(table.index, table.itertuples(index=False), strict=True):
        cells = [f"<td>{html.escape(format_value(label))}</td>"]
        cells += [_cell(value, kind) for value, kind in zip(row, column_kinds, strict=True)]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="scroll"><table class="{classes}">{head}'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _cell(value: Any, kind: str) -> str:
    shown = html.escape(format_value(value, kind))
    if isinstance(value, bool | np.bool_) or not isinstance(value, Real):
        return f'<td class="text">{shown}</td>' if isinstance(value, str) else f"<td>{shown}</td>"
    number = float(value)
    if math.isnan(number):
        return f"<td>{shown}</td>"
    title = ""
    if kind == "pvalue" and number >= 0:
        # Sorting by log10 keeps the order of p-values that print alike as "< 1e-300".
        number = math.log10(number) if number > 0 else -math.inf
    elif kind == "log10_pvalue" and number < math.log10(PVALUE_FLOOR):
        title = f' title="log10 p = {number:.1f}"'
    key = "1e999" if number == math.inf else "-1e999" if number == -math.inf else repr(number)
    return f'<td data-value="{key}"{title}>{shown}</td>'


def methods_paragraph(
    provenance: dict[str, Any],
    used: list[str],
    *,
    observation: str = "spot",
    n_removed: int | None = None,
) -> str:
    """A methods paragraph generated from the provenance record, with numbered citations.

    Parameters
    ----------
    provenance
        The run's provenance record (versions, parameters, seed).
    used
        The steps that ran.
    observation
        What the observations are: ``"spot"`` or ``"cell"``.
    n_removed
        Observations removed by quality control before the statistics; ``None`` when the
        run removed none.

    Returns
    -------
    str
        HTML: the paragraph and its numbered references.

    Examples
    --------
    >>> text = methods_paragraph({"versions": {"spatiome": "0.1.0"}, "seed": 0},
    ...                          ["qc", "sparkx"])
    >>> "SPARK-X [2]" in text and "Genome Biology 22:184" in text
    True
    """
    versions = provenance.get("versions", {})
    params = provenance.get("parameters", {})
    cited: list[str] = []
    unit = "cell" if observation == "cell" else "spot"
    units = f"{unit}s"
    kept = (
        f"no {unit} was removed"
        if not n_removed
        else f"{n_removed:,} {unit if n_removed == 1 else units} removed by quality control "
        "were left out of the statistics"
    )

    def cite(*keys: str) -> str:
        numbers = []
        for key in keys:
            if key not in cited:
                cited.append(key)
            numbers.append(str(cited.index(key) + 1))
        return "[" + ", ".join(numbers) + "]"

    parts = [
        f"Data were analysed with spatiome {versions.get('spatiome', '?')} "
        f"(Python {provenance.get('python', '?')}, anndata {versions.get('anndata', '?')}, "
        f"scanpy {versions.get('scanpy', '?')}) with random seed {provenance.get('seed')}."
    ]
    if "qc" in used:
        parts.append(f"Per-{unit} quality metrics were computed with scanpy {cite('qc')}.")
    if "spatial_qc" in used and params.get("spatial_qc", True):
        parts.append(
            f"{units.capitalize()} were flagged as low quality below a floor of 1% of the "
            "median library size or detected genes; as sample-wide robust outliers (more "
            "than 3 median absolute deviations, and at least two-fold, below the median log "
            "library size or detected genes, or above the median mitochondrial share) "
            f"{cite('scater')}; as local outliers relative to their 36 nearest spatial "
            f"neighbours as in SpotSweeper {cite('spotsweeper')}; or within contiguous "
            "regions whose smoothed level departs the same way from the tissue's; "
            f"{kept}."
        )
    if "doublets" in used and params.get("doublets") is not False:
        parts.append(
            "On single-cell-resolution data, doublets were scored against simulated random "
            f"and spatially adjacent pairs in PCA space {cite('scrublet')}."
        )
    if "normalize" in used:
        parts.append(
            "Counts were scaled to the median library size and log1p-transformed "
            f"(target sum {params.get('target_sum') or 'median'})."
        )
    if "reduce" in used:
        parts.append(
            f"PCA ({params.get('n_comps', 30)} components) and UMAP {cite('umap')} were "
            "computed on highly variable genes."
        )
    if "leiden" in used:
        size = (
            f"{params['n_domains']} clusters"
            if params.get("n_domains")
            else f"resolution {params.get('resolution', 1.0)}"
        )
        parts.append(
            f"{units.capitalize()} were clustered with the Leiden algorithm {cite('leiden')} "
            f"({size})."
        )
    if "domains_cluster" in used:
        parts.append(
            "Spatial domains were found by a Gaussian mixture with one shared covariance on "
            "the principal components of the expression next to their three-step spatial "
            f"neighbourhood mean (BANKSY-style, lambda 0.5) {cite('banksy')}, with a Potts "
            "smoothing of the labels."
        )
    if "domains_bison" in used:
        parts.append(
            f"BISON {cite('bison')} biclustered {units} and genes (Poisson-Gamma block model "
            "with a Potts prior over the spatial graph, collapsed Gibbs sampling, "
            f"{params.get('n_gene_groups', '?')} discriminating gene groups)."
        )
    if "domains_gnn" in used:
        parts.append(
            "A graph attention autoencoder over the spatial graph (STAGATE-style) "
            f"{cite('stagate')} embedded the {units}, clustered by a Gaussian mixture."
        )
    if "integration" in used:
        method = params.get("batch_correction", "harmony")
        names = {"harmony": "Harmony", "mnn": "mutual nearest neighbours", "cca": "CCA-style "
                 "alignment followed by mutual nearest neighbours"}  # fmt: skip
        parts.append(
            f"Sample effects in the PCA embedding were corrected by {names[method]} "
            f"{cite(method)}; the expression graph, UMAP, Leiden clusters and the "
            "domain features used the corrected embedding. Batch mixing (LISI, harmonypy) and "
            f"label conservation (silhouette) were measured before and after {cite('lisi')}."
        )
    if "multimodal" in used:
        parts.append(
            f"The RNA was integrated with the {params.get('modality')} modality by a "
            f"SpatialGlue-style dual-attention graph autoencoder {cite('spatialglue')} "
            "(spatial and feature kNN graphs per modality, within- and cross-modality "
            "attention), and the integrated embedding was clustered by a Gaussian mixture."
        )
    if "markers" in used:
        parts.append(
            "Marker genes of each domain were ranked by Wilcoxon rank-sum tests of the domain "
            f"against all other {units} {cite('wilcoxon')} (Benjamini-Hochberg {cite('bh')})."
        )
    graph = params.get("graph_method", "kNN")
    for key, name in (("moran", "Moran's I"), ("geary", "Geary's C")):
        if key in used:
            parts.append(
                f"Spatial autocorrelation of every log-normalized gene was measured by {name} "
                f"{cite(key)} on a {graph} spatial neighbour graph with row-normalized "
                f"weights; analytic p-values under normality were adjusted by "
                f"Benjamini-Hochberg {cite('bh')}."
            )
    if "sparkx" in used:
        parts.append(
            f"SPARK-X {cite('sparkx')} tested the raw counts of every gene with eleven "
            f"coordinate kernels, combined by the Cauchy combination test {cite('acat')} and "
            f"adjusted by Benjamini-Hochberg {cite('bh')}."
        )
    if "spatialde" in used:
        parts.append(
            f"SpatialDE {cite('spatialde')} fitted Gaussian process models over ten length "
            "scales to variance-stabilized counts with log total counts regressed out; "
            f"p-values were adjusted by Benjamini-Hochberg {cite('bh')}."
        )
    if "trendseek" in used:
        parts.append(
            f"trendsceek {cite('trendseek')} compared four mark statistics of "
            f"log-normalized expression with {params.get('trendseek_permutations', '?')} "
            f"random relabellings per gene (global envelope test, Benjamini-Hochberg "
            f"{cite('bh')})."
        )
    if "deconvolution" in used:
        parts.append(_deconvolution_sentence(params, cite, unit))
    n_genes = params.get("max_module_genes", "?")
    if "modules_stihc" in used:
        parts.append(
            f"Up to {n_genes} spatially variable genes were grouped into co-expression modules "
            f"by stIHC {cite('stihc')} (finite-element smoothing, iterative hierarchical "
            "clustering on Spearman correlation)."
        )
    if "modules_aeh" in used:
        parts.append(
            f"SpatialDE's automatic expression histology {cite('spatialde')} grouped the same "
            f"genes into {params.get('n_patterns', '?')} spatial patterns."
        )
    refs = "".join(f"<li>{html.escape(CITATIONS[k])}</li>" for k in cited)
    return f"<p>{html.escape(' '.join(parts))}</p><ol>{refs}</ol>"


def _deconvolution_sentence(params: dict[str, Any], cite, unit: str) -> str:
    method = params.get("deconv_method", "rctd")
    reference = f"cell-type signatures of the single-cell reference {params.get('reference')}"
    if method == "nnls":
        text = (
            f"Cell-type fractions were estimated by non-negative least squares "
            f"{cite('nnls')} of each {unit}'s counts on the {reference}."
        )
    elif method == "nb_vi":
        text = (
            f"Cell-type abundances were estimated with a cell2location-style negative "
            f"binomial model {cite('cell2location')} fitted by variational inference "
            f"against the {reference}."
        )
    else:
        text = (
            f"Cell-type fractions were estimated with RCTD's Poisson-log-normal model "
            f"{cite('rctd')} (per-gene platform effect, maximum-likelihood weights) "
            f"against the {reference}."
        )
    if params.get("deconv_smoothing"):
        text += (
            f" A conditional autoregressive prior over the spatial graph (CARD-style "
            f"{cite('card')}, strength {params['deconv_smoothing']:g}) smoothed them."
        )
    return text


def render_report(title: str, subtitle: str, sections: list[Section]) -> str:
    """Assemble the full HTML page."""
    nav = "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
    body = "".join(
        f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>{"".join(s.blocks)}</section>'
        for s in sections
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p></header>"
        f"<nav>{nav}</nav>{body}<script>{_SORT_SCRIPT}</script></body></html>"
    )


def write_report(path: str | Path, title: str, subtitle: str, sections: list[Section]) -> Path:
    """Render and write the report atomically; returns the path."""
    return write_text_atomic(path, render_report(title, subtitle, sections))
