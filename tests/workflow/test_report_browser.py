"""The HTML report in headless Chromium: it loads without errors, every section shows, and
what a reader sees is plain: no internal keys, no "inf", no p-value at the float minimum,
no module of one gene, a page light enough to mail.

CI installs Debian's `chromium` (see .ci/run). The screenshot of the page is kept in
`.test-artifacts/report.png` beside the tests' checkout for a person to look at.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import spatiome as sm
from spatiome.workflow import PipelineConfig, run_pipeline

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / ".test-artifacts"
EXPECTED_SECTIONS = (
    "tissue", "qc", "clusters", "domains", "deconvolution", "integration", "interactions",
    "svg", "svg-sparkx", "modules", "methods",
)  # fmt: skip
#: Figures each section shows, at least.
EXPECTED_FIGURES = {
    "qc": 2, "clusters": 2, "domains": 2, "deconvolution": 3, "integration": 2, "svg": 1,
    "modules": 1, "interactions": 4,
}  # fmt: skip
#: The largest report: 2 MB, and a bound in the number of spots that keeps the demo's
#: 3,000 spots under it (0.7 MB + 400 bytes a spot).
MAX_REPORT_BYTES = 2_000_000
BASE_BYTES, BYTES_PER_SPOT = 700_000, 400
#: Summary keys of the run that must not reach the page as they are.
INTERNAL_KEYS = ("svg_fdr", "domain_ari", "n_svg", "svg_power", "n_spots", "n_clusters",
                 "deconv_rmse", "n_domains")  # fmt: skip

# Run inside a copy of the report: record script errors from the first moment, and after
# load write each section's geometry into the page, where --dump-dom can read it.
_PROBE_HEAD = """<script>window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message)));
</script>"""
_PROBE_TAIL = """<script>
function visibleText(section) {
  const copy = section.cloneNode(true);  // the provenance record is data, not prose
  copy.querySelectorAll("pre").forEach(p => p.remove());
  document.body.appendChild(copy);
  const text = copy.innerText;
  copy.remove();
  return text;
}
window.addEventListener("load", () => {
  const sections = [...document.querySelectorAll("section")].map(s => {
    const box = s.getBoundingClientRect(), style = getComputedStyle(s);
    const images = [...s.querySelectorAll("img")];
    return {id: s.id, height: box.height, width: box.width, display: style.display,
            visibility: style.visibility, images: images.length,
            broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).length,
            text: visibleText(s)};
  });
  const moduleRows = [...document.querySelectorAll("#modules tbody tr")].map(
    r => [...r.cells].slice(0, 2).map(c => c.innerText.trim()));
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({sections, moduleRows, errors: window.__errors,
                                   subtitle: document.querySelector("header p").innerText});
  document.body.appendChild(out);
});</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium on this machine (CI installs Debian's chromium)")


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> Path:
    """A report with every section: two samples, domains, deconvolution, neighbourhoods,
    niches and ligand-receptor pairs (a table of gene pairs of the simulation), SVGs,
    modules."""
    folder = tmp_path_factory.mktemp("browser")
    cells = sm.datasets.simulate_tissue(
        n_spots=5000, n_genes=100, layout="random", single_cells=True, n_cell_types=4,
        n_domains=4, mean_depth=400, random_state=0,
    )  # fmt: skip
    reference, spatial = sm.deconv.split_reference(cells, fraction=0.3, random_state=0)
    spots = sm.deconv.pseudo_spots(spatial, spot_radius=27.5, random_state=0)
    sm.io.write_h5ad(reference, folder / "reference.h5ad")
    left = spots.obsm["spatial"][:, 0] < np.median(spots.obsm["spatial"][:, 0])
    both = sm.integrate.concat_samples({"a": spots[left].copy(), "b": spots[~left].copy()})
    genes = list(spots.var_names[:40])
    pairs = pd.DataFrame({"ligand": genes[:20], "receptor": genes[20:]})
    pairs.to_csv(folder / "pairs.csv", index=False)
    config = PipelineConfig(
        umap=True, n_domains=4, svg_methods=("moran", "sparkx"), module_methods=("stihc",),
        reference=str(folder / "reference.h5ad"), max_module_genes=60, interactions=True,
        lr_resource=str(folder / "pairs.csv"),
    )  # fmt: skip
    run_pipeline(both, folder / "out", config, progress=False, cache=False)
    return folder / "out" / "report.html"


def test_report_loads_without_errors_and_shows_every_section(full_report, tmp_path):
    chromium = _chromium()
    page = full_report.read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(
        page.replace("<head>", "<head>" + _PROBE_HEAD, 1).replace(
            "</body>", _PROBE_TAIL + "</body>", 1
        )
    )
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--window-size=1400,1000", "--enable-logging=stderr", "--v=0"]  # fmt: skip
    dom = subprocess.run(
        [chromium, *flags, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    console_errors = [
        line for line in dom.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line
    ]
    assert not console_errors, console_errors
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert found, "the probe did not run: the page did not finish loading"
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert probe["errors"] == []
    sections = {s["id"]: s for s in probe["sections"]}
    assert set(EXPECTED_SECTIONS) <= set(sections), sorted(sections)
    for name, section in sections.items():
        assert section["display"] != "none" and section["visibility"] == "visible", name
        assert section["height"] > 50 and section["width"] > 300, (name, section)
        assert section["broken"] == 0, (name, section)  # every embedded figure decodes
    for name, n_figures in EXPECTED_FIGURES.items():
        assert sections[name]["images"] >= n_figures, (name, sections[name]["images"])
    _check_what_a_reader_sees(probe, sections, full_report)

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "report.png"
    height = int(sum(s["height"] for s in sections.values()) + 400)
    shot = subprocess.run(
        [chromium, *flags[:4], f"--window-size=1400,{min(height, 16000)}",
         f"--screenshot={screenshot}", full_report.as_uri()],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.stat().st_size > 100_000  # a page of figures, not a blank one


def _check_what_a_reader_sees(probe: dict, sections: dict, report: Path) -> None:
    text = "\n".join(s["text"] for s in sections.values()) + "\n" + probe["subtitle"]
    # Numbers: no infinity, no p-value at (or printed as) the float minimum, no "1.66e+03".
    assert not re.search(r"\binf(inity)?\b", text, re.I), re.findall(r".{40}\binf.{20}", text)
    assert "e-308" not in text and "e+" not in text
    assert "< 1e-300" in sections["svg"]["text"] or "e-" in sections["svg"]["text"]
    # The summary in plain words, truth metrics only in their own section.
    for key in INTERNAL_KEYS:
        assert key not in text, key
    summary = sections["tissue"]["text"]
    for phrase in ("Spots analysed", "Genes", "Spatially variable genes (Moran's I)",
                   "Spatially variable genes (SPARK-X)", "at FDR 0.05", "Gene modules (stIHC)",
                   "modules of two or more genes", "Cell types", "Niches",
                   "Ligand-receptor pairs co-located"):  # fmt: skip
        assert phrase in summary, phrase
    before_truth = text.split("Recovery of the simulated truth")[0]
    assert "ARI" not in before_truth and "Rand index" not in before_truth
    # Modules: one row for the unassigned genes, every module of two or more genes, in
    # numeric order.
    rows = probe["moduleRows"]
    assert rows, "the module table is empty"
    modules = [(m, int(n.replace(",", ""))) for m, n in rows if m != "unassigned"]
    assert all(n >= 2 for _, n in modules), rows
    assert [m for m, _ in modules] == sorted((m for m, _ in modules), key=int), rows
    assert sum(m == "unassigned" for m, _ in rows) <= 1
    # Light enough to mail: <= 2 MB, and a bound per spot that implies it for the demo.
    size = report.stat().st_size
    assert size <= MAX_REPORT_BYTES, size
    n_spots = int(re.search(r"([\d,]+) spots", probe["subtitle"]).group(1).replace(",", ""))
    assert size <= BASE_BYTES + BYTES_PER_SPOT * n_spots, (size, n_spots)
