"""Per-spot colour and texture features of the H&E image under each Visium spot.

No model weights are downloaded: the features are classical statistics of the pixels in the
disc under each spot, computed with numpy for many spots at once (patches are gathered
into a spots x pixels x pixels array, in chunks of spots).
"""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd
from anndata import AnnData

from .._core.validate import SpatiomeInputError, check_adata, get_spatial

# Ruifrok and Johnston's stain vectors (rows: haematoxylin, eosin, DAB) in optical density,
# as scikit-image's rgb2hed uses them.
_STAIN_OD = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_STAIN_FROM_OD = np.linalg.inv(_STAIN_OD / np.linalg.norm(_STAIN_OD, axis=1, keepdims=True))
_GREY = np.array([0.299, 0.587, 0.114])  # ITU-R 601 luma
# Gathered patch values held at once (float64): bounds the scratch memory to ~64 MB x 8.
_CHUNK_VALUES = 1 << 23
FEATURES = (
    [f"{c}_{s}" for c in ("red", "green", "blue") for s in ("mean", "sd")]
    + [f"{c}_{s}" for c in ("hematoxylin", "eosin", "dab") for s in ("mean", "sd")]
    + [f"{c}_{s}" for c in ("saturation", "value") for s in ("mean", "sd")]
    + ["gradient_mean", "gradient_sd", "local_variance"]
    + ["glcm_contrast", "glcm_homogeneity", "glcm_energy", "glcm_correlation", "glcm_entropy"]
)
_GROUPS = ["colour"] * 6 + ["stain"] * 6 + ["colour"] * 4 + ["texture"] * 8


