"""SpatialData zarr stores in and out: the table as a spatiome AnnData, and back.

A SpatialData object keeps the count table apart from the geometry it annotates (circles
for Visium spots, polygons or labels for cells) and from the images, each element placed in
one or more coordinate systems. :func:`read_spatialdata` turns the table into the standard
spatiome AnnData: raw counts in ``layers['counts']``, the annotated elements' centroids in
``obsm['spatial']`` in one coordinate system, and the images of that coordinate system with
their scale factors in ``uns['spatial']`` (the layout scanpy and squidpy plot from).
:func:`write_spatialdata` writes the reverse: the table annotating a shapes element of circles
with each spot's or cell's real diameter, plus the images held in ``uns['spatial']``.

Both need the ``spatialdata`` extra (``pip install "spatiome[spatialdata]"``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._core.files import current_umask
from .._core.validate import SpatiomeInputError, _holds_counts, check_coordinates
from ._build import spot_diameter

if TYPE_CHECKING:  # pragma: no cover
    from spatialdata import SpatialData

__all__ = ["read_spatialdata", "write_spatialdata"]

#: obs columns the writer adds to link table rows to shapes; removed again on reading.
_REGION_KEY = "spatiome_region"
_INSTANCE_KEY = "spatiome_instance"
#: table.uns entry naming the image elements the writer made from uns['spatial'].
_IMAGES_KEY = "spatiome_images"
#: longest side of the images put into uns['spatial'] from a foreign store.
_HIRES_PIXELS = 2000
_LOWRES_PIXELS = 600


def _spatialdata():
    try:
        import spatialdata
    except ImportError:  # pragma: no cover - depends on the environment
        raise SpatiomeInputError(
            'SpatialData support needs the spatialdata package: pip install "spatiome[spatialdata]"'
        ) from None
    return spatialdata


def is_spatialdata_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a SpatialData zarr store (a zarr group with a ``tables`` or
    element folder).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> is_spatialdata_store(tempfile.mkdtemp())
    False
    """
    folder = Path(path)
    if not folder.is_dir():
        return False
    is_zarr = (folder / "zarr.json").is_file() or (folder / ".zgroup").is_file()
    elements = ("tables", "table", "shapes", "images", "labels", "points")
    return is_zarr and any((folder / name).is_dir() for name in elements)


def read_spatialdata(
    source: str | os.PathLike[str] | SpatialData,
    *,
    table: str | None = None,
    coordinate_system: str | None = None,
    images: bool = True,
    spatial_unit: str | None = None,
    obsm_key: str = "spatial",
) -> AnnData:
    """Read the table of a SpatialData store (or object) as a spatiome AnnData.

    Parameters
    ----------
    source
        A SpatialData ``.zarr`` store or a :class:`spatialdata.SpatialData` object.
    table
        Name of the table to read; may be left out when the store holds one table.
    coordinate_system
        The coordinate system of ``obsm['spatial']``. Left out: the only one in which the
        elements the table annotates are placed; with several, the one in which they sit
        untransformed (their native units), else an error listing the choices.
    images
        Put the images placed in that coordinate system into ``uns['spatial']`` (at most
        2,000 pixels a side, plus a 600-pixel version) with their scale factors.
    spatial_unit
        Unit of the coordinates for ``uns['spatial_unit']`` (e.g. ``"um"``, ``"pixel"``).
        Left out: what the table records, else ``"unknown"``.
    obsm_key
        Where the table keeps its own coordinates, used when it annotates no element
        present in the store.

    Returns
    -------
    AnnData
        A copy of the table: raw counts in ``layers['counts']`` (taken from ``X`` when it
        holds counts), the centroids of the annotated shapes, labels or points in
        ``obsm['spatial']`` in row order, images and scale factors in ``uns['spatial']``,
        and the store, table and coordinate system in ``uns['spatiome']['source']``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from spatiome.datasets import simulate_tissue
    >>> tissue = simulate_tissue(n_spots=200, n_genes=20, random_state=0)
    >>> store = pathlib.Path(tempfile.mkdtemp()) / "tissue.zarr"
    >>> _ = write_spatialdata(tissue, store)
    >>> back = read_spatialdata(store)
    >>> back.shape, bool((back.layers["counts"] != tissue.layers["counts"]).nnz == 0)
    ((200, 20), True)
    """
    sdata, where = _open(source)
    name = _table_name(sdata, table, where)
    adata = sdata.tables[name].copy()
    attrs = dict(adata.uns.get("spatialdata_attrs", {}))
    regions = _regions(attrs)
    present = [r for r in regions if r in sdata]
    system = _coordinate_system(sdata, present, coordinate_system, where)
    if present and len(present) == len(regions) and system is not None:
        adata.obsm["spatial"] = _centroids(sdata, adata, attrs, regions, system, where)
    elif obsm_key in adata.obsm:
        adata.obsm["spatial"] = np.asarray(adata.obsm[obsm_key])
    else:
        raise SpatiomeInputError(
            f"{where}: table {name!r} annotates no element of the store with coordinates "
            f"(regions {regions}) and has no obsm[{obsm_key!r}]: pick another table= or add "
            "the spots' coordinates"
        )
    adata.obsm["spatial"] = check_coordinates(
        np.asarray(adata.obsm["spatial"], dtype=float)[:, :2],
        n_obs=adata.n_obs,
        where=f"{where}: table {name!r} coordinates",
    )
    _restore_spatiome_columns(adata, attrs)
    _ensure_counts_layer(adata)
    images_written = adata.uns.pop(_IMAGES_KEY, None)
    if images and system is not None:
        _attach_images(adata, sdata, system, regions, images_written)
    adata.uns["spatial_unit"] = spatial_unit or str(adata.uns.get("spatial_unit", "unknown"))
    info = adata.uns.setdefault("spatiome", {})
    if "source" not in info:
        info["source"] = {
            "reader": "read_spatialdata",
            "path": where,
            "table": name,
            "coordinate_system": system,
            "regions": list(regions),
        }
    return adata


