"""SpatialDE exact mode: the least time its full-rank kernels take, and three ways around
that floor, measured.

On the input of ``benchmarks/spatialde.py``'s exact comparison (``prepared``: the simulated
hex grid in array units, NaiveDE's recipe), with ``--threads`` BLAS threads:

1. **Routes.** The length scales as ``svg.spatialde`` takes them, and which of them are
   full rank (their kernels take the dense route: ``dsytrd``, then ``dstevd`` on T).
2. **Floor.** For each dense kernel, with the BLAS threads ``svg.spatialde`` gives it:
   forming it, ``_tridiagonal_spectrum`` (reduction, eigenpairs of T, projection of the
   ones vector) and the projection of all genes (``Q^T Y``, then ``V^T``). Their sum is a
   lower bound on exact mode's time with this algorithm on this machine: the other
   length scales and the fits are not in it.
3. **The whole run**, ``svg.spatialde(..., n_jobs=threads)``, median of ``--repeats``.
4. **Rejected ways around the floor**, each timed on the same kernels:

   a. single precision: the dense kernels by ``ssyevd`` in float32; the whole run's time,
      its largest LLR difference from the float64 run and whether the calls (Storey
      q < 0.05) are the same;
   b. length scales side by side: the dense kernels' reductions on ``--threads`` Python
      threads with one BLAS thread each (LAPACK through SciPy's Cython LAPACK, which
      releases the GIL; SciPy's Python wrappers hold it), against one after another on
      ``--threads`` BLAS threads;
   c. LAPACK's two-stage reduction (``dsytrd_2stage``, called from the OpenBLAS that SciPy
      bundles, when it exports it), eigenvalues only: LAPACK has no routine that applies
      its second-stage reflectors to the genes, so it could give log det but not the
      projections.

``--original-seconds`` is SpatialDE 1.1.3's time on the same input and machine (from
``benchmarks/spatialde.py``; by default the latest such row in ``results/spatialde.csv``
with the same machine and size); the largest speed ratio this algorithm can reach is that
time over the floor.

Run::

    python benchmarks/spatialde_floor.py [--n-spots 3000] [--threads 2] [--repeats 3]

Prints a table and appends one row to ``benchmarks/results/spatialde_floor.csv``.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from numba.extending import get_cython_function_address
from scipy.linalg import lapack
from threadpoolctl import threadpool_info, threadpool_limits

import spatiome as sm
from spatiome._core.files import atomic_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, with_environment  # noqa: E402
from spatialde import RESULTS as COMPARISON_RESULTS  # noqa: E402
from spatialde import load, prepared, timed_spatialde  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "spatialde_floor.csv"
model = importlib.import_module("spatiome.svg.spatialde")

_INT = ctypes.POINTER(ctypes.c_int)
_DOUBLE = ctypes.POINTER(ctypes.c_double)


def _int(value: int):
    return ctypes.byref(ctypes.c_int(value))


def _doubles(array: np.ndarray):
    return array.ctypes.data_as(_DOUBLE)


def dense_scales(adata) -> list[float]:
    """The length scales whose kernels take the dense (full-rank) route."""
    coordinates = adata.obsm["spatial"]
    scales = model._length_scales(coordinates, None)
    builders = model._se_builders(coordinates, scales, "exact", 0, 0, explicit_vectors=False)
    return sorted(
        b.scale for b in builders if getattr(b.build, "func", None) is model._dense_spectrum
    )


def floor_seconds(squared: np.ndarray, scales: list[float], genes: np.ndarray) -> dict:
    """Per dense kernel: forming it, its spectrum, and projecting the genes (seconds)."""
    parts = {"kernel": 0.0, "spectrum": 0.0, "projection": 0.0}
    for scale in scales:
        start = time.perf_counter()
        kernel = model._se_kernel(squared, scale)
        middle = time.perf_counter()
        spectrum = model._tridiagonal_spectrum(kernel, "tridiagonal")
        end = time.perf_counter()
        spectrum.project(genes)
        parts["kernel"] += middle - start
        parts["spectrum"] += end - middle
        parts["projection"] += time.perf_counter() - end
    return parts


def single_precision_spectrum(kernel: np.ndarray, name: str):
    """``_tridiagonal_spectrum``'s result from a float32 eigendecomposition."""
    n = kernel.shape[0]
    gower = model._gower(float(np.trace(kernel)), float(kernel.sum()), n)
    values, vectors, info = lapack.ssyevd(np.asfortranarray(kernel, dtype=np.float32), lower=1)
    if info != 0:
        raise RuntimeError(f"ssyevd failed (info={info})")
    keep = values > model.EIGEN_FLOOR
    vectors = np.ascontiguousarray(vectors[:, keep], dtype=np.float64)
    return model._Spectrum(
        vectors=vectors,
        values=values[keep].astype(np.float64),
        ut1=vectors.sum(axis=0),
        n=n,
        gower=gower,
        decomposition=f"{name}(float32)",
    )


