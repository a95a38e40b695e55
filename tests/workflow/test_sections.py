"""The report's sections and its number formatting: plain words, honest numbers.

The sections are built here from a small simulated tissue and hand-made result tables
(p-values at the float minimum, an infinite statistic, untested genes, modules of one
gene), with and without the keys a run adds to its summary.
"""

from __future__ import annotations

import math
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import spatiome as sm
from spatiome.workflow import PipelineConfig
from spatiome.workflow.report import format_value, render_report, table_html
from spatiome.workflow.sections import (
    observation_kind,
    report_sections,
    subtitle,
    summary_table,
    svg_display_table,
)

TINY = float(np.finfo(np.float64).tiny)  # 2.2250738585072014e-308


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize(
    "value, kind, shown",
    [
        (1660, "auto", "1,660"),
        (np.int64(16218), "auto", "16,218"),
        (1660.0, "auto", "1,660"),
        (0.0, "auto", "0"),
        (0.55123, "auto", "0.551"),
        (16.72, "auto", "16.7"),
        (1234.56, "auto", "1,235"),
        (9.58e13, "auto", "9.58e13"),
        (-2.5e-5, "auto", "-2.5e-5"),
        (999.96, "auto", "1,000"),
        (float("inf"), "auto", "\u2014"),
        (float("-inf"), "auto", "\u2014"),
        (float("nan"), "auto", "\u2014"),
        (None, "auto", "\u2014"),
        (pd.NA, "auto", "\u2014"),
        (True, "auto", "yes"),
        ("Layer1", "auto", "Layer1"),
        (0.0123, "pvalue", "0.0123"),
        (1.05e-62, "pvalue", "1.05e-62"),
        (1e-300, "pvalue", "1e-300"),
        (TINY, "pvalue", "< 1e-300"),
        (0.0, "pvalue", "< 1e-300"),
        (1.0, "pvalue", "1"),
        (float("nan"), "pvalue", "\u2014"),
        (-62.0, "log10_pvalue", "1e-62"),
        (-1.5, "log10_pvalue", "0.0316"),
        (-300.0, "log10_pvalue", "1e-300"),
        (-1551.3, "log10_pvalue", "< 1e-300"),
        (float("-inf"), "log10_pvalue", "< 1e-300"),
        (float("nan"), "log10_pvalue", "\u2014"),
    ],
)
def test_format_value(value, kind, shown):
    assert format_value(value, kind) == shown


def test_format_value_never_prints_inf_or_exponent_plus():
    values = [0.0, 1e-310, TINY, 1e300, float("inf"), -float("inf"), 3.2e18, 1e6, 123456.7]
    for value in values:
        for kind in ("auto", "pvalue"):
            text = format_value(value, kind)
            assert "inf" not in text.lower() and "e+" not in text and "e-308" not in text


def test_table_html_formats_every_column_and_sorts_by_number():
    table = pd.DataFrame(
        {"called": [1660, 12], "statistic": [np.inf, 0.5], "pval": [TINY, 0.01]},
        index=pd.Index(["a", "b"], name="method"),
    )
    text = table_html(table)
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", text)
    assert cells == ["a", "1,660", "\u2014", "&lt; 1e-300", "b", "12", "0.5", "0.01"]
    assert "inf" not in text.lower() and "e-308" not in text
    # Numbers sort by their value, p-values by log10 (no float minimum in the page).
    assert 'data-value="1660.0"' in text and 'data-value="1e999"' in text
    assert f'data-value="{math.log10(TINY)!r}"' in text


