"""Batched non-negative quadratic programs: Lawson-Hanson on normal equations, in numba."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def _nnls_gram(h, b, tol):
    """argmin_{w >= 0} 0.5 w'Hw - b'w for one symmetric positive definite ``H``."""
    n = b.shape[0]
    w = np.zeros(n)
    passive = np.zeros(n, dtype=np.bool_)
    neg_grad = b.copy()
    for _ in range(3 * n + 3):
        best, j = tol, -1
        for k in range(n):
            if not passive[k] and neg_grad[k] > best:
                best, j = neg_grad[k], k
        if j < 0:
            break
        passive[j] = True
        for _inner in range(3 * n + 3):
            idx = np.flatnonzero(passive)
            sub = np.empty((idx.shape[0], idx.shape[0]))
            rhs = np.empty(idx.shape[0])
            for a in range(idx.shape[0]):
                rhs[a] = b[idx[a]]
                for c in range(idx.shape[0]):
                    sub[a, c] = h[idx[a], idx[c]]
            s = np.linalg.solve(sub, rhs)
            if s.min() > 0.0:
                for a in range(idx.shape[0]):
                    w[idx[a]] = s[a]
                break
            alpha = 1.0
            for a in range(idx.shape[0]):
                if s[a] <= 0.0:
                    denom = w[idx[a]] - s[a]
                    if denom > 0.0:
                        alpha = min(alpha, w[idx[a]] / denom)
            for a in range(idx.shape[0]):
                w[idx[a]] += alpha * (s[a] - w[idx[a]])
                if w[idx[a]] <= 1e-15 * (1.0 + abs(s[a])):
                    w[idx[a]] = 0.0
                    passive[idx[a]] = False
            if not passive.any():
                break
        for k in range(n):
            acc = b[k]
            for c in range(n):
                acc -= h[k, c] * w[c]
            neg_grad[k] = acc
    return w


def nnls_gram_batch(hessians: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve one non-negative quadratic program per row: ``H_i`` is (T, T), ``b_i`` (T,)."""
    solve = _batch_parallel if rhs.shape[0] > _PARALLEL_ROWS else _batch_serial
    return solve(hessians, rhs)


_PARALLEL_ROWS = 2000


def _batch_body(hessians, rhs):
    n, t = rhs.shape
    out = np.zeros((n, t))
    for i in numba.prange(n):
        scale = 0.0
        for k in range(t):
            scale = max(scale, abs(rhs[i, k]))
        if scale == 0.0:
            continue
        out[i] = _nnls_gram(hessians[i], rhs[i], 1e-12 * scale)
    return out


_batch_serial = numba.njit(cache=True)(_batch_body)
_batch_parallel = numba.njit(cache=True, parallel=True)(_batch_body)


def nnls_shared(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Non-negative least squares for many right-hand sides sharing one Gram matrix."""
    hessians = np.broadcast_to(gram, (rhs.shape[0],) + gram.shape)
    return nnls_gram_batch(np.ascontiguousarray(hessians), np.ascontiguousarray(rhs))
