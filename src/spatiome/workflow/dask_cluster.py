"""Running the pipeline's per-gene and per-block work on a Dask cluster.

``spatiome run --dask-scheduler tcp://host:8786`` (or ``[dask] scheduler`` in the
configuration) connects a ``distributed.Client`` to a running scheduler before any work,
and the steps in :data:`CLUSTER_STEPS` hand their chunks of genes (or blocks of spots,
or of ligand-receptor pairs) to it through :func:`spatiome._core.parallel.map_gene_chunks`.
Chunks are gathered in order and the chunk sizes do not depend on the cluster, so the
results are identical to a run in one process; that is why the address is recorded in the
provenance but is not part of any step's cache key.

Steps that are one global computation (PCA, UMAP, Leiden, the domain mixture), that
scanpy runs (markers), or whose per-block work shares one factorization (stIHC) run in
the local process: :data:`LOCAL_STEPS` says why for each.

Dask is an optional extra (``pip install "spatiome[dask]"``); importing this module does
not import it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from .._core.validate import SpatiomeInputError

logger = logging.getLogger("spatiome")

#: Seconds to wait for the scheduler to answer before the run stops with an error.
CONNECT_TIMEOUT_S = 10.0

#: Packages whose versions must be the same on the workers as here for identical results.
MATCHED_PACKAGES = ("spatiome", "numpy", "scipy", "numba")

#: Pipeline steps whose chunks run on the cluster, and what a chunk is.
CLUSTER_STEPS: dict[str, str] = {
    "moran": "genes",
    "geary": "genes",
    "sparkx": "blocks of spots (the spots x basis cross-products)",
    "spatialde": "genes",
    "trendseek": "genes",
    "interactions": "blocks of ligand-receptor pairs",
}

#: Pipeline steps that stay in the local process, and why.
LOCAL_STEPS: dict[str, str] = {
    "qc, normalize": "one pass over the sparse matrix: shipping it costs more than the work",
    "spatial_qc": "a few metrics per spot (seconds at 200,000 spots)",
    "doublets, graph": "nearest-neighbour searches over all spots",
    "reduce, integration, leiden": "global computations run by scanpy (PCA, UMAP, Leiden)",
    "n_domains, domains_*": "one global embedding and mixture fit (torch for gnn)",
    "markers": "scanpy's Wilcoxon test per domain",
    "multimodal": "one graph network trained on all spots (torch)",
    "deconvolution": "its spot blocks are fitted in one process; the spatial prior couples "
    "neighbouring spots across blocks",
    "neighbourhoods": "analytic enrichment (one sparse product) and one clustering of niches",
    "modules_*": "all genes share one factorization per penalty (stIHC) or one fit (AEH)",
    "report": "writes the outputs",
}


def check_scheduler_address(address: Any) -> str:
    """``address`` as a scheduler address, or one clear error about its form.

    Examples
    --------
    >>> check_scheduler_address(" tcp://10.0.0.5:8786 ")
    'tcp://10.0.0.5:8786'
    >>> try:
    ...     check_scheduler_address("")
    ... except SpatiomeInputError as err:
    ...     print(err)
    dask_scheduler must be the address of a Dask scheduler such as 'tcp://host:8786', got ''
    """
    text = address.strip() if isinstance(address, str) else None
    if not text or any(c.isspace() for c in text):
        raise SpatiomeInputError(
            "dask_scheduler must be the address of a Dask scheduler such as "
            f"'tcp://host:8786', got {address!r}"
        )
    return text


def connect_scheduler(address: str | None, *, timeout_s: float | None = None) -> Any | None:
    """A ``distributed.Client`` connected to the scheduler at ``address`` (None: None).

    The scheduler is probed first, so an address nobody answers at gives one
    :class:`~spatiome._core.validate.SpatiomeInputError` naming it, before any work. The
    workers present must have the same versions of :data:`MATCHED_PACKAGES` as this
    process. The client is not made dask's default, so other dask code of the caller
    is not redirected.

    Parameters
    ----------
    address
        Scheduler address as ``dask scheduler`` prints it (``tcp://host:8786``), or an
        in-process cluster's ``inproc://`` address; None runs everything locally.
    timeout_s
        Seconds to wait for an answer (default :data:`CONNECT_TIMEOUT_S`).

    Returns
    -------
    distributed.Client or None
        Close it when done (or use :func:`scheduler_client`).

    Examples
    --------
    >>> import pytest; distributed = pytest.importorskip("distributed")  # spatiome[dask]
    >>> cluster = distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None)
    >>> client = connect_scheduler(cluster.scheduler_address)
    >>> len(client.scheduler_info()["workers"])
    1
    >>> client.close(); cluster.close()
    >>> connect_scheduler(None) is None
    True
    """
    if address is None:
        return None
    address = check_scheduler_address(address)
    timeout = CONNECT_TIMEOUT_S if timeout_s is None else float(timeout_s)
    distributed = _import_distributed(address)
    _probe(address, timeout)
    try:
        client = distributed.Client(address, timeout=timeout, set_as_default=False)
    except (OSError, ValueError, TimeoutError) as err:
        raise _unreachable(address, err, timeout) from None
    try:
        _check_workers(client, address)
    except BaseException:
        client.close()
        raise
    return client


@contextmanager
def scheduler_client(address: str | None) -> Iterator[Any | None]:
    """:func:`connect_scheduler` as a context: the client is closed on leaving.

    Examples
    --------
    >>> with scheduler_client(None) as client:
    ...     print(client)
    None
    """
    client = connect_scheduler(address)
    try:
        yield client
    finally:
        if client is not None:
            client.close()


def check_scheduler(address: str | None) -> None:
    """Connect to ``address`` and disconnect: one clear error now if it cannot be used.

    Examples
    --------
    >>> check_scheduler(None)
    """
    with scheduler_client(address):
        pass


def cluster_summary(client: Any) -> str:
    """The cluster in words, for the log: scheduler, workers and threads.

    Examples
    --------
    >>> import pytest; distributed = pytest.importorskip("distributed")  # spatiome[dask]
    >>> cluster = distributed.LocalCluster(
    ...     n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ... )
    >>> client = connect_scheduler(cluster.scheduler_address)
    >>> cluster_summary(client).endswith("2 workers, 2 threads")
    True
    >>> client.close(); cluster.close()
    """
    workers = client.scheduler_info()["workers"].values()
    threads = sum(int(w.get("nthreads", 0)) for w in workers)
    return f"Dask scheduler {client.scheduler.address}: {len(workers)} workers, {threads} threads"


def _import_distributed(address: str) -> Any:
    try:
        import distributed
    except ImportError:
        raise SpatiomeInputError(
            f"dask_scheduler={address!r} needs dask.distributed: install it with "
            "pip install 'spatiome[dask]', or leave the scheduler out to run locally"
        ) from None
    return distributed


def _probe(address: str, timeout: float) -> None:
    """Open and close one connection to the scheduler; a SpatiomeInputError if none opens.

    The probe runs on its own event loop in a helper thread, so it also works where an
    event loop is already running (a notebook).
    """
    from distributed.comm import connect

    async def knock() -> None:
        # the handshake too must answer in time (a port held by another kind of server)
        comm = await asyncio.wait_for(connect(address, timeout=timeout), timeout)
        await comm.close()

    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, knock()).result()
    except (OSError, ValueError, TimeoutError) as err:
        raise _unreachable(address, err, timeout) from None


def _unreachable(address: str, err: Exception, timeout: float) -> SpatiomeInputError:
    reason = str(err) or f"no answer within {timeout:g} s"
    return SpatiomeInputError(
        f"cannot reach the Dask scheduler at {address!r} ({reason}): check that "
        "'dask scheduler' is running there, that the host and port are the ones it "
        "printed, and that this machine can reach them (firewall, VPN, login node); or "
        "leave out --dask-scheduler / [dask] scheduler to run locally"
    )


def _check_workers(client: Any, address: str) -> None:
    """Stop unless the workers run the same versions of :data:`MATCHED_PACKAGES`."""
    if not client.scheduler_info()["workers"]:
        logger.warning(
            "Dask scheduler %s has no workers yet: the cluster steps wait for them "
            "(start some with 'dask worker %s')",
            address,
            address,
        )
        return
    try:
        reported = client.run(_package_versions)
    except Exception as err:
        raise SpatiomeInputError(
            f"the workers of the Dask scheduler at {address!r} cannot run spatiome "
            f"({type(err).__name__}: {err}): install spatiome {_package_versions()['spatiome']} "
            "in the workers' environment"
        ) from None
    local = _package_versions()
    differing = sorted(
        f"{name} {version} on {worker} (here {local.get(name)})"
        for worker, versions in reported.items()
        for name, version in versions.items()
        if version != local.get(name)
    )
    if differing:
        shown = "; ".join(differing[:3]) + ("; ..." if len(differing) > 3 else "")
        raise SpatiomeInputError(
            f"the workers of the Dask scheduler at {address!r} run other package versions "
            f"than this process ({shown}): install the same versions of "
            f"{', '.join(MATCHED_PACKAGES)} on the workers, so that results are identical"
        )


def _package_versions() -> dict[str, str | None]:
    """Versions of :data:`MATCHED_PACKAGES` here (runs on the workers too)."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in MATCHED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


__all__ = [
    "CLUSTER_STEPS",
    "LOCAL_STEPS",
    "check_scheduler",
    "check_scheduler_address",
    "cluster_summary",
    "connect_scheduler",
    "scheduler_client",
]