def _open(source: Any) -> tuple[SpatialData, str]:
    spatialdata = _spatialdata()
    if isinstance(source, spatialdata.SpatialData):
        path = getattr(source, "path", None)
        return source, str(path) if path else "SpatialData object"
    path = Path(source)
    if not path.exists():
        raise SpatiomeInputError(f"{path}: no such SpatialData store")
    if not is_spatialdata_store(path):
        raise SpatiomeInputError(
            f"{path}: not a SpatialData zarr store (no zarr.json/.zgroup with tables/, "
            "shapes/ or images/ inside): pass the .zarr folder that spatialdata wrote"
        )
    try:
        with _quiet_zarr():
            return spatialdata.read_zarr(path), str(path)
    except Exception as err:  # the zarr reader raises many kinds
        raise SpatiomeInputError(
            f"{path}: spatialdata could not read this store ({type(err).__name__}: {err}); "
            "check that it was written completely and by a compatible spatialdata version"
        ) from None


def _table_name(sdata: SpatialData, table: str | None, where: str) -> str:
    names = list(sdata.tables.keys())
    if table is not None:
        if table not in names:
            raise SpatiomeInputError(
                f"{where}: no table named {table!r}; tables present: {names or 'none'}"
            )
        return table
    if len(names) == 1:
        return names[0]
    if not names:
        raise SpatiomeInputError(
            f"{where}: the store holds no table (only images, shapes or points): spatiome "
            "analyses a count table; aggregate transcripts to cells first "
            "(spatialdata.aggregate) or pick a store with a table"
        )
    raise SpatiomeInputError(f"{where}: the store holds several tables {names}: pass table=")


def _regions(attrs: Mapping[str, Any]) -> list[str]:
    region = attrs.get("region")
    if region is None:
        return []
    if isinstance(region, str) or np.ndim(region) == 0:
        return [str(region)]
    return [str(r) for r in region]


def _coordinate_system(
    sdata: SpatialData, regions: list[str], chosen: str | None, where: str
) -> str | None:
    from spatialdata.transformations import Identity, get_transformation

    elements = [sdata[r] for r in regions]
    if not elements:
        return chosen
    systems = sorted(
        set.intersection(*(set(get_transformation(e, get_all=True)) for e in elements))
    )
    if chosen is not None:
        if chosen not in systems:
            raise SpatiomeInputError(
                f"{where}: coordinate system {chosen!r} does not hold the table's elements "
                f"{regions}; choose one of {systems}"
            )
        return chosen
    if len(systems) <= 1:
        return systems[0] if systems else None
    native = [
        s
        for s in systems
        if all(
            isinstance(get_transformation(e, to_coordinate_system=s), Identity) for e in elements
        )
    ]
    if len(native) == 1:
        return native[0]
    raise SpatiomeInputError(
        f"{where}: the table's elements {regions} are placed in several coordinate systems "
        f"{systems}: pass coordinate_system= naming the one for obsm['spatial']"
    )


