"""Per-spot H&E image features (integrate.image_features): geometry, separation, errors,
and equality with scikit-image's colour deconvolution, HSV and co-occurrence statistics."""

from __future__ import annotations

import anndata
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from spatiome._core.validate import SpatiomeInputError
from spatiome.integrate.image import FEATURES, image_features

graycoprops = pytest.importorskip("skimage.feature").graycoprops

SCALE = 0.25
DIAMETER = 60.0  # full-resolution pixels, so the patch is 15 image pixels across


def visium_like(picture, centres_fullres, *, scale=SCALE, diameter=DIAMETER, image="hires"):
    adata = anndata.AnnData(
        np.ones((len(centres_fullres), 1), dtype=np.float32),
        obsm={"spatial": np.asarray(centres_fullres, dtype=np.float64)},
    )
    adata.obs_names = [f"spot{i}" for i in range(adata.n_obs)]
    adata.uns["spatial"] = {
        "lib": {
            "images": {image: picture},
            "scalefactors": {f"tissue_{image}_scalef": scale, "spot_diameter_fullres": diameter},
        }
    }
    return adata


def two_tissues(seed=0):
    """Left half: pale pink, smooth; right half: dark purple, coarse checkerboard nuclei."""
    rng = np.random.default_rng(seed)
    rows, cols = 200, 400
    picture = np.empty((rows, cols, 3), dtype=np.float32)
    picture[:, : cols // 2] = (0.92, 0.75, 0.85)
    yy, xx = np.mgrid[0:rows, cols // 2 : cols]
    checker = ((yy // 2 + xx // 2) % 2).astype(np.float32)[..., None]
    picture[:, cols // 2 :] = checker * np.array([0.35, 0.2, 0.55]) + (1 - checker) * 0.85
    picture += rng.normal(0.0, 0.02, picture.shape).astype(np.float32)
    picture = np.clip(picture, 0.0, 1.0)
    # Spot centres in full-resolution pixels (x, y), away from the border between halves.
    n = 60
    x_image = np.concatenate([rng.uniform(15, 180, n), rng.uniform(220, 385, n)])
    y_image = rng.uniform(15, 185, 2 * n)
    group = np.repeat([0, 1], n)
    return picture, np.c_[x_image, y_image] / SCALE, group


def test_features_separate_groups_and_have_the_expected_direction():
    picture, centres, group = two_tissues()
    features = image_features(visium_like(picture, centres))
    assert features.shape == (120, len(FEATURES))
    assert features.var["group"].isin(["colour", "stain", "texture"]).all()
    assert np.isfinite(features.X).all()
    table = features.to_df()
    left, right = table[group == 0], table[group == 1]
    # Purple, nuclei-rich tissue: more haematoxylin, darker, far more texture.
    assert left["hematoxylin_mean"].max() < right["hematoxylin_mean"].min()
    assert left["value_mean"].min() > right["value_mean"].max() - 0.05
    assert left["gradient_mean"].max() < right["gradient_mean"].min()
    assert left["glcm_contrast"].max() < right["glcm_contrast"].min()
    assert left["local_variance"].max() < right["local_variance"].min()
    assert left["glcm_homogeneity"].min() > right["glcm_homogeneity"].max()
    # Unsupervised: two clusters of the standardized features are the two groups.
    from sklearn.cluster import KMeans

    standardized = (table - table.mean()) / table.std().replace(0, 1)
    labels = KMeans(2, n_init=5, random_state=0).fit_predict(standardized)
    assert adjusted_rand_score(group, labels) == 1.0


def test_colour_statistics_are_exact_on_uniform_patches():
    picture = np.zeros((50, 50, 3), dtype=np.uint8)
    picture[:, :] = (255, 0, 51)
    features = image_features(visium_like(picture, [[100.0, 100.0]])).to_df().iloc[0]
    assert features["red_mean"] == pytest.approx(1.0)
    assert features["blue_mean"] == pytest.approx(0.2)
    assert features["red_sd"] == pytest.approx(0.0, abs=1e-6)
    assert features["saturation_mean"] == pytest.approx(1.0)
    assert features["gradient_mean"] == pytest.approx(0.0, abs=1e-6)
    assert features["glcm_energy"] == pytest.approx(1.0)
    assert features["glcm_asm"] == pytest.approx(1.0)
    assert features["glcm_entropy"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    ("scale", "diameter", "expected"),
    [(0.25, 60.0, 15), (0.1, 89.0, 9), (1.0, 4.0, 4), (0.01, 10.0, 1)],
)
def test_patch_geometry_follows_scale_factor(scale, diameter, expected):
    # A bright disc exactly the size of the spot (in image pixels) on a black image: the
    # patch must see the disc and nothing of its surroundings.
    size = 101
    centre = 50
    side = expected
    yy, xx = np.mgrid[0:size, 0:size]
    offset = 0.0 if side % 2 else 0.5
    inside = ((yy - centre + offset) ** 2 + (xx - centre + offset) ** 2) <= (side / 2) ** 2 + 1e-9
    picture = np.where(inside[..., None], 1.0, 0.0).astype(np.float32) * np.ones(3)
    spot = [[centre / scale, centre / scale]]
    features = image_features(visium_like(picture, spot, scale=scale, diameter=diameter))
    assert features.uns["image_features"]["patch_diameter_px"] == expected
    assert features.uns["image_features"]["scale_factor"] == scale
    assert features[:, "red_mean"].X[0, 0] == pytest.approx(1.0)
    # Twice the diameter: the patch now takes in black pixels around the disc, and a
    # fraction close to (1/2)^2 of it is white.
    wide = image_features(
        visium_like(picture, spot, scale=scale, diameter=diameter), diameter_scale=2.0
    )
    assert wide.uns["image_features"]["patch_diameter_px"] == max(1, round(2 * scale * diameter))
    if expected >= 9:
        assert wide[:, "red_mean"].X[0, 0] == pytest.approx(0.25, abs=0.08)


def test_lowres_image_and_spot_positions():
    picture = np.zeros((40, 40, 3), dtype=np.float32)
    picture[10:20, 20:30] = 1.0  # row 10-19, column 20-29 in the lowres image
    # Full-resolution (x, y) = (column, row) / scale.
    adata = visium_like(picture, [[25 / 0.05, 15 / 0.05], [5 / 0.05, 15 / 0.05]],
                        scale=0.05, diameter=100.0, image="lowres")  # fmt: skip
    features = image_features(adata, image="lowres").to_df()
    assert features["red_mean"].tolist() == pytest.approx([1.0, 0.0])


def test_partial_coverage_and_input_untouched():
    picture = np.full((30, 30, 3), 0.5, dtype=np.float32)
    adata = visium_like(picture, [[0.0, 0.0], [60.0, 60.0]])
    before = adata.copy()
    features = image_features(adata)
    coverage = features.obs["image_coverage"].to_numpy()
    assert 0.2 < coverage[0] < 0.35 and coverage[1] == 1.0  # a corner spot sees a quarter
    assert features.obs_names.equals(adata.obs_names)
    np.testing.assert_array_equal(features.obsm["spatial"], adata.obsm["spatial"])
    assert adata.uns["spatial"]["lib"]["images"]["hires"] is picture
    np.testing.assert_array_equal(picture, 0.5)
    assert adata.obs.equals(before.obs) and list(adata.obsm) == ["spatial"]


def test_chunks_give_the_same_features(monkeypatch):
    import spatiome.integrate.image as image_module

    picture, centres, _ = two_tissues(seed=1)
    adata = visium_like(picture, centres[:40])
    whole = image_features(adata).X
    monkeypatch.setattr(image_module, "_CHUNK_VALUES", 15 * 15 * 3 * 7)
    np.testing.assert_allclose(image_features(adata).X, whole, rtol=1e-6)


def test_accepted_by_multimodal():
    torch = pytest.importorskip("torch")
    from spatiome.datasets import simulate_tissue
    from spatiome.integrate.multimodal import multimodal

    torch.set_num_threads(1)
    rna = simulate_tissue(n_spots=200, n_genes=50, n_domains=2, random_state=0)
    xy = rna.obsm["spatial"]
    side = xy.max(axis=0) + 200.0
    picture = np.full((int(side[1] * SCALE), int(side[0] * SCALE), 3), 0.8, dtype=np.float32)
    adata = rna.copy()
    adata.uns["spatial"] = visium_like(picture, xy).uns["spatial"]
    features = image_features(adata)
    multimodal(rna, features, modality="image", n_epochs=3, n_jobs=1)
    assert rna.obsm["X_multimodal_weights"].columns.tolist() == ["rna", "image"]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("no_uns", "uns\\['spatial'\\] is missing"),
        ("two_libraries", "pass library_id"),
        ("no_image", "has no 'hires' image"),
        ("no_scale", "tissue_hires_scalef"),
        ("no_diameter", "spot_diameter_fullres"),
        ("outside", "wholly outside"),
        ("bad_shape", "RGB\\(A\\) image"),
        ("nan_coordinates", "NaN or infinite"),
        ("diameter_scale", "diameter_scale must be"),
        ("levels", "n_grey_levels must be"),
    ],
)
def test_bad_input(change, match):
    adata = visium_like(np.zeros((40, 40, 3), dtype=np.float32), [[40.0, 40.0], [80.0, 80.0]])
    entry = adata.uns["spatial"]["lib"]
    kwargs = {}
    if change == "no_uns":
        del adata.uns["spatial"]
    elif change == "two_libraries":
        adata.uns["spatial"]["other"] = entry
    elif change == "no_image":
        entry["images"] = {}
    elif change == "no_scale":
        del entry["scalefactors"]["tissue_hires_scalef"]
    elif change == "no_diameter":
        del entry["scalefactors"]["spot_diameter_fullres"]
    elif change == "outside":
        adata.obsm["spatial"][1] = [10_000.0, 10_000.0]
    elif change == "bad_shape":
        entry["images"]["hires"] = np.zeros((40, 40, 2))
    elif change == "nan_coordinates":
        adata.obsm["spatial"][0, 0] = np.nan
    elif change == "diameter_scale":
        kwargs["diameter_scale"] = 0
    elif change == "levels":
        kwargs["n_grey_levels"] = 1
    with pytest.raises(SpatiomeInputError, match=match):
        image_features(adata, **kwargs)


def _disc_pixels(centre_xy, scale, side, shape):
    """(rows, cols) of the image pixels within side / 2 of the spot's pixel (odd sides)."""
    assert side % 2 == 1
    column, row = np.rint(np.asarray(centre_xy) * scale).astype(int)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    inside = (rows - row) ** 2 + (cols - column) ** 2 <= (side / 2) ** 2
    return np.nonzero(inside)


def _glcm_reference(levels, rows, cols, n_levels):
    """graycoprops of the disc's pixel pairs counted one by one, mean of the two angles."""
    inside = set(zip(rows.tolist(), cols.tolist(), strict=True))
    counts = np.zeros((n_levels, n_levels, 1, 2))
    for angle, (step_row, step_col) in enumerate([(0, 1), (1, 0)]):
        for row, col in inside:
            if (row + step_row, col + step_col) in inside:
                first, second = levels[row, col], levels[row + step_row, col + step_col]
                counts[first, second, 0, angle] += 1
                counts[second, first, 0, angle] += 1  # symmetric
    props = ("contrast", "homogeneity", "ASM", "energy", "correlation", "entropy")
    return {p: float(graycoprops(counts, p).mean()) for p in props}


def _ihc_tile():
    data = pytest.importorskip("skimage.data")
    return data.immunohistochemistry()  # shipped with scikit-image: an IHC stained section


STAIN_COLUMNS = [f"{c}_{s}" for c in ("hematoxylin", "eosin", "dab") for s in ("mean", "sd")]


@pytest.mark.parametrize("as_float", [False, True])
def test_stains_hsv_and_texture_equal_scikit_image_on_a_stained_section(as_float):
    from skimage.color import rgb2hed, rgb2hsv

    image = _ihc_tile()  # (512, 512, 3) uint8
    if as_float:  # a float tile in [0, 1]
        image = image[100:400, 50:450].astype(np.float64) / 255.0
    reference_image = image.astype(np.float64) / (1.0 if as_float else 255.0)
    hed, hsv = rgb2hed(reference_image), rgb2hsv(reference_image)
    grey = reference_image @ np.array([0.299, 0.587, 0.114])
    n_levels = 8
    levels = np.minimum((grey * n_levels).astype(int), n_levels - 1)
    scale, diameter = 0.5, 30.0  # a disc 15 image pixels across
    rng = np.random.default_rng(0)
    centres = rng.uniform(10, np.array(image.shape[1::-1]) - 10, (12, 2)) / scale
    centres[0] = (2.0 / scale, 3.0 / scale)  # a spot on the image's corner, partly outside
    adata = visium_like(image, centres, scale=scale, diameter=diameter)
    features = image_features(adata, n_grey_levels=n_levels).to_df()
    assert features.dtypes.eq(np.float64).all()
    for spot, centre in enumerate(centres):
        rows, cols = _disc_pixels(centre, scale, 15, image.shape)
        expected = {}
        for channel, name in enumerate(("hematoxylin", "eosin", "dab")):
            expected[f"{name}_mean"] = hed[rows, cols, channel].mean()
            expected[f"{name}_sd"] = hed[rows, cols, channel].std()
        for channel, name in ((1, "saturation"), (2, "value")):
            expected[f"{name}_mean"] = hsv[rows, cols, channel].mean()
            expected[f"{name}_sd"] = hsv[rows, cols, channel].std()
        for name, value in _glcm_reference(levels, rows, cols, n_levels).items():
            expected[f"glcm_{name.lower()}"] = value
        got = features.iloc[spot][list(expected)].to_numpy(dtype=float)
        np.testing.assert_allclose(got, list(expected.values()), rtol=1e-12, atol=1e-12)
    # The stains are rgb2hed's own unit (the old ones were about 6 times larger).
    assert features["hematoxylin_mean"].max() < 0.2


def test_one_large_spot_covers_a_tile_like_rgb2hed_on_the_tile():
    from skimage.color import rgb2hed

    tile = _ihc_tile()[200:301, 200:301]  # 101 x 101 pixels
    adata = visium_like(tile, [[50.0, 50.0]], scale=1.0, diameter=101.0)
    features = image_features(adata).to_df().iloc[0]
    rows, cols = _disc_pixels([50.0, 50.0], 1.0, 101, tile.shape)
    hed = rgb2hed(tile)[rows, cols]
    np.testing.assert_allclose(
        features[STAIN_COLUMNS].to_numpy(dtype=float),
        np.ravel(np.c_[hed.mean(axis=0), hed.std(axis=0)]),
        rtol=1e-12,
        atol=1e-13,
    )
