"""Packaging promises: light import, README commands equal to CI's."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_does_not_load_optional_extras_or_heavy_deps():
    code = (
        "import sys, spatiome; spatiome.__version__;"
        "bad = [m for m in ('torch', 'dask', 'distributed', 'spatialdata', 'scanpy')"
        " if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_subpackages_do_not_load_optional_extras():
    # anndata itself imports parts of dask when dask is installed; what matters is that
    # spatiome's subpackages load nothing of the optional extras beyond that.
    code = (
        "import sys, anndata, scanpy\n"
        "extras = ('torch', 'dask', 'distributed', 'spatialdata', 'spatialdata_io', 'squidpy',\n"
        "          'liana')\n"
        "def loaded():\n"
        "    return {m for m in sys.modules if m.split('.')[0] in extras}\n"
        "before = loaded()\n"
        "import spatiome as sm\n"
        "for name in ('io', 'datasets', 'graph', 'pp', 'svg', 'modules', 'domains', 'deconv',\n"
        "             'integrate', 'interactions', 'ml', 'pl', 'workflow'):\n"
        "    getattr(sm, name)\n"
        "print(','.join(sorted(loaded() - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(?:bash|sh)\n(.+?)\n```", setup)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    assert "spatiome demo" in commands[0]
    assert "pytest" in commands[1]
    ci = (REPO / ".ci" / "run").read_text()
    assert commands[1] in ci