def _centroids(
    sdata: SpatialData,
    adata: AnnData,
    attrs: Mapping[str, Any],
    regions: list[str],
    system: str,
    where: str,
) -> np.ndarray:
    """Centroids of the annotated instances in ``system``, in the table's row order."""
    import spatialdata

    region_key, instance_key = attrs.get("region_key"), attrs.get("instance_key")
    coords = np.full((adata.n_obs, 2), np.nan)
    row_regions = (
        adata.obs[region_key].astype(str).to_numpy()
        if region_key in adata.obs
        else np.full(adata.n_obs, regions[0])
    )
    for region in regions:
        if region not in sdata:
            raise SpatiomeInputError(
                f"{where}: the table annotates {region!r}, which the store does not hold"
            )
        frame = spatialdata.get_centroids(sdata[region], coordinate_system=system)
        frame = frame.compute() if hasattr(frame, "compute") else frame
        rows = np.flatnonzero(row_regions == region)
        ids = adata.obs[instance_key].to_numpy()[rows] if instance_key in adata.obs else rows
        located = frame[["x", "y"]].reindex(pd.Index(ids).astype(frame.index.dtype))
        coords[rows] = located.to_numpy(dtype=float)
    missing = np.isnan(coords).any(axis=1)
    if missing.any():
        raise SpatiomeInputError(
            f"{where}: {int(missing.sum())} table rows match no instance of {regions} "
            f"(column {instance_key!r}): the table and its shapes disagree"
        )
    return coords


def _restore_spatiome_columns(adata: AnnData, attrs: Mapping[str, Any]) -> None:
    """Drop the link columns and attributes :func:`write_spatialdata` added."""
    if attrs.get("region_key") == _REGION_KEY:
        adata.obs.drop(columns=[_REGION_KEY, _INSTANCE_KEY], errors="ignore", inplace=True)
        adata.uns.pop("spatialdata_attrs", None)


def _ensure_counts_layer(adata: AnnData) -> None:
    if "counts" not in adata.layers and _holds_counts(adata.X):
        matrix = adata.X
        adata.layers["counts"] = sp.csr_matrix(matrix) if sp.issparse(matrix) else matrix.copy()


def _attach_images(
    adata: AnnData,
    sdata: SpatialData,
    system: str,
    regions: list[str],
    written: Mapping[str, Mapping[str, str]] | None,
) -> None:
    """Fill ``uns['spatial']``: exact images for our own stores, resampled ones otherwise."""
    spatial = adata.uns.get("spatial")
    if written:
        for library, names in written.items():
            entry = spatial.setdefault(library, {}) if isinstance(spatial, dict) else None
            if entry is None:
                continue
            entry["images"] = {
                kind: np.moveaxis(np.asarray(sdata.images[element].data), 0, -1)
                for kind, element in names.items()
                if element in sdata.images
            }
        return
    spatial = dict(spatial) if isinstance(spatial, Mapping) else {}
    if any(isinstance(e, Mapping) and e.get("images") for e in spatial.values()):
        return
    library = next(iter(spatial)) if len(spatial) == 1 else (regions[0] if regions else system)
    entry = _foreign_images(sdata, system)
    diameter = _median_diameter(sdata, regions, system)
    if entry is None and diameter is None:
        return
    entry = entry or {"images": {}, "scalefactors": {}}
    if diameter is not None:
        entry["scalefactors"]["spot_diameter_fullres"] = diameter
    previous = spatial.get(library)
    entry["metadata"] = dict(previous.get("metadata", {})) if isinstance(previous, Mapping) else {}
    adata.uns["spatial"] = {**spatial, library: entry}