@pytest.fixture(scope="module")
def run():
    """A simulated tissue with what a run leaves in it, and hand-made result tables."""
    data = sm.datasets.simulate_tissue(n_spots=300, n_genes=30, n_domains=3, random_state=0)
    sm.pp.qc_metrics(data)
    sm.pp.normalize(data)
    data.obs["pct_counts_mt"] = 0.0  # a panel without mitochondrial genes
    data.obs["leiden"] = pd.Categorical(data.obs["domain"].cat.codes.astype(str))
    data.obs["spatial_domain"] = data.obs["domain"].astype(str)
    data.obs["local_outlier"] = np.arange(data.n_obs) % 50 == 0
    markers = sm.domains.markers(data, "spatial_domain")
    genes = list(data.var_names)
    moran = pd.DataFrame(
        {
            "statistic": np.linspace(0.9, 0.0, 30),
            "zscore": np.linspace(80.0, 0.0, 30),
            "pval": [TINY, TINY, *np.logspace(-200, 0, 26), np.nan, np.nan],
            "log10_pval": [-1551.3, -1400.0, *np.linspace(-200, 0, 26), np.nan, np.nan],
        },
        index=genes,
    )
    moran["qval"] = np.minimum(moran["pval"] * 30, 1.0)
    sparkx = pd.DataFrame(
        {
            "statistic": [np.inf, *np.logspace(300, 0, 29)],
            "pval": [TINY, *np.logspace(-290, -1, 29)],
            "log10_pval": [-356.8, *np.linspace(-290, -1, 29)],
        },
        index=genes[::-1],
    )
    sparkx["qval"] = np.minimum(sparkx["pval"] * 30, 1.0)
    module = np.full(30, np.nan)
    module[:12] = [1, 1, 1, 10, 10, 2, 2, 2, 2, 3, 4, -1]  # modules 3 and 4 have one gene
    data.var["module_stihc_module"] = module
    modules = {"stihc": pd.DataFrame({"module": module[:12]}, index=genes[:12])}
    config = PipelineConfig(
        svg_methods=("moran", "sparkx"), domain_methods=("cluster",), module_methods=("stihc",),
        umap=False, n_top_maps=3,
    )  # fmt: skip
    tables = {"moran": moran, "sparkx": sparkx}
    summary = {
        "n_spots": data.n_obs, "n_genes": data.n_vars, "svg_method": "moran", "n_svg": 27,
        "n_clusters": 3, "n_domains_cluster": 3, "n_svg_moran": 27, "n_svg_sparkx": 29,
        "svg_power_moran": 0.9, "svg_fdr_moran": 0.05, "domain_ari": 0.61,
        "domain_ari_cluster": 0.72, "n_true": 10,
    }  # fmt: skip
    provenance = {
        "parameters": {"steps": ["qc", "spatial_qc", "normalize", "leiden", "moran"]},
        "seed": 0, "versions": {"spatiome": "0"}, "inputs": {}, "steps": [],
    }  # fmt: skip
    extra = {"markers": markers, "modules": modules, "mixing": None}
    return data, tables, summary, provenance, config, extra


def _page(run, **summary_keys) -> str:
    data, tables, summary, provenance, config, extra = run
    summary = {**summary, **summary_keys}
    notes = {"qc": [], "domains": [], "moran": [], "sparkx": []}
    # A step's own module count is replaced by the section's; other notes stay.
    notes["modules"] = ["stIHC: 15 modules of two or more genes from 77 genes", "kept note"]
    sections = report_sections(data.copy(), tables, notes, summary, provenance, config, extra)
    return render_report("report", subtitle(summary, data), sections)


@pytest.fixture(scope="module")
def page(run) -> str:
    """The report of the run with the summary a run without extra keys writes."""
    return _page(run)


def _visible_text(page: str) -> str:
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S)
    body = re.sub(r"<pre>.*?</pre>", " ", body, flags=re.S)
    body = re.sub(r"<[^>]+>", " ", body)
    return re.sub(r"\s+", " ", body).replace("&lt;", "<").replace("&#x27;", "'")


