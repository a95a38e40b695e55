"""pl.save writes atomically; figure_to_base64_png encodes a PNG."""

from __future__ import annotations

import base64

import matplotlib.pyplot as plt
import numpy as np
import pytest

from spatiome._core.validate import SpatiomeInputError
from spatiome.pl import figure_to_base64_png, save


@pytest.fixture
def fig():
    figure, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    yield figure
    plt.close(figure)


@pytest.mark.parametrize(
    "name, magic", [("a.png", b"\x89PNG\r\n\x1a\n"), ("a.pdf", b"%PDF"), ("a.svg", b"<?xml")]
)
def test_save_formats_by_suffix(tmp_path, fig, name, magic):
    path = save(fig, tmp_path / "sub" / name)
    assert path.read_bytes().startswith(magic)
    # Only the final file remains: the temporary file was moved into place.
    assert [p.name for p in (tmp_path / "sub").iterdir()] == [name]


def test_save_replaces_existing_file_and_accepts_axes(tmp_path, fig):
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    save(fig.axes[0], target)
    assert target.read_bytes()[:4] == b"\x89PNG"


def test_failed_save_leaves_no_partial_file(tmp_path, fig):
    target = tmp_path / "plot.notaformat"
    with pytest.raises(ValueError):
        save(fig, target)
    assert list(tmp_path.iterdir()) == []


def test_base64_png(fig):
    text = figure_to_base64_png(fig, dpi=50)
    assert isinstance(text, str)
    assert base64.b64decode(text)[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SpatiomeInputError, match="Figure"):
        figure_to_base64_png("not a figure")


def test_base64_png_for_pages_is_narrow_and_light():
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    figure, ax = plt.subplots(figsize=(16, 4))
    ax.scatter(rng.uniform(size=3000), rng.uniform(size=3000), c=rng.uniform(size=3000), s=30)
    full = base64.b64decode(figure_to_base64_png(figure))
    light = base64.b64decode(figure_to_base64_png(figure, max_width=800, colors=128))
    plt.close(figure)
    with Image.open(io.BytesIO(light)) as image:
        assert image.width <= 800 and image.mode == "P"
    assert len(light) < len(full) / 2
    with pytest.raises(SpatiomeInputError, match="colors"):
        figure_to_base64_png(figure, colors=1000)