def _foreign_images(sdata: SpatialData, system: str) -> dict[str, Any] | None:
    """The largest image placed in ``system`` by a plain scale, at two resolutions, each read
    from the coarsest pyramid level that still has the pixels asked for."""
    from spatialdata.transformations import get_transformation

    best = None
    for name in sdata.images:
        element = sdata.images[name]
        transforms = get_transformation(element, get_all=True)
        if system not in transforms:
            continue
        levels = _pyramid(element)
        scale = _pixels_per_unit(transforms[system])
        if scale is None:
            continue
        size = int(np.prod(levels[0].shape[-2:]))
        if best is None or size > best[0]:
            best = (size, levels, scale)
    if best is None:
        return None
    _, levels, scale = best
    images, factors = {}, {}
    full_width = levels[0].shape[-1]
    for kind, longest in (("hires", _HIRES_PIXELS), ("lowres", _LOWRES_PIXELS)):
        level = next((lv for lv in reversed(levels) if max(lv.shape[-2:]) >= longest), levels[0])
        step = max(1, int(np.ceil(max(level.shape[-2:]) / longest)))
        array = np.asarray(level.data[..., ::step, ::step])  # (c, y, x)
        images[kind] = np.moveaxis(array, 0, -1)
        factors[f"tissue_{kind}_scalef"] = float(scale * array.shape[-1] / full_width)
    return {"images": images, "scalefactors": factors}


def _pyramid(element: Any) -> list[Any]:
    """The levels of an image, finest first (one level for a single-scale image)."""
    if hasattr(element, "dims") and hasattr(element, "shape"):
        return [element]
    from spatialdata import get_pyramid_levels

    return list(get_pyramid_levels(element))


def _pixels_per_unit(transform: Any) -> float | None:
    """Image pixels per coordinate unit when the image is only scaled (same x and y, no
    rotation or shift); else None (squidpy's layout cannot place it)."""
    matrix = transform.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    sx, sy = matrix[0, 0], matrix[1, 1]
    plain = np.isclose(matrix[0, 1], 0) and np.isclose(matrix[1, 0], 0)
    if not plain or not np.isclose(sx, sy) or sx <= 0 or not np.allclose(matrix[:2, 2], 0):
        return None
    return float(1.0 / sx)


def _median_diameter(sdata: SpatialData, regions: list[str], system: str) -> float | None:
    """Median diameter of the annotated circles or polygons, in ``system`` units."""
    from spatialdata.transformations import get_transformation

    for region in regions:
        if region not in sdata.shapes:
            continue
        shapes = sdata.shapes[region]
        transform = get_transformation(shapes, to_coordinate_system=system)
        matrix = transform.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
        factor = float(np.sqrt(abs(np.linalg.det(matrix[:2, :2]))))
        if "radius" in shapes:
            return float(np.median(2 * shapes["radius"].to_numpy())) * factor
        areas = shapes.geometry.area.to_numpy()
        if areas.size and np.any(areas > 0):
            return float(np.median(2 * np.sqrt(areas / np.pi))) * factor
    return None