def run_single_precision(adata, threads: int, repeats: int) -> tuple[float, pd.DataFrame]:
    """``timed_spatialde`` (median seconds, table) with the float32 dense spectra."""
    double = model._tridiagonal_spectrum
    model._tridiagonal_spectrum = single_precision_spectrum
    try:
        seconds, _, table = timed_spatialde(adata, repeats, threads)
    finally:
        model._tridiagonal_spectrum = double
    return seconds, table


def one_stage_reduction(kernel: np.ndarray) -> tuple:
    """SciPy's ``dsytrd`` (lower) on a copy, blocked as in ``_tridiagonal_spectrum``."""
    work, _ = lapack.dsytrd_lwork(kernel.shape[0], lower=1)
    return lapack.dsytrd(kernel.copy(order="F"), lower=1, lwork=max(int(work), 1))


def gil_free_dsytrd():
    """``dsytrd`` (lower) from SciPy's Cython LAPACK, called through ctypes (no GIL)."""
    address = get_cython_function_address("scipy.linalg.cython_lapack", "dsytrd")
    function = ctypes.CFUNCTYPE(
        None, ctypes.c_char_p, _INT, _DOUBLE, _INT, _DOUBLE, _DOUBLE, _DOUBLE, _DOUBLE, _INT, _INT
    )(address)

    def reduce(kernel: np.ndarray) -> np.ndarray:
        n = kernel.shape[0]
        a = np.asfortranarray(kernel)
        diagonal, off, tau = np.empty(n), np.empty(n - 1), np.empty(n - 1)
        work = np.empty(64 * n)
        info = ctypes.c_int()
        function(
            b"L",
            _int(n),
            _doubles(a),
            _int(n),
            _doubles(diagonal),
            _doubles(off),
            _doubles(tau),
            _doubles(work),
            _int(work.size),
            ctypes.byref(info),
        )
        if info.value != 0:
            raise RuntimeError(f"dsytrd failed (info={info.value})")
        return diagonal

    return reduce


def side_by_side(kernels: list[np.ndarray], threads: int) -> tuple[float, float, float]:
    """Seconds for the reductions in turn on ``threads`` BLAS threads and side by side on
    ``threads`` Python threads of one BLAS thread, and the largest difference of T's
    diagonal between the two."""
    with threadpool_limits(limits=threads, user_api="blas"):
        start = time.perf_counter()
        in_turn = [one_stage_reduction(k)[1] for k in kernels]
        in_turn_seconds = time.perf_counter() - start
    reduce = gil_free_dsytrd()
    copies = [k.copy(order="F") for k in kernels]
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        parallel = list(pool.map(reduce, copies))
        parallel_seconds = time.perf_counter() - start
    difference = max(float(np.abs(a - b).max()) for a, b in zip(in_turn, parallel, strict=True))
    return in_turn_seconds, parallel_seconds, difference


def two_stage_reduction():
    """``dsytrd_2stage`` (eigenvalues only) from the OpenBLAS SciPy bundles, or None."""
    for library in threadpool_info():
        path = library.get("filepath", "")
        if library.get("internal_api") != "openblas" or "scipy.libs" not in path:
            continue
        handle = ctypes.CDLL(path)
        for symbol in ("scipy_dsytrd_2stage_", "dsytrd_2stage_"):
            if hasattr(handle, symbol):
                return _two_stage(getattr(handle, symbol))
    return None


def _two_stage(function):
    def reduce(kernel: np.ndarray) -> np.ndarray:
        n = kernel.shape[0]
        a = np.asfortranarray(kernel)
        diagonal, off, tau = np.empty(n), np.empty(n - 1), np.empty(n - 1)
        info = ctypes.c_int()
        sizes = [np.empty(1), np.empty(1)]
        for query in (True, False):
            hous = sizes[0] if query else np.empty(int(sizes[0][0]))
            work = sizes[1] if query else np.empty(int(sizes[1][0]))
            function(
                b"N",
                b"L",
                _int(n),
                _doubles(a),
                _int(n),
                _doubles(diagonal),
                _doubles(off),
                _doubles(tau),
                _doubles(hous),
                _int(-1 if query else hous.size),
                _doubles(work),
                _int(-1 if query else work.size),
                ctypes.byref(info),
                ctypes.c_size_t(1),
                ctypes.c_size_t(1),
            )
            if info.value != 0:
                raise RuntimeError(f"dsytrd_2stage failed (info={info.value})")
        return np.sort(lapack.dsterf(diagonal, off)[0])

    return reduce


