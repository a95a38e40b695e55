"""Spatial domains from a convolutional network on the spot lattice (needs torch).

Spots on a regular lattice (Visium's hexagonal array, Visium HD's square bins, or any
coordinates rasterized at their spacing) become the pixels of an image whose channels are
the principal components of :func:`spatiome.domains.cluster`'s features. A two-layer
convolutional encoder is trained to reconstruct each spot's components from an input in
which a random share of the spots is hidden, so the embedding has to draw on the spot's
neighbourhood; the embedding is clustered like :func:`~spatiome.domains.cluster`'s
features. torch is imported inside the functions.
"""

from __future__ import annotations

import logging
import numbers
import time

import numpy as np
from anndata import AnnData

from .._core.near_empty import near_empty_checked, warn_near_empty
from .._core.validate import SpatiomeInputError, check_adata, get_spatial

logger = logging.getLogger("spatiome")

# Largest image (pixels) the lattice may span; sparser layouts are refused.
_MAX_PIXELS = 50_000_000


def lattice_positions(
    adata: AnnData, spatial_key: str = "spatial"
) -> tuple[np.ndarray, np.ndarray, str]:
    """Row and column of every spot on a regular pixel grid, and how they were found.

    ``obs["array_row"]``/``obs["array_col"]`` (10x arrays) are used when present and
    distinct per spot: a hexagonal Visium array, whose ``row + col`` has one parity, is
    folded to ``(row, col // 2)`` so each spot's six neighbours fall in its 3 x 3 window;
    a square array (Visium HD bins) is used as it is. Otherwise the coordinates are
    rasterized with the median nearest-neighbour distance as the pixel size; spots that
    fall on one pixel share it.

    Examples
    --------
    >>> import numpy as np, anndata as ad
    >>> adata = ad.AnnData(np.zeros((4, 1)))
    >>> adata.obsm["spatial"] = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> rows, cols, kind = lattice_positions(adata)
    >>> rows.tolist(), cols.tolist(), kind
    ([0, 0, 1, 1], [0, 1, 0, 1], 'rasterized')
    """
    obs = adata.obs
    if "array_row" in obs and "array_col" in obs:
        rows = np.asarray(obs["array_row"], dtype=np.int64)
        cols = np.asarray(obs["array_col"], dtype=np.int64)
        if np.unique(rows * (cols.max() + 1) + cols).size == rows.size:
            if rows.size > 1 and np.unique((rows + cols) % 2).size == 1:
                return rows - rows.min(), (cols - cols.min()) // 2, "hexagonal"
            return rows - rows.min(), cols - cols.min(), "square"
    from .._core.neighbourhood import spatial_knn

    coords = get_spatial(adata, spatial_key)[:, :2]
    if coords.shape[0] < 2:
        raise SpatiomeInputError("domains.cnn needs at least 2 spots")
    spacing = float(np.median(spatial_knn(coords, 1)[1][:, 0]))
    if not spacing > 0:
        raise SpatiomeInputError(
            "domains.cnn: most spots share their position with another spot; the "
            "coordinates do not form a lattice"
        )
    pixels = np.rint((coords - coords.min(axis=0)) / spacing).astype(np.int64)
    return pixels[:, 1], pixels[:, 0], "rasterized"


