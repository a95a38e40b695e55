"""Per-spot maximum likelihood of non-negative cell-type weights by iterative reweighting.

For spot ``i`` the expected count of gene ``g`` is ``sum_t w_it A_gt``; the counts are
Poisson-log-normal (:mod:`._pln`). Each iteration is a Fisher scoring step: the
negative log likelihood is replaced by a quadratic with the score as gradient and the
expected information as curvature (always positive definite), the non-negative
quadratic program is solved exactly (:mod:`._solvers`), and the step is halved until
the likelihood improves. Spots are processed in chunks whose
counts are densified one chunk at a time; the per-spot Hessians of a chunk come from a
single matrix product with the gene-wise outer products of ``A``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .._core.progress import Progress
from ._pln import MIN_RATE, PLNTable
from ._solvers import nnls_gram_batch

_MAX_HALVINGS = 6


@dataclass
class Penalty:
    """Quadratic pull of each spot's weights towards a target: ``0.5 * s_i |w_i - t_i|^2``."""

    strength: np.ndarray  # (n_spots,) s_i, in units of the spot's own mean curvature
    target: np.ndarray  # (n_spots, n_types)


def fit_weights(
    counts: sp.csr_matrix,
    profiles: np.ndarray,
    table: PLNTable,
    start: np.ndarray,
    *,
    penalty: Penalty | None = None,
    max_iter: int = 25,
    tol: float = 1e-3,
    chunk_size: int = 2048,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Weights (n_spots, n_types) and each spot's log likelihood at them.

    ``progress``, when given, is advanced by the number of spots of each chunk fitted.
    """
    weights = np.array(start, dtype=np.float64)
    loglik = np.empty(counts.shape[0])
    outer = _outer_products(profiles)
    for lo in range(0, counts.shape[0], chunk_size):
        hi = min(lo + chunk_size, counts.shape[0])
        chunk_penalty = None
        if penalty is not None:
            chunk_penalty = Penalty(penalty.strength[lo:hi], penalty.target[lo:hi])
        weights[lo:hi], loglik[lo:hi] = _fit_chunk(
            counts[lo:hi].toarray().astype(np.float64),
            profiles,
            outer,
            table,
            weights[lo:hi],
            chunk_penalty,
            max_iter,
            tol,
        )
        if progress is not None:
            progress.advance(hi - lo)
    return weights, loglik


def _outer_products(profiles: np.ndarray) -> np.ndarray:
    """(n_genes, T(T+1)/2): row g holds the upper triangle of the outer product A_g A_g'."""
    upper = np.triu_indices(profiles.shape[1])
    return np.ascontiguousarray(profiles[:, upper[0]] * profiles[:, upper[1]])


def _hessians(information: np.ndarray, outer: np.ndarray, n_types: int) -> np.ndarray:
    """Per-spot sum_g information_g A_g A_g' from one product with the triangles."""
    upper = np.triu_indices(n_types)
    packed = information @ outer
    hess = np.empty((information.shape[0], n_types, n_types))
    hess[:, upper[0], upper[1]] = packed
    hess[:, upper[1], upper[0]] = packed
    return hess


def _objective_terms(dense, profiles, table, weights) -> np.ndarray:
    rates = np.maximum(weights @ profiles.T, MIN_RATE)
    return table.evaluate(dense, rates, derivatives=False)[0].sum(axis=1)


def _penalty_value(penalty: Penalty | None, weights: np.ndarray, scale: np.ndarray):
    if penalty is None:
        return np.zeros(weights.shape[0])
    diff = weights - penalty.target
    return 0.5 * penalty.strength * scale * np.einsum("ij,ij->i", diff, diff)


def _sub(penalty: Penalty | None, rows: np.ndarray) -> Penalty | None:
    if penalty is None:
        return None
    return Penalty(penalty.strength[rows], penalty.target[rows])


def _fit_chunk(dense, profiles, outer, table, weights, penalty, max_iter, tol):
    """Fisher scoring with step halving for the spots of one densified chunk."""
    n_spots, n_types = weights.shape
    diagonal = np.arange(n_types)
    # log likelihood, score and information at the current weights of every spot
    rates = np.maximum(weights @ profiles.T, MIN_RATE)
    terms = table.evaluate(dense, rates)
    loglik = terms[0].sum(axis=1)
    score, information = terms[1], terms[2]
    curvature = np.ones(n_spots)
    active = np.arange(n_spots)
    for iteration in range(max_iter):
        if active.size == 0:
            break
        w = weights[active]
        grad = -(score @ profiles)
        hess = _hessians(information, outer, n_types)
        diag = hess[:, diagonal, diagonal]
        hess[:, diagonal, diagonal] += (1e-10 * diag.mean(axis=1) + 1e-300)[:, None]
        sub_penalty = _sub(penalty, active)
        if penalty is not None:
            if iteration == 0:
                curvature[active] = diag.mean(axis=1)
            s = sub_penalty.strength * curvature[active]
            grad += s[:, None] * (w - sub_penalty.target)
            hess[:, diagonal, diagonal] += s[:, None]
        rhs = np.einsum("itk,ik->it", hess, w) - grad
        step = nnls_gram_batch(hess, rhs) - w
        old = -loglik[active] + _penalty_value(sub_penalty, w, curvature[active])
        accepted = _line_search(
            dense[active],
            profiles,
            table,
            w,
            step,
            old,
            loglik[active],
            sub_penalty,
            curvature[active],
        )
        new_w, new_ll, new_score, new_information = accepted
        change = np.abs(new_w - w).max(axis=1)
        weights[active] = new_w
        loglik[active] = new_ll
        moving = change > tol * np.maximum(new_w.sum(axis=1), 1e-12)
        active = active[moving]
        score, information = new_score[moving], new_information[moving]
    return weights, loglik


def _line_search(x, profiles, table, w, step, old, loglik, penalty, curvature):
    """Halve the step until the penalized negative log likelihood does not increase.

    Returns the accepted weights with their log likelihood, score and information. A
    row that never improves keeps its weights and log likelihood; it has then
    converged (no change), so its score and information are not used again.
    """
    out_w = w.copy()
    out_ll = loglik.copy()
    out_score = np.empty_like(x)
    out_info = np.empty_like(x)
    todo = np.arange(w.shape[0])
    fraction = 1.0
    for _ in range(_MAX_HALVINGS):
        trial = w[todo] + fraction * step[todo]
        rates = np.maximum(trial @ profiles.T, MIN_RATE)
        terms = table.evaluate(x[todo], rates)
        ll = terms[0].sum(axis=1)
        objective = -ll + _penalty_value(_sub(penalty, todo), trial, curvature[todo])
        ok = objective <= old[todo] + 1e-9 * np.abs(old[todo])
        keep = todo[ok]
        out_w[keep], out_ll[keep] = trial[ok], ll[ok]
        out_score[keep], out_info[keep] = terms[1][ok], terms[2][ok]
        todo = todo[~ok]
        if todo.size == 0:
            break
        fraction *= 0.5
    return out_w, out_ll, out_score, out_info
