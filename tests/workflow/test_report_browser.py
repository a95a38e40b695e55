"""The HTML report in headless Chromium: it loads without errors and every section shows.

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
import pytest

import spatiome as sm
from spatiome.workflow import PipelineConfig, run_pipeline

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / ".test-artifacts"
EXPECTED_SECTIONS = (
    "tissue", "qc", "clusters", "domains", "deconvolution", "integration", "svg", "svg-sparkx",
    "modules", "methods",
)  # fmt: skip

# Run inside a copy of the report: record script errors from the first moment, and after
# load write each section's geometry into the page, where --dump-dom can read it.
_PROBE_HEAD = """<script>window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message)));
</script>"""
_PROBE_TAIL = """<script>window.addEventListener("load", () => {
  const sections = [...document.querySelectorAll("section")].map(s => {
    const box = s.getBoundingClientRect(), style = getComputedStyle(s);
    const images = [...s.querySelectorAll("img")];
    return {id: s.id, height: box.height, width: box.width, display: style.display,
            visibility: style.visibility, images: images.length,
            broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).length};
  });
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({sections, errors: window.__errors});
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
    """A report with every section: two samples, domains, deconvolution, SVGs, modules."""
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
    config = PipelineConfig(
        umap=True, n_domains=4, svg_methods=("moran", "sparkx"), module_methods=("stihc",),
        reference=str(folder / "reference.h5ad"), max_module_genes=60,
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
    assert sum(s["images"] for s in sections.values()) >= 15

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