def write_spatialdata(
    adata: AnnData,
    path: str | os.PathLike[str],
    *,
    coordinate_system: str = "global",
    shapes: str = "spots",
    table: str = "table",
    overwrite: bool = False,
) -> Path:
    """Write ``adata`` as a SpatialData zarr store, atomically.

    The store holds the table (every obs, var, obsm, layers and uns entry), a circles
    element ``shapes`` of the spots or cells it annotates, centred on ``obsm['spatial']``
    with their real diameter, and the images of ``uns['spatial']`` placed by their scale
    factors, all in ``coordinate_system``.

    The diameter is, in order: ``uns['spatial'][library]['scalefactors']
    ['spot_diameter_fullres']``; per cell, that of a disk of ``obs['cell_area']`` (Xenium,
    MERSCOPE, CosMx); else the readers' rule, :func:`spatiome.io._build.spot_diameter` (the
    platform's size in µm, else the spacing of neighbouring spots).

    Parameters
    ----------
    adata
        Data with ``obsm['spatial']``. It is not modified.
    path
        The ``.zarr`` folder to create.
    coordinate_system
        Name of the coordinate system (units of ``obsm['spatial']``).
    shapes, table
        Names of the circles element and of the table in the store.
    overwrite
        Replace an existing store at ``path`` (only once the new one is complete).

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from spatiome.datasets import simulate_tissue
    >>> tissue = simulate_tissue(n_spots=100, n_genes=10, random_state=0)
    >>> store = write_spatialdata(tissue, pathlib.Path(tempfile.mkdtemp()) / "t.zarr")
    >>> sorted(p.name for p in store.iterdir() if not p.name.startswith("."))
    ['shapes', 'tables', 'zarr.json']
    """
    spatialdata = _spatialdata()
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity

    target = Path(path)
    if target.exists() and not overwrite:
        raise SpatiomeInputError(f"{target}: already exists; pass overwrite=True to replace it")
    if "spatial" not in adata.obsm:
        raise SpatiomeInputError(
            "adata.obsm['spatial'] is missing: a SpatialData store places spots by their "
            "coordinates; read data with spatiome.io or set obsm['spatial']"
        )
    coords = check_coordinates(adata.obsm["spatial"], n_obs=adata.n_obs, where="obsm['spatial']")
    radius = _diameters(adata, coords) / 2
    circles = ShapesModel.parse(
        coords[:, :2],
        geometry=0,
        radius=radius,
        index=np.arange(adata.n_obs),
        transformations={coordinate_system: Identity()},
    )
    frame = _table_copy(adata, shapes)
    images = _image_elements(frame, coordinate_system)
    parsed = TableModel.parse(
        frame, region=shapes, region_key=_REGION_KEY, instance_key=_INSTANCE_KEY
    )
    sdata = spatialdata.SpatialData(shapes={shapes: circles}, images=images, tables={table: parsed})
    _write_atomically(sdata, target)
    return target


def _table_copy(adata: AnnData, shapes: str) -> AnnData:
    frame = adata.copy()
    frame.obs[_REGION_KEY] = pd.Categorical([shapes] * adata.n_obs)
    frame.obs[_INSTANCE_KEY] = np.arange(adata.n_obs)
    frame.uns.pop("spatialdata_attrs", None)
    return frame


def _diameters(adata: AnnData, coords: np.ndarray) -> np.ndarray:
    """Each spot's or cell's diameter in the units of ``coords`` (see write_spatialdata)."""
    spatial = adata.uns.get("spatial")
    if isinstance(spatial, Mapping):
        for entry in spatial.values():
            factors = entry.get("scalefactors", {}) if isinstance(entry, Mapping) else {}
            if factors.get("spot_diameter_fullres"):
                return np.full(adata.n_obs, float(factors["spot_diameter_fullres"]))
    if "cell_area" in adata.obs:
        area = pd.to_numeric(adata.obs["cell_area"], errors="coerce").to_numpy(dtype=float)
        if np.all(np.isfinite(area) & (area > 0)):
            return 2 * np.sqrt(area / np.pi)
    platform = adata.uns.get("spatiome", {}).get("source", {}).get("platform")
    unit = str(adata.uns.get("spatial_unit", "unknown"))
    return np.full(adata.n_obs, spot_diameter(coords[:, :2], platform=platform, spatial_unit=unit))


def _image_elements(frame: AnnData, system: str) -> dict[str, Any]:
    """Image elements from ``uns['spatial']``; their names recorded in the table's uns and
    the pixel arrays removed from it (they live once, as elements)."""
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    spatial = frame.uns.get("spatial")
    if not isinstance(spatial, Mapping):
        return {}
    elements: dict[str, Any] = {}
    written: dict[str, dict[str, str]] = {}
    for library, entry in spatial.items():
        if not isinstance(entry, Mapping):
            continue
        factors = entry.get("scalefactors", {})
        for kind, image in dict(entry.get("images", {})).items():
            scale = factors.get(f"tissue_{kind}_scalef")
            array = np.asarray(image)
            if not scale or array.ndim not in (2, 3):
                continue
            cyx = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
            name = f"{library}_{kind}_image"
            elements[name] = Image2DModel.parse(
                cyx,
                dims=("c", "y", "x"),
                transformations={system: Scale([1 / scale, 1 / scale], axes=("y", "x"))},
            )
            written.setdefault(str(library), {})[kind] = name
        if isinstance(entry, dict):
            spatial[library] = {k: v for k, v in entry.items() if k != "images"}
    if written:
        frame.uns[_IMAGES_KEY] = written
    return elements