def image_features(
    adata: AnnData,
    *,
    library_id: str | None = None,
    image: str = "hires",
    spatial_key: str = "spatial",
    diameter_scale: float = 1.0,
    n_grey_levels: int = 8,
) -> AnnData:
    """Colour and texture features of the tissue image under each spot.

    The patch of a spot is the disc of diameter ``spot_diameter_fullres * scale factor *
    diameter_scale`` image pixels (at least one pixel) centred on the spot, with the spot
    position ``adata.obsm[spatial_key]`` in full-resolution pixels (x = column, y = row,
    as :func:`spatiome.io.read_visium` stores it) times the image's scale factor
    ``tissue_{image}_scalef``. Per spot, over the pixels of its disc that lie in the image:

    - colour: mean and standard deviation of red, green and blue (in [0, 1]), and of HSV
      saturation and value;
    - stain: mean and standard deviation of the haematoxylin, eosin and DAB densities of
      Ruifrok and Johnston's colour deconvolution (optical density times the inverse stain
      matrix, as ``skimage.color.rgb2hed``);
    - texture, on the grey level (luma): mean and standard deviation of the gradient
      magnitude (central differences), mean local variance in 3 x 3 windows, and
      Haralick's contrast, homogeneity, energy (angular second moment), correlation and
      entropy of the grey-level co-occurrence matrix (``n_grey_levels`` levels over
      [0, 1], horizontal and vertical neighbours, symmetric).

    Parameters
    ----------
    adata
        Spots with coordinates in ``adata.obsm[spatial_key]`` and the image and scale
        factors in ``adata.uns["spatial"][library_id]`` (``"images"`` and
        ``"scalefactors"``), as :func:`spatiome.io.read_visium` reads them.
    library_id
        Key in ``adata.uns["spatial"]``; may be omitted when there is only one.
    image
        Image key, ``"hires"`` or ``"lowres"`` (scale factor ``tissue_{image}_scalef``);
        an image under another key is taken at full resolution (scale factor 1).
    spatial_key
        Coordinates in ``adata.obsm``, in full-resolution pixels.
    diameter_scale
        Patch diameter as a multiple of the spot diameter.
    n_grey_levels
        Grey levels of the co-occurrence matrix (2 to 64).

    Returns
    -------
    AnnData
        Spots x features (float32; same ``obs_names`` and order as ``adata``), ready for
        :func:`spatiome.integrate.multimodal.multimodal` with ``modality="image"``.
        ``var["group"]`` is ``"colour"``, ``"stain"`` or ``"texture"``;
        ``obs["image_coverage"]`` the fraction of each disc inside the image;
        ``obsm["spatial"]`` the coordinates; ``uns["image_features"]`` the library, image,
        scale factor, spot diameter and patch diameter in image pixels. ``adata`` is not
        modified.

    Raises
    ------
    SpatiomeInputError
        If the image or scale factors are missing, the image is not RGB(A) or grey, a spot
        lies wholly outside the image, or an argument is out of range.

    References
    ----------
    Ruifrok and Johnston (2001). Quantification of histochemical staining by color
    deconvolution. Analytical and Quantitative Cytology and Histology 23, 291-299.

    Haralick, Shanmugam and Dinstein (1973). Textural features for image classification.
    IEEE Transactions on Systems, Man, and Cybernetics 3, 610-621.

    Examples
    --------
    >>> import anndata, numpy as np
    >>> from spatiome.integrate.image import image_features
    >>> picture = np.full((100, 100, 3), 0.9, dtype=np.float32)
    >>> picture[:, 50:] = (0.5, 0.2, 0.6)  # a purple right half
    >>> adata = anndata.AnnData(np.ones((2, 1)), obsm={"spatial": np.array(
    ...     [[100.0, 200.0], [300.0, 200.0]])})  # full-resolution (x, y)
    >>> adata.uns["spatial"] = {"slide": {"images": {"hires": picture}, "scalefactors": {
    ...     "tissue_hires_scalef": 0.25, "spot_diameter_fullres": 60.0}}}
    >>> features = image_features(adata)
    >>> features.shape, features.uns["image_features"]["patch_diameter_px"]
    ((2, 24), 15)
    >>> features[:, "red_mean"].X.ravel().round(2).tolist()
    [0.9, 0.5]
    """
    check_adata(adata)
    coordinates = get_spatial(adata, spatial_key)[:, :2]
    library_id, picture, scale, diameter = _image_and_scale(adata, library_id, image)
    if (
        not isinstance(diameter_scale, numbers.Real)
        or not np.isfinite(diameter_scale)
        or not diameter_scale > 0
    ):
        raise SpatiomeInputError(
            f"diameter_scale must be a positive number, got {diameter_scale!r}"
        )
    if (
        not isinstance(n_grey_levels, numbers.Integral)
        or isinstance(n_grey_levels, bool)
        or not 2 <= n_grey_levels <= 64
    ):
        raise SpatiomeInputError(
            f"n_grey_levels must be an integer between 2 and 64, got {n_grey_levels!r}"
        )
    rgb = _as_rgb(picture, f"adata.uns['spatial'][{library_id!r}]['images'][{image!r}]")
    side = max(1, int(round(diameter * scale * float(diameter_scale))))
    centres = np.rint(coordinates * scale).astype(np.int64)  # (column, row) in image pixels
    offsets = np.arange(side) - side // 2
    radius = side / 2.0
    # Offsets are pixel centres relative to the spot's pixel; odd sides centre exactly.
    shift = offsets + (0.0 if side % 2 else 0.5)
    disc = (shift[:, None] ** 2 + shift[None, :] ** 2) <= radius**2 + 1e-9

    n_obs = adata.n_obs
    features = np.empty((n_obs, len(FEATURES)), dtype=np.float64)
    coverage = np.empty(n_obs, dtype=np.float64)
    chunk = max(1, _CHUNK_VALUES // (side * side * 3))
    for start in range(0, n_obs, chunk):
        stop = min(start + chunk, n_obs)
        features[start:stop], coverage[start:stop] = _patch_features(
            rgb, centres[start:stop], offsets, disc, int(n_grey_levels)
        )
    outside = np.flatnonzero(coverage == 0)
    if outside.size:
        raise SpatiomeInputError(
            f"{outside.size} spots lie wholly outside the {image!r} image "
            f"({rgb.shape[1]} x {rgb.shape[0]} pixels; first: {adata.obs_names[outside[0]]!r}): "
            f"check library_id, image and the scale factor tissue_{image}_scalef, and that "
            f"adata.obsm[{spatial_key!r}] holds full-resolution (x, y) pixels"
        )
    result = AnnData(
        features.astype(np.float32),
        obs=pd.DataFrame({"image_coverage": coverage}, index=adata.obs_names.copy()),
        var=pd.DataFrame({"group": _GROUPS}, index=pd.Index(FEATURES)),
    )
    result.obsm["spatial"] = coordinates.copy()
    result.uns["image_features"] = {
        "library_id": library_id,
        "image": image,
        "scale_factor": float(scale),
        "spot_diameter_fullres": float(diameter),
        "diameter_scale": float(diameter_scale),
        "patch_diameter_px": int(side),
        "n_grey_levels": int(n_grey_levels),
    }
    return result


def _image_and_scale(
    adata: AnnData, library_id: str | None, image: str
) -> tuple[str, np.ndarray, float, float]:
    spatial = adata.uns.get("spatial")
    if not isinstance(spatial, dict) or not spatial:
        raise SpatiomeInputError(
            "adata.uns['spatial'] is missing: read the data with "
            "spatiome.io.read_visium(path, load_images=True), which stores the images and "
            "scale factors there"
        )
    if library_id is None:
        if len(spatial) != 1:
            raise SpatiomeInputError(
                f"adata.uns['spatial'] holds {len(spatial)} libraries {sorted(spatial)}: "
                "pass library_id="
            )
        library_id = next(iter(spatial))
    if library_id not in spatial:
        raise SpatiomeInputError(
            f"library_id {library_id!r} is not in adata.uns['spatial'] (has {sorted(spatial)})"
        )
    entry = spatial[library_id]
    images = entry.get("images", {}) or {}
    if image not in images:
        raise SpatiomeInputError(
            f"adata.uns['spatial'][{library_id!r}]['images'] has no {image!r} image "
            f"(has {sorted(images)}): pass image= or read with load_images=True"
        )
    scalefactors = entry.get("scalefactors", {}) or {}
    key = f"tissue_{image}_scalef"
    if image in ("hires", "lowres") or key in scalefactors:
        if key not in scalefactors:
            raise SpatiomeInputError(
                f"adata.uns['spatial'][{library_id!r}]['scalefactors'] has no {key!r}: the "
                "image cannot be aligned to the spots (scalefactors_json.json is needed)"
            )
        scale = float(scalefactors[key])
    else:
        scale = 1.0
    if "spot_diameter_fullres" not in scalefactors:
        raise SpatiomeInputError(
            f"adata.uns['spatial'][{library_id!r}]['scalefactors'] has no "
            "'spot_diameter_fullres': the patch size is unknown (scalefactors_json.json)"
        )
    diameter = float(scalefactors["spot_diameter_fullres"])
    if not (np.isfinite(scale) and scale > 0 and np.isfinite(diameter) and diameter > 0):
        raise SpatiomeInputError(
            f"scale factor {key} ({scale}) and spot_diameter_fullres ({diameter}) must be "
            "positive numbers"
        )
    return library_id, np.asarray(images[image]), scale, diameter


def _as_rgb(picture: np.ndarray, where: str) -> np.ndarray:
    """The image as float (rows, columns, 3) in [0, 1]."""
    if picture.ndim == 2:
        picture = picture[:, :, None]
    if picture.ndim != 3 or picture.shape[2] not in (1, 3, 4) or min(picture.shape[:2]) < 1:
        raise SpatiomeInputError(
            f"{where} must be a (rows, columns) grey or (rows, columns, 3|4) RGB(A) image, "
            f"got shape {picture.shape}"
        )
    if picture.dtype == bool or not np.issubdtype(picture.dtype, np.number):
        raise SpatiomeInputError(f"{where} must hold numbers, got dtype {picture.dtype}")
    if np.issubdtype(picture.dtype, np.integer):
        values = picture.astype(np.float32) / float(np.iinfo(picture.dtype).max)
    else:
        values = picture.astype(np.float32)
        if not np.isfinite(values).all():
            raise SpatiomeInputError(f"{where} contains NaN or infinite values")
        if values.max(initial=0.0) > 1.0:
            # Floats beyond 1 are taken as 8-bit intensities.
            values = values / 255.0
    values = np.clip(values[:, :, :3], 0.0, 1.0)
    if values.shape[2] == 1:
        values = np.repeat(values, 3, axis=2)
    return values


def _masked_mean_sd(values: np.ndarray, weights: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Mean and sd over the pixel axes (1, 2) of (spots, s, s, channels) values."""
    mean = np.einsum("bijc,bij->bc", values, weights) / count[:, None]
    square = np.einsum("bijc,bij->bc", values * values, weights) / count[:, None]
    sd = np.sqrt(np.maximum(square - mean * mean, 0.0))
    return np.stack([mean, sd], axis=2).reshape(values.shape[0], -1)


def _patch_features(
    rgb: np.ndarray,
    centres: np.ndarray,
    offsets: np.ndarray,
    disc: np.ndarray,
    n_levels: int,
) -> tuple[np.ndarray, np.ndarray]:
    n_rows, n_cols = rgb.shape[:2]
    rows = centres[:, 1, None] + offsets[None, :]
    cols = centres[:, 0, None] + offsets[None, :]
    valid = (
        ((rows >= 0) & (rows < n_rows))[:, :, None]
        & ((cols >= 0) & (cols < n_cols))[:, None, :]
        & disc[None, :, :]
    )
    patches = rgb[
        np.clip(rows, 0, n_rows - 1)[:, :, None], np.clip(cols, 0, n_cols - 1)[:, None, :]
    ].astype(np.float64)
    weights = valid.astype(np.float64)
    count = weights.sum(axis=(1, 2))
    coverage = count / disc.sum()
    count = np.maximum(count, 1.0)

    colour = _masked_mean_sd(patches, weights, count)
    density = -np.log10(np.maximum(patches, 1.0 / 255.0))
    stains = np.maximum(density @ _STAIN_FROM_OD, 0.0)
    stain = _masked_mean_sd(stains, weights, count)
    brightest = patches.max(axis=3)
    darkest = patches.min(axis=3)
    saturation = np.divide(
        brightest - darkest, brightest, out=np.zeros_like(brightest), where=brightest > 0
    )
    hsv = _masked_mean_sd(np.stack([saturation, brightest], axis=3), weights, count)

    grey = patches @ _GREY
    side = grey.shape[1]
    if side > 1:
        gradient_rows, gradient_cols = np.gradient(grey, axis=(1, 2))
        magnitude = np.sqrt(gradient_rows**2 + gradient_cols**2)
    else:
        magnitude = np.zeros_like(grey)
    gradient = _masked_mean_sd(magnitude[..., None], weights, count)
    local = _local_variance(grey)
    local_variance = (np.einsum("bij,bij->b", local, weights) / count)[:, None]
    texture = _cooccurrence(grey, valid, n_levels)
    features = np.hstack([colour, stain, hsv, gradient, local_variance, texture])
    return features, coverage


def _local_variance(grey: np.ndarray) -> np.ndarray:
    """Variance in the 3 x 3 window around each pixel (edges replicated)."""
    padded = np.pad(grey, ((0, 0), (1, 1), (1, 1)), mode="edge")
    side = grey.shape[1]
    windows = [padded[:, i : i + side, j : j + side] for i in range(3) for j in range(3)]
    total = np.zeros_like(grey)
    square = np.zeros_like(grey)
    for window in windows:
        total += window
        square += window * window
    mean = total / 9.0
    return np.maximum(square / 9.0 - mean * mean, 0.0)


def _cooccurrence(grey: np.ndarray, valid: np.ndarray, n_levels: int) -> np.ndarray:
    """Haralick statistics of the symmetric grey-level co-occurrence matrix per spot."""
    n_spots = grey.shape[0]
    levels = np.minimum((grey * n_levels).astype(np.int64), n_levels - 1)
    cells = n_levels * n_levels
    spot = np.arange(n_spots)[:, None, None] * cells
    counts = np.zeros(n_spots * cells, dtype=np.float64)
    for first, second, ok in (
        (levels[:, :, :-1], levels[:, :, 1:], valid[:, :, :-1] & valid[:, :, 1:]),
        (levels[:, :-1, :], levels[:, 1:, :], valid[:, :-1, :] & valid[:, 1:, :]),
    ):
        codes = (spot + first * n_levels + second)[ok]
        counts += np.bincount(codes, minlength=n_spots * cells)
    matrix = counts.reshape(n_spots, n_levels, n_levels)
    matrix = matrix + matrix.transpose(0, 2, 1)
    total = matrix.sum(axis=(1, 2), keepdims=True)
    p = np.divide(matrix, total, out=np.zeros_like(matrix), where=total > 0)
    i = np.arange(n_levels, dtype=np.float64)[:, None]
    j = i.T
    contrast = (p * (i - j) ** 2).sum(axis=(1, 2))
    homogeneity = (p / (1.0 + (i - j) ** 2)).sum(axis=(1, 2))
    energy = (p * p).sum(axis=(1, 2))
    mean = (p * i).sum(axis=(1, 2))
    variance = (p * (i - mean[:, None, None]) ** 2).sum(axis=(1, 2))
    covariance = (p * (i - mean[:, None, None]) * (j - mean[:, None, None])).sum(axis=(1, 2))
    # A uniform patch has no grey-level variance: its neighbours are perfectly correlated.
    correlation = np.divide(
        covariance, variance, out=np.ones_like(variance), where=variance > 1e-12
    )
    logs = np.log(p, out=np.zeros_like(p), where=p > 0)
    entropy = -(p * logs).sum(axis=(1, 2))
    return np.stack([contrast, homogeneity, energy, correlation, entropy], axis=1)