def test_page_shows_results_not_internals(page):
    text = _visible_text(page)
    for internal in ("svg_fdr", "domain_ari", "n_svg", "n_spots", "svg_power", "n_clusters"):
        assert internal not in text, internal
    assert not re.search(r"\binf(inity)?\b", text, re.I)
    assert "e-308" not in page and "2.23e-308" not in page and "e+" not in text
    assert "< 1e-300" in text
    # The summary: counts in words, the FDR said, modules of two or more genes only.
    assert "Spots analysed 300" in text
    assert "Spatially variable genes (Moran's I) 27 of 28 genes tested, at FDR 0.05" in text
    assert "Gene modules (stIHC) 3 modules of two or more genes, from 12 genes; 3 in no" in text
    # Truth metrics only in their section, each with what it compares.
    head, truth = text.split("Recovery of the simulated truth", 1)
    assert "ARI" not in head and "adjusted Rand" not in head
    assert "Leiden clusters vs simulated domains 0.61 The Leiden clusters" in truth
    assert "Moran's I: power 0.9" in truth and "simulated with a spatial pattern" in truth


def test_svg_table_prints_pvalues_from_log10_and_explains_dashes(run, page):
    data, tables, *_ = run
    shown, kinds = svg_display_table(tables["sparkx"], "sparkx")
    assert list(shown.columns) == ["statistic", "p-value", "q-value"]
    assert kinds == {"p-value": "log10_pvalue", "q-value": "pvalue"}
    text = _visible_text(page)
    sparkx = text.split("Spatially variable genes (SPARK-X) ", 2)[-1]
    assert "too large for a floating-point number" in sparkx
    moran = text.split("Spatially variable genes (Moran's I) ", 2)[-1]
    assert "2 genes could not be tested (no counts, or the same value, in every spot)" in moran


def test_module_section_calls_single_genes_unassigned_and_sorts_numerically(page):
    text = _visible_text(page)
    modules = text.split("module genes examples", 1)[1]
    rows = re.findall(r"(\d+|unassigned) (\d+) Gene\d{4}", modules)
    assert rows == [("1", "3"), ("2", "4"), ("10", "2"), ("unassigned", "3")]
    assert "(1 gene)" not in modules and "1 genes" not in modules
    assert "15 modules" not in text and "kept note" in text


def test_qc_section_leaves_out_metrics_that_are_zero_everywhere(page):
    text = _visible_text(page)
    assert "mitochondrial share is zero or missing in every spot" in text
    assert "Per-spot QC metrics: total counts, detected genes." in text
    assert "flagged spots are outlined" in text


def test_cells_are_called_cells(run):
    text = _visible_text(_page(run, observation="cell"))
    assert "300 cells \u00d7 30 genes" in text and "Cells analysed 300" in text
    assert "Per-cell QC metrics" in text and "flagged cells are outlined" in text
    assert "Spots" not in text and "no spot" not in text
    assert observation_kind(None, {}) == "spot"


def test_removed_observations_and_gene_filter_when_the_run_records_them(run):
    data, tables, summary, _, config, extra = run
    keys = {
        "n_obs_input": 320,
        "n_obs_removed": 20,
        "removed_reasons": {"with fewer than 100 counts": 15, "in artifacts": 5},
        "n_genes_input": 45,
        "gene_filter": "detected in at least 3 spots",
    }
    table = summary_table(data, tables, {**summary, **keys}, config, extra["modules"])
    values = table["value"].to_dict()
    assert values["Spots analysed"] == "300 of 320"
    assert values["Spots removed"] == "20 (15 with fewer than 100 counts; 5 in artifacts)"
    assert values["Genes"] == "30 of 45 kept (detected in at least 3 spots)"
    text = _visible_text(_page(run, **keys))
    assert "were removed before the statistics" in text and "no spot was removed" not in text
    plain = summary_table(data, tables, summary, config, extra["modules"])["value"]
    assert plain["Spots flagged by quality control (kept)"] == "6 local outliers"
    assert plain["Genes"] == 30


def test_report_size_per_spot_stays_small(page):
    # 300 spots, 8 figures: the reduced-palette figures keep the page light.
    assert len(page.encode()) < 1_000_000
    assert page.count("data:image/png;base64,") >= 8