def _write_atomically(sdata: SpatialData, target: Path) -> None:
    """Write into a temporary folder beside ``target``, then move it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        store = staging / target.name
        with _quiet_zarr():
            sdata.write(store)
        _make_group_readable(store)
        if target.exists():
            old = staging / "previous"
            os.replace(target, old)
        os.replace(store, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _make_group_readable(folder: Path) -> None:
    mode_dirs = 0o777 & ~current_umask()
    mode_files = 0o666 & ~current_umask()
    os.chmod(folder, mode_dirs)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), mode_dirs)
        for name in files:
            os.chmod(os.path.join(root, name), mode_files)


#: spatialdata-io reader per platform: its function name, the arguments that skip what an
#: AnnData does not hold (transcripts, large images), and the unit of its coordinates.
_VENDOR_READERS: dict[str, tuple[str, dict[str, Any], str]] = {
    "visium": ("visium", {}, "pixel"),
    "visium_hd": ("visium_hd", {}, "pixel"),
    "xenium": (
        "xenium",
        {
            "transcripts": False,
            "morphology_mip": False,
            "morphology_focus": False,
            "aligned_images": False,
            "cells_labels": False,
            "nucleus_labels": False,
            "nucleus_boundaries": False,
        },
        "um",
    ),
    "merscope": (
        "merscope",
        {"transcripts": False, "cells_boundaries": False, "mosaic_images": False},
        "um",
    ),
    "cosmx": ("cosmx", {"transcripts": False}, "pixel"),
    "stereoseq": ("stereoseq", {"read_square_bin": False}, "pixel"),
    "codex": ("codex", {"fcs": False}, "pixel"),
}
#: Where a platform's table keeps the coordinates to use when it annotates no element
#: (CosMx: global pixels; its obsm['spatial'] holds coordinates local to each field of view).
_TABLE_COORDINATES = {"cosmx": "global"}
#: Control probes that a platform's spatialdata-io table keeps among the genes, by name
#: prefix, with their kind: CosMx's negative probes (``NegPrb<k>`` in flat files,
#: ``Negative<k>`` in AtoMx exports) and false codes (``SystemControl<k>``).
_CONTROL_PREFIXES = {
    "cosmx": {
        "NegPrb": "Negative Control Probe",
        "Negative": "Negative Control Probe",
        "SystemControl": "System Control",
    },
}


def read_vendor(
    path: str | os.PathLike[str],
    platform: str,
    *,
    as_spatialdata: bool = False,
    table: str | None = None,
    coordinate_system: str | None = None,
    **kwargs: Any,
) -> AnnData | SpatialData:
    """Read a vendor output folder with spatialdata-io's reader for ``platform``.

    Parameters
    ----------
    path
        The vendor's output folder.
    platform
        One of ``visium``, ``visium_hd``, ``xenium``, ``merscope``, ``cosmx``,
        ``stereoseq``, ``codex``.
    as_spatialdata
        Return the whole :class:`spatialdata.SpatialData` (transcripts, boundaries and
        images included, as spatialdata-io reads them); otherwise the count table as a
        spatiome AnnData (:func:`read_spatialdata`), read without the transcripts and large
        images an AnnData does not hold.
    table, coordinate_system
        Passed to :func:`read_spatialdata`.
    **kwargs
        Passed to the spatialdata-io reader (they override the defaults above).

    Returns
    -------
    AnnData or SpatialData
        The AnnData holds genes only: control probes that spatialdata-io keeps among them
        (CosMx: ``NegPrb*``/``Negative*`` negative probes, ``SystemControl*`` false codes)
        go to ``obsm['control_counts']`` with their kinds in
        ``uns['control_feature_types']``, as in :func:`spatiome.io.read_xenium`.
    """
    if platform not in _VENDOR_READERS:
        raise SpatiomeInputError(
            f"platform={platform!r} is not read through spatialdata-io; choose one of "
            f"{sorted(_VENDOR_READERS)}"
        )
    try:
        import spatialdata_io
    except ImportError:  # pragma: no cover - depends on the environment
        raise SpatiomeInputError(
            f'reading {platform} output needs spatialdata-io: pip install "spatiome[spatialdata]"'
        ) from None
    name, lean, unit = _VENDOR_READERS[platform]
    options = kwargs if as_spatialdata else {**lean, **kwargs}
    reader = getattr(spatialdata_io, name)
    folder = Path(path)
    if platform == "stereoseq" and "dataset_id" not in options:
        options["dataset_id"] = _stereoseq_serial(folder)
    if platform == "visium" and "dataset_id" not in options:
        options["dataset_id"] = _visium_library(folder)
    try:
        # spatialdata-io's CODEX reader opens its files relative to the working folder
        with _working_folder(folder if platform == "codex" else None):
            sdata = reader(folder.resolve(), **options)
    except (OSError, KeyError, ValueError, IndexError, AssertionError) as err:
        raise SpatiomeInputError(
            f"{path}: spatialdata-io's {name} reader failed ({type(err).__name__}: {err}); "
            f"check that this is a complete {platform} output folder, or pass platform= "
            "naming the right one"
        ) from None
    if as_spatialdata:
        return sdata
    adata = read_spatialdata(
        sdata,
        table=table,
        coordinate_system=coordinate_system,
        spatial_unit=unit,
        obsm_key=_TABLE_COORDINATES.get(platform, "spatial"),
    )
    adata.uns["spatiome"]["source"].update(
        {"reader": f"spatialdata_io.{name}", "path": str(path), "platform": platform}
    )
    if platform in _CONTROL_PREFIXES:
        adata = _split_controls(adata, _CONTROL_PREFIXES[platform])
    return adata


def _same_values(a: Any, b: Any) -> bool:
    if sp.issparse(a) and sp.issparse(b):
        return a.shape == b.shape and np.shares_memory(a.data, b.data)
    return not sp.issparse(a) and not sp.issparse(b) and np.shares_memory(a, b)


def _split_controls(adata: AnnData, prefixes: dict[str, str]) -> AnnData:
    """Move the control probes (var names starting with a key of ``prefixes``) out of the
    genes, as :func:`spatiome.io.read_xenium` does: their counts to
    ``obsm['control_counts']``, their kinds to ``uns['control_feature_types']``."""
    names = adata.var_names.astype(str)
    kinds = pd.Series(
        [next((k for p, k in prefixes.items() if n.startswith(p)), "") for n in names],
        index=names,
    )
    is_control = (kinds != "").to_numpy()
    if not is_control.any() or is_control.all():
        return adata
    counts = adata.layers["counts"] if "counts" in adata.layers else adata.X
    block = counts[:, np.flatnonzero(is_control)]
    block = block.toarray() if sp.issparse(block) else np.asarray(block)
    controls = pd.DataFrame(block, index=adata.obs_names.copy(), columns=names[is_control])
    # X and the counts layer share their values; subset them once and share them again.
    shared = "counts" in adata.layers and _same_values(adata.X, adata.layers["counts"])
    if shared:
        del adata.layers["counts"]
    genes = adata[:, ~is_control].copy()
    if shared:
        genes.layers["counts"] = sp.csr_matrix(genes.X) if sp.issparse(genes.X) else genes.X
    genes.obsm["control_counts"] = controls
    genes.uns["control_feature_types"] = kinds[is_control].to_dict()
    return genes


def _visium_library(folder: Path) -> str | None:
    """The library id spatialdata-io needs when Space Ranger wrote unprefixed file names:
    the run folder's name, as :func:`spatiome.io.read_visium` names the library."""
    if not (folder / "filtered_feature_bc_matrix.h5").exists():
        return None
    return folder.parent.name if folder.name == "outs" else folder.name


def _stereoseq_serial(folder: Path) -> str | None:
    """The chip serial number Stereo-seq names its files with, from the cell-bin GEF."""
    for pattern in ("02.count/*.gef", "041.cellcut/*.cellbin.gef"):
        found = sorted(folder.glob(pattern))
        if found:
            return found[0].name.split(".")[0]
    return None


@contextlib.contextmanager
def _working_folder(folder: Path | None) -> Iterator[None]:
    if folder is None:
        yield
        return
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def _quiet_zarr() -> Iterator[None]:
    """Silence zarr's and ome-zarr's notices about its own format plans: they concern the
    library's next versions, not the user's data."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Zarr V3 specification.*")
        warnings.filterwarnings("ignore", message=".*autosharding.*")
        warnings.filterwarnings("ignore", message=".*Scaler.*", category=DeprecationWarning)
        yield