def compare_two_stage(kernels: list[np.ndarray], threads: int) -> tuple[float, float, float]:
    """Seconds of one-stage and two-stage reductions to eigenvalues, and the largest
    difference of those eigenvalues; NaN where the two-stage routine is not exported."""
    reduce = two_stage_reduction()
    if reduce is None:
        return float("nan"), float("nan"), float("nan")
    one_stage = two_stage = 0.0
    difference = 0.0
    with threadpool_limits(limits=threads, user_api="blas"):
        for kernel in kernels:
            start = time.perf_counter()
            _, diagonal, off, _, _ = one_stage_reduction(kernel)
            expected = np.sort(lapack.dsterf(diagonal, off)[0])
            middle = time.perf_counter()
            values = reduce(kernel.copy(order="F"))
            two_stage += time.perf_counter() - middle
            one_stage += middle - start
            difference = max(difference, float(np.abs(values - expected).max()))
    return one_stage, two_stage, difference


def original_seconds(n_spots: int, threads: int) -> float:
    """SpatialDE 1.1.3's latest time on this machine and size in the comparison's CSV."""
    if not COMPARISON_RESULTS.exists():
        return float("nan")
    rows = pd.read_csv(COMPARISON_RESULTS)
    rows = rows[
        (rows["comparison"] == "exact vs SpatialDE 1.1.3")
        & (rows["n_spots"] == n_spots)
        & (rows["machine"] == machine())
        & (rows["openblas_threads"] == threads)
        & rows["other_seconds"].notna()
    ]
    return float(rows["other_seconds"].iloc[-1]) if len(rows) else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-spots", type=int, default=3_000)
    parser.add_argument("--n-genes", type=int, default=1_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--original-seconds", type=float, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    adata = prepared(args.n_spots, args.n_genes)
    sm.svg.spatialde(prepared(200, 20), layer="regressed", normalize=None, copy=True)
    scales = dense_scales(adata)
    squared = model._squared_distances(adata.obsm["spatial"])
    genes = np.asarray(adata.layers["regressed"], dtype=np.float64)
    genes = genes - genes.mean(axis=0)
    # The BLAS threads that svg.spatialde gives these kernels.
    blas_threads = args.threads if adata.n_obs >= model.BLAS_THREADS_MIN_SPOTS else 1
    with threadpool_limits(limits=blas_threads, user_api="blas"):
        parts = floor_seconds(squared, scales, genes)
    seconds, _, table = timed_spatialde(adata, args.repeats, args.threads)
    single_seconds, single = run_single_precision(adata, args.threads, args.repeats)
    kernels = [model._se_kernel(squared, scale) for scale in scales]
    in_turn, parallel, parallel_difference = side_by_side(kernels, args.threads)
    one_stage, two_stage, two_stage_difference = compare_two_stage(kernels, args.threads)
    original = (
        args.original_seconds
        if args.original_seconds is not None
        else original_seconds(args.n_spots, args.threads)
    )
    floor = sum(parts.values())
    calls = table["qval_storey"] < 0.05
    row = {
        "n_spots": adata.n_obs,
        "n_genes": adata.n_vars,
        "threads": args.threads,
        "dense_length_scales": " ".join(f"{s:.3g}" for s in scales),
        "floor_seconds": floor,
        **{f"floor_{name}_seconds": value for name, value in parts.items()},
        "spatiome_seconds": seconds,
        "original_seconds": original,
        "speedup": original / seconds,
        "speedup_ceiling": original / floor,
        "float32_seconds": single_seconds,
        "float32_max_abs_diff_llr": float((single["llr"] - table["llr"]).abs().max()),
        "float32_median_abs_diff_llr": float((single["llr"] - table["llr"]).abs().median()),
        "float32_same_calls": bool(((single["qval_storey"] < 0.05) == calls).all()),
        "reductions_in_turn_seconds": in_turn,
        "reductions_side_by_side_seconds": parallel,
        "side_by_side_max_abs_diff": parallel_difference,
        "one_stage_eigenvalues_seconds": one_stage,
        "two_stage_eigenvalues_seconds": two_stage,
        "two_stage_max_abs_diff": two_stage_difference,
        "load_average": load(),
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    result = with_environment(pd.DataFrame([row]))
    print(result.T.to_string(header=False, float_format=lambda v: f"{v:.4g}"))
    if args.out.exists():
        result = pd.concat([pd.read_csv(args.out), result], ignore_index=True)
    with atomic_path(args.out) as path:
        result.to_csv(path, index=False)
    print(f"\nappended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
