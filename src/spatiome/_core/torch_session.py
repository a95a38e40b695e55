"""What spatiome's torch models share: the import, a seeded deterministic session, weights.

torch is imported inside the functions, so importing this module never imports it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np


def import_torch(feature: str):
    """``torch``, or an ImportError that says how to install it for ``feature``."""
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            f'{feature} needs PyTorch: pip install "spatiome[deep]" (import failed: {err})'
        ) from err
    return torch


@contextmanager
def deterministic_session(seed: int, n_threads: int | None) -> Iterator:
    """A torch ``Generator`` seeded with ``seed``, with deterministic algorithms requested
    and ``n_threads`` threads (torch's setting when None); both are restored on exit, and
    the global torch seed is never touched.

    Examples
    --------
    >>> import pytest; torch = pytest.importorskip("torch")
    >>> threads = torch.get_num_threads()
    >>> with deterministic_session(0, 1) as generator:
    ...     first = torch.rand(2, generator=generator)
    ...     torch.get_num_threads()
    1
    >>> with deterministic_session(0, None) as generator:
    ...     bool((torch.rand(2, generator=generator) == first).all())
    True
    >>> torch.get_num_threads() == threads
    True
    """
    import torch

    previous_threads = torch.get_num_threads()
    previous_deterministic = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    try:
        if n_threads is not None:
            torch.set_num_threads(int(n_threads))
        torch.use_deterministic_algorithms(True, warn_only=True)
        yield torch.Generator().manual_seed(int(seed))
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(
            previous_deterministic[0], warn_only=previous_deterministic[1]
        )


def glorot_uniform(shape: tuple[int, int], generator, gain: float = 1.0, device=None):
    """A trainable float32 weight drawn uniformly in +-gain * sqrt(6 / (fan_in + fan_out)).

    The values are drawn on the CPU from ``generator`` and then moved to ``device``, so
    every device starts from the same weights.
    """
    import torch

    bound = float(gain * np.sqrt(6.0 / (shape[0] + shape[1])))
    weight = (torch.rand(shape, generator=generator, dtype=torch.float32) * 2.0 - 1.0) * bound
    if device is not None:
        weight = weight.to(device)
    return weight.requires_grad_(True)


DEVICES = ("cpu", "cuda", "auto")


def check_training(minibatch: object, batch_size: object, device: object) -> None:
    """One clear error for bad mini-batch or device options of a graph network."""
    import numbers

    from .validate import SpatiomeInputError

    if minibatch is not None and not isinstance(minibatch, bool | np.bool_):
        raise SpatiomeInputError(f"minibatch must be True, False or None, got {minibatch!r}")
    if (
        not isinstance(batch_size, numbers.Integral)
        or isinstance(batch_size, bool)
        or batch_size < 2
    ):
        raise SpatiomeInputError(f"batch_size must be an integer >= 2, got {batch_size!r}")
    if device not in DEVICES:
        raise SpatiomeInputError(f"device must be one of {DEVICES}, got {device!r}")


def resolve_device(device: str, feature: str):
    """The ``torch.device`` for ``device``: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when
    available, else the CPU).

    Raises
    ------
    SpatiomeInputError
        If ``device`` is not one of :data:`DEVICES`, or is ``"cuda"`` without a CUDA GPU.

    Examples
    --------
    >>> import pytest; torch = pytest.importorskip("torch")
    >>> resolve_device("cpu", "example").type
    'cpu'
    >>> resolve_device("auto", "example").type == ("cuda" if torch.cuda.is_available() else "cpu")
    True
    """
    from .validate import SpatiomeInputError

    if device not in DEVICES:
        raise SpatiomeInputError(f"{feature}: device must be one of {DEVICES}, got {device!r}")
    torch = import_torch(feature)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SpatiomeInputError(
            f'{feature}: device="cuda" but torch sees no CUDA GPU (torch '
            f'{torch.__version__}); pass device="cpu" or device="auto"'
        )
    return torch.device(device)