def cnn(
    adata: AnnData,
    n_domains: int,
    *,
    hidden: int = 64,
    embedding_dim: int = 16,
    n_epochs: int = 300,
    learning_rate: float = 1e-3,
    hide_fraction: float = 0.5,
    n_comps: int = 30,
    n_top_genes: int | None = 3000,
    target_sum: float | None = 1e4,
    n_init: int = 10,
    refine: float = 5.0,
    min_domain_size: int = 5,
    spatial_key: str = "spatial",
    device: str = "cpu",
    n_jobs: int | None = None,
    random_state: int = 0,
    key_added: str = "cnn",
    embedding_key: str = "X_cnn",
    copy: bool = False,
) -> AnnData | None:
    """Spatial domains from a convolutional autoencoder on the spot lattice.

    1. Features: the ``n_comps`` principal components of :func:`cluster`'s features
       (Seurat v3 genes, counts scaled to ``target_sum``, log1p; no smoothing), each
       standardized.
    2. Image: spots placed on their lattice (:func:`lattice_positions`); the channels are
       the components and an occupancy mask, empty pixels are 0.
    3. Model: ``conv3x3 -> ELU -> conv3x3`` to an ``embedding_dim``-channel embedding
       (a 5 x 5 receptive field, about two rings of Visium spots) and a 1 x 1
       convolution back to the components. Each epoch a new random ``hide_fraction`` of
       the spots is hidden from the input, and the loss is the mean squared error of the
       reconstruction on every spot, so a hidden spot has to be predicted from its
       neighbours. Adam, full image, ``n_epochs`` epochs.
    4. Domains: the embedding of the full image is clustered by a Gaussian mixture with
       one shared covariance (``n_init`` starts) and Potts-smoothed with strength
       ``refine``, as in :func:`cluster`.

    Training is deterministic on the CPU under ``random_state`` (weights and the hidden
    spots come from a seeded torch ``Generator``; deterministic algorithms requested).
    ``device="auto"`` uses a CUDA GPU when one is present (``"cuda"`` requires one); GPU
    results can differ in the last bits.

    Measured (``benchmarks/domains_sections.py``; 5 seeds): see the domains table in
    ``docs/domains.md``. The network is cheap on a lattice (one convolution over the
    image per layer), and its cost grows with the lattice's pixels, not with edges.

    Parameters
    ----------
    adata
        Normalized data (run :func:`spatiome.pp.normalize` first) with coordinates, and
        ``obs["array_row"]``/``obs["array_col"]`` for 10x arrays.
    n_domains
        Number of domains.
    hidden, embedding_dim
        Channels of the hidden layer and of the embedding.
    n_epochs, learning_rate
        Training epochs and Adam's step size.
    hide_fraction
        Share of the spots hidden from the input at each epoch, in [0, 1).
    n_comps, n_top_genes, target_sum
        Feature parameters, as in :func:`cluster`.
    n_init, refine, min_domain_size
        Clustering parameters, as in :func:`cluster`.
    spatial_key
        Coordinates in ``adata.obsm`` (used when there is no array grid, and for
        ``refine``).
    device
        ``"cpu"`` (default), ``"cuda"`` or ``"auto"``.
    n_jobs
        Threads used by torch on the CPU (default: torch's setting); restored after.
    random_state
        Seed of the features' PCA, the weights, the hidden spots and the mixture.
    key_added
        Column of ``adata.obs`` receiving the domain labels ``"0"``, ``"1"``, ... (by
        decreasing size); also the key of the record in ``adata.uns["spatiome"]``.
    embedding_key
        Key of the embedding in ``adata.obsm``.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``; otherwise None. Written: ``obs[key_added]``,
        ``obsm[embedding_key]`` and ``uns["spatiome"][key_added]`` (parameters, lattice
        kind and size, the loss per epoch, training seconds).

    Raises
    ------
    ImportError
        If PyTorch is not installed (``pip install "spatiome[deep]"``).

    Examples
    --------
    >>> import pytest; _ = pytest.importorskip("torch")  # needs spatiome[deep]
    >>> import spatiome as sm
    >>> from sklearn.metrics import adjusted_rand_score
    >>> adata = sm.datasets.simulate_tissue(n_spots=900, n_genes=100, n_domains=3,
    ...                                     domains="layers", random_state=0)
    >>> sm.pp.normalize(adata)
    >>> sm.domains.cnn(adata, 3, n_epochs=100, n_top_genes=None, n_comps=10)
    >>> adjusted_rand_score(adata.obs["domain"], adata.obs["cnn"]) > 0.8
    True
    """
    from .._core.torch_session import import_torch
    from .cluster import (
        _check_n_clusters,
        _domain_features,
        _drop_small_domains,
        _refine_domains,
        _run_clusterer,
    )

    check_adata(adata)
    _check_n_clusters(n_domains, adata.n_obs)
    _check_cnn_parameters(hidden, embedding_dim, n_epochs, learning_rate, hide_fraction, device)
    torch = import_torch("spatiome.domains.cnn")
    device = _resolve_device(torch, device)
    warn_near_empty(adata, caller="domains.cnn")
    random_state = 0 if random_state is None else int(random_state)
    rows, cols, kind = lattice_positions(adata, spatial_key)
    height, width = int(rows.max()) + 1, int(cols.max()) + 1
    if height * width > _MAX_PIXELS:
        raise SpatiomeInputError(
            f"domains.cnn: the lattice spans {height} x {width} pixels, more than "
            f"{_MAX_PIXELS:,}; the spots are too sparse for a grid, use domains.cluster"
        )
    components, details = _domain_features(
        adata, neighbourhood_lambda=0.0, smoothing_steps=1, target_sum=target_sum,
        n_comps=n_comps, n_top_genes=n_top_genes, n_spatial_neighbors=1,
        spatial_key=spatial_key, random_state=random_state, caller="domains.cnn",
    )  # fmt: skip
    components = np.asarray(components, dtype=np.float64)
    spread = components.std(axis=0)
    components = (components - components.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    start = time.perf_counter()
    embedding, losses = _train(
        torch, components, rows, cols, (height, width), hidden, embedding_dim, n_epochs,
        learning_rate, hide_fraction, device, n_jobs, random_state,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    adata = adata.copy() if copy else adata
    adata.obsm[embedding_key] = embedding.astype(np.float32)
    clusterer = {"covariance_type": "tied", "n_init": int(n_init)}
    with near_empty_checked():
        _run_clusterer(adata, "gmm", n_domains, embedding_key, key_added, random_state, clusterer)
        outcome = _drop_small_domains(
            adata, embedding_key, "gmm", int(n_domains), int(min_domain_size), key_added,
            random_state, clusterer,
        )  # fmt: skip
    record = {
        "method": "cnn", "n_domains": int(n_domains), "lattice": kind,
        "lattice_shape": [height, width],
        "shared_pixels": int(rows.size - np.unique(rows * width + cols).size),
        "features": details, "hidden": int(hidden), "embedding_dim": int(embedding_dim),
        "n_epochs": int(n_epochs), "learning_rate": float(learning_rate),
        "hide_fraction": float(hide_fraction), "device": device, "n_init": int(n_init),
        "refine": float(refine), "random_state": random_state,
        "embedding_key": embedding_key, "train_seconds": float(seconds),
        "loss": np.asarray(losses, dtype=np.float64), **outcome,
    }  # fmt: skip
    if refine > 0:
        record.update(_refine_domains(adata, embedding_key, key_added, spatial_key,
                                      float(refine), int(min_domain_size)))  # fmt: skip
    adata.uns["spatiome"][key_added] = record
    logger.info(
        "cnn: %d epochs on a %s lattice of %d x %d in %.1f s, %d domains",
        n_epochs, kind, height, width, seconds, int(n_domains),
    )  # fmt: skip
    return adata if copy else None


def _train(
    torch, features, rows, cols, shape, hidden, embedding_dim, n_epochs, learning_rate,
    hide_fraction, device, n_jobs, seed,
) -> tuple[np.ndarray, list[float]]:  # fmt: skip
    """Train the masked convolutional autoencoder; the embedding of every spot."""
    from .._core.torch_session import deterministic_session

    height, width = shape
    n_channels = features.shape[1]
    pixel = rows * width + cols
    # Spots that share a pixel enter as their mean.
    counts = np.bincount(pixel, minlength=height * width).astype(np.float64)
    image = np.zeros((height * width, n_channels))
    np.add.at(image, pixel, features)
    occupied = counts > 0
    image[occupied] /= counts[occupied, None]
    with deterministic_session(seed, n_jobs if device == "cpu" else None) as generator:
        dtype = torch.float32
        target = torch.as_tensor(image.T.reshape(1, n_channels, height, width), dtype=dtype)
        mask = torch.as_tensor(occupied.reshape(1, 1, height, width), dtype=dtype)
        layers = _layers(torch, n_channels, hidden, embedding_dim, generator)
        target, mask = target.to(device), mask.to(device)
        layers = [layer.to(device) for layer in layers]
        parameters = [p for layer in layers for p in layer.parameters()]
        optimizer = torch.optim.Adam(parameters, lr=learning_rate)
        occupied_index = torch.as_tensor(np.flatnonzero(occupied))
        losses = []
        for _ in range(int(n_epochs)):
            keep = torch.ones(height * width, dtype=dtype)
            hidden_count = int(round(hide_fraction * occupied_index.numel()))
            if hidden_count:
                order = torch.randperm(occupied_index.numel(), generator=generator)
                keep[occupied_index[order[:hidden_count]]] = 0.0
            visible = mask * keep.reshape(1, 1, height, width).to(device)
            embedding = _encode(torch, layers, target * visible, visible)
            reconstruction = layers[2](embedding)
            error = ((reconstruction - target) ** 2 * mask).sum() / (mask.sum() * n_channels)
            optimizer.zero_grad()
            error.backward()
            optimizer.step()
            losses.append(float(error.detach()))
        with torch.no_grad():
            embedding = _encode(torch, layers, target * mask, mask)
        flat = embedding[0].reshape(embedding.shape[1], -1).T.cpu().numpy()
    return flat[pixel].astype(np.float64), losses


def _layers(torch, n_channels: int, hidden: int, embedding_dim: int, generator) -> list:
    """The two encoder convolutions and the 1 x 1 decoder, seeded from ``generator``."""
    shapes = [
        (n_channels + 1, hidden, 3),
        (hidden, embedding_dim, 3),
        (embedding_dim, n_channels, 1),
    ]
    layers = []
    for fan_in, fan_out, size in shapes:
        layer = torch.nn.Conv2d(fan_in, fan_out, size, padding=size // 2)
        bound = float(np.sqrt(6.0 / ((fan_in + fan_out) * size * size)))
        with torch.no_grad():
            layer.weight.copy_(
                (torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound
            )
            layer.bias.zero_()
        layers.append(layer)
    return layers


def _encode(torch, layers: list, image, visible):
    hidden = torch.nn.functional.elu(layers[0](torch.cat([image, visible], dim=1)))
    return layers[1](hidden)


def _resolve_device(torch, device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SpatiomeInputError('device="cuda" but torch finds no CUDA GPU; use "cpu" or "auto"')
    return device


def _check_cnn_parameters(hidden, embedding_dim, n_epochs, learning_rate, hide_fraction, device):
    for name, value in (("hidden", hidden), ("embedding_dim", embedding_dim),
                        ("n_epochs", n_epochs)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise SpatiomeInputError(f"{name} must be a positive integer, got {value!r}")
    if not float(learning_rate) > 0:
        raise SpatiomeInputError(f"learning_rate must be positive, got {learning_rate!r}")
    if not 0.0 <= float(hide_fraction) < 1.0:
        raise SpatiomeInputError(f"hide_fraction must be in [0, 1), got {hide_fraction!r}")
    if device not in ("cpu", "cuda", "auto"):
        raise SpatiomeInputError(f'device must be "cpu", "cuda" or "auto", got {device!r}')
