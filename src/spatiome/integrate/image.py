"""Per-spot colour and texture features of the H&E image under each Visium spot.

No model weights are downloaded: the features are classical statistics of the pixels in the
disc under each spot. Patches are gathered into a spots x pixels x pixels array, in chunks
of spots; the stain densities, HSV and co-occurrence statistics are scikit-image's
(``rgb2hed``, ``rgb2hsv``, ``graycomatrix`` and ``graycoprops``), called on the patches.
"""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd
from anndata import AnnData
from skimage.color import rgb2hed, rgb2hsv
from skimage.feature import graycomatrix, graycoprops

from .._core.validate import SpatiomeInputError, check_adata, get_spatial

_GREY = np.array([0.299, 0.587, 0.114])  # ITU-R 601 luma
# Gathered patch values held at once (float64): bounds the scratch memory to ~64 MB x 8.
_CHUNK_VALUES = 1 << 23
FEATURES = (
    [f"{c}_{s}" for c in ("red", "green", "blue") for s in ("mean", "sd")]
    + [f"{c}_{s}" for c in ("hematoxylin", "eosin", "dab") for s in ("mean", "sd")]
    + [f"{c}_{s}" for c in ("saturation", "value") for s in ("mean", "sd")]
    + ["gradient_mean", "gradient_sd", "local_variance"]
    + [f"glcm_{p}" for p in ("contrast", "homogeneity", "asm", "energy", "correlation", "entropy")]
)
_GROUPS = ["colour"] * 6 + ["stain"] * 6 + ["colour"] * 4 + ["texture"] * 9
# graycoprops' property names, in the order of the glcm_* features.
_GLCM_PROPERTIES = ("contrast", "homogeneity", "ASM", "energy", "correlation", "entropy")
# Horizontal and vertical neighbours at distance 1 (graycomatrix's angles).
_GLCM_ANGLES = (0.0, np.pi / 2)


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

    - colour: mean and (population) standard deviation of red, green and blue (in
      [0, 1]), and of the saturation and value of ``skimage.color.rgb2hsv``;
    - stain: mean and standard deviation of the haematoxylin, eosin and DAB densities of
      Ruifrok and Johnston's colour deconvolution, as returned by
      ``skimage.color.rgb2hed`` (its unit: ``log(rgb) / log(1e-6)`` times the inverse
      stain matrix, negative densities set to 0);
    - texture, on the grey level (ITU-R 601 luma): mean and standard deviation of the
      gradient magnitude (central differences), mean local variance in 3 x 3 windows, and
      Haralick's statistics of the symmetric grey-level co-occurrence matrix of the pixel
      pairs inside the disc (``n_grey_levels`` levels over [0, 1]; neighbours at distance
      1, horizontal and vertical): ``skimage.feature.graycoprops``'s contrast,
      homogeneity, ``ASM`` (angular second moment, ``glcm_asm``), ``energy`` (its square
      root, ``glcm_energy``), correlation and entropy (natural log), each the mean of the
      horizontal and the vertical matrix's value.

    Images are read as scikit-image reads them: integers divided by their type's maximum,
    floats kept (floats above 1 are taken as 8-bit intensities and divided by 255), then
    clipped to [0, 1]. On an image in [0, 1] the stain and HSV features are therefore the
    per-spot mean and standard deviation of ``rgb2hed(image)`` and ``rgb2hsv(image)``.

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
        Spots x features (float64; same ``obs_names`` and order as ``adata``), ready for
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

    van der Walt et al. (2014). scikit-image: image processing in Python. PeerJ 2, e453.

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
    ((2, 25), 15)
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
    picture, divisor = _checked_image(
        picture, f"adata.uns['spatial'][{library_id!r}]['images'][{image!r}]"
    )
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
            picture, divisor, centres[start:stop], offsets, disc, int(n_grey_levels)
        )
    outside = np.flatnonzero(coverage == 0)
    if outside.size:
        raise SpatiomeInputError(
            f"{outside.size} spots lie wholly outside the {image!r} image "
            f"({picture.shape[1]} x {picture.shape[0]} pixels; "
            f"first: {adata.obs_names[outside[0]]!r}): "
            f"check library_id, image and the scale factor tissue_{image}_scalef, and that "
            f"adata.obsm[{spatial_key!r}] holds full-resolution (x, y) pixels"
        )
    result = AnnData(
        features,
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


def _checked_image(picture: np.ndarray, where: str) -> tuple[np.ndarray, float]:
    """The image as (rows, columns, channels) and the divisor that maps it into [0, 1].

    The image is not copied: patches are converted once gathered (see ``_unit_rgb``).
    """
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
        return picture, float(np.iinfo(picture.dtype).max)
    if not np.isfinite(picture).all():
        raise SpatiomeInputError(f"{where} contains NaN or infinite values")
    # Floats beyond 1 are taken as 8-bit intensities.
    return picture, 255.0 if picture.max(initial=0.0) > 1.0 else 1.0


def _unit_rgb(pixels: np.ndarray, divisor: float) -> np.ndarray:
    """Gathered pixels (..., channels) as float64 RGB in [0, 1] (alpha dropped)."""
    values = pixels[..., :3].astype(np.float64)
    if divisor != 1.0:
        values /= divisor
    np.clip(values, 0.0, 1.0, out=values)
    if values.shape[-1] == 1:
        values = np.repeat(values, 3, axis=-1)
    return values


def _masked_mean_sd(values: np.ndarray, weights: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Mean and (population) sd over the pixel axes (1, 2) of (spots, s, s, channels) values.

    Two passes (mean, then squared deviations), so the sd keeps its precision when it is
    small next to the mean.
    """
    mean = np.einsum("bijc,bij->bc", values, weights) / count[:, None]
    deviation = values - mean[:, None, None, :]
    square = np.einsum("bijc,bij->bc", deviation * deviation, weights) / count[:, None]
    return np.stack([mean, np.sqrt(square)], axis=2).reshape(values.shape[0], -1)


def _patch_features(
    picture: np.ndarray,
    divisor: float,
    centres: np.ndarray,
    offsets: np.ndarray,
    disc: np.ndarray,
    n_levels: int,
) -> tuple[np.ndarray, np.ndarray]:
    n_rows, n_cols = picture.shape[:2]
    rows = centres[:, 1, None] + offsets[None, :]
    cols = centres[:, 0, None] + offsets[None, :]
    valid = (
        ((rows >= 0) & (rows < n_rows))[:, :, None]
        & ((cols >= 0) & (cols < n_cols))[:, None, :]
        & disc[None, :, :]
    )
    patches = _unit_rgb(
        picture[np.clip(rows, 0, n_rows - 1)[:, :, None], np.clip(cols, 0, n_cols - 1)[:, None, :]],
        divisor,
    )
    weights = valid.astype(np.float64)
    count = weights.sum(axis=(1, 2))
    coverage = count / disc.sum()
    count = np.maximum(count, 1.0)

    colour = _masked_mean_sd(patches, weights, count)
    stain = _masked_mean_sd(rgb2hed(patches, channel_axis=-1), weights, count)
    hsv = _masked_mean_sd(rgb2hsv(patches, channel_axis=-1)[..., 1:], weights, count)

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


def _grey_levels(grey: np.ndarray, n_levels: int) -> np.ndarray:
    """Grey values in [0, 1] binned into ``n_levels`` equal levels (uint8 codes)."""
    return np.minimum((grey * n_levels).astype(np.int64), n_levels - 1).astype(np.uint8)


def _cooccurrence(grey: np.ndarray, valid: np.ndarray, n_levels: int) -> np.ndarray:
    """graycoprops statistics of each spot's co-occurrence matrix, mean over the angles.

    Pixels outside the disc (or the image) get an extra grey level ``n_levels``, whose row
    and column are dropped from graycomatrix's counts: what remains are the pairs of
    pixels that both lie inside. The matrices of all spots go to graycoprops at once, on
    its distance axis.
    """
    levels = np.where(valid, _grey_levels(grey, n_levels), np.uint8(n_levels))
    counts = np.stack(
        [
            graycomatrix(
                patch, distances=[1], angles=_GLCM_ANGLES, levels=n_levels + 1, symmetric=True
            )[:n_levels, :n_levels, 0, :]
            for patch in levels
        ],
        axis=2,
    )
    return np.stack([graycoprops(counts, prop).mean(axis=1) for prop in _GLCM_PROPERTIES], axis=1)
