"""cell2location-style negative binomial model fitted by minibatch variational inference.

Spot ``s``, gene ``g``: ``x_sg ~ NB(mean = y_s * (m_g * sum_t w_st M_gt + b_g), alpha_g)``
with cell abundances ``w_st`` (gamma prior whose mean puts ``cells_per_spot`` cells in
a spot), a per-gene platform factor ``m_g``, a per-spot detection efficiency ``y_s``
(gamma prior with mean 1), an additive per-gene background ``b_g`` and gene-wise
inverse dispersion ``alpha_g``. The posterior is approximated by independent
log-normals, fitted by stochastic gradient ascent of the evidence lower bound on
minibatches of spots (local terms scaled to the full data). Only torch's CPU kernels
are used; the run is deterministic under a seed.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from .._core.progress import Progress
from ._solvers import nnls_shared

_W_SHAPE = 0.5  # gamma shape of the abundance prior (< 1 favours few types per spot)
_Y_SHAPE = 20.0  # detection efficiency prior: gamma(20, 20)
_LR = 0.01


def fit_nb_vi(
    counts: sp.csr_matrix,
    profiles: np.ndarray,
    *,
    n_epochs: int | None,
    batch_size: int,
    cells_per_spot: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict]:
    """Posterior mean abundances (spots x types) and a summary of the fit.

    Every epoch, with its loss (the sum of the minibatches' negative ELBO), is reported as
    progress of the task ``"deconv.nb_vi"``.
    """
    torch = _import_torch()
    n_spots = counts.shape[0]
    n_batches = math.ceil(n_spots / batch_size)
    if n_epochs is None:
        n_epochs = max(100, math.ceil(3000 / n_batches))
    seed = int(rng.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = _Model(torch, counts, profiles, cells_per_spot)
        optimizer = torch.optim.Adam(model.parameters(), lr=_LR)
        losses = []
        with Progress("deconv.nb_vi", n_epochs, "epoch") as progress:
            for epoch in range(n_epochs):
                order = torch.randperm(n_spots, generator=generator).numpy()
                total = 0.0
                for lo in range(0, n_spots, batch_size):
                    rows = np.sort(order[lo : lo + batch_size])
                    optimizer.zero_grad()
                    loss = model.negative_elbo(rows, generator)
                    loss.backward()
                    optimizer.step()
                    total += loss.item()
                losses.append(total)
                progress.update(epoch + 1, f"loss {total:.4g}")
        with torch.no_grad():
            abundance = model.posterior_mean_abundance().numpy()
    finally:
        torch.random.set_rng_state(state)
    info = {
        "n_epochs": int(n_epochs),
        "batch_size": int(batch_size),
        "final_loss": float(losses[-1]),
        "cells_per_spot": float(cells_per_spot),
    }
    return abundance, info


def _import_torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - exercised without the extra
        from .._core.validate import SpatiomeInputError

        raise SpatiomeInputError(
            "method='nb_vi' needs torch: pip install 'spatiome[deep]'"
        ) from None
    return torch


class _Model:
    """Variational parameters and the negative ELBO of one minibatch."""

    def __init__(self, torch, counts: sp.csr_matrix, profiles: np.ndarray, cells_per_spot):
        self.torch = torch
        dtype = torch.float32
        self.counts = counts.tocsr().astype(np.float32)
        self.n_spots, self.n_genes = counts.shape
        n_types = profiles.shape[1]
        self.profiles = torch.tensor(profiles, dtype=dtype)  # G x T
        totals = np.asarray(counts.sum(axis=1)).ravel()
        # start: NNLS weights rescaled to the prior's cells per spot; m from the depth ratio
        start = np.asarray(nnls_shared(profiles.T @ profiles, np.asarray(counts @ profiles)))
        start = np.maximum(start, 1e-3 * start.sum(axis=1, keepdims=True) / n_types + 1e-6)
        scale = cells_per_spot / np.median(start.sum(axis=1))
        self.prior_rate = _W_SHAPE * n_types / cells_per_spot
        depth = np.median(totals) / max(np.median((start * scale) @ profiles.sum(axis=0)), 1e-12)
        self.log_m_prior = math.log(max(depth, 1e-12))

        def param(values):
            return torch.nn.Parameter(torch.tensor(np.asarray(values), dtype=dtype))

        self.w_loc = param(np.log(start * scale))
        self.w_log_scale = param(np.full((self.n_spots, n_types), -2.0))
        self.y_loc = param(np.zeros(self.n_spots))
        self.y_log_scale = param(np.full(self.n_spots, -2.0))
        self.m_loc = param(np.full(self.n_genes, self.log_m_prior))
        self.m_log_scale = param(np.full(self.n_genes, -2.0))
        bulk = np.asarray(counts.mean(axis=0)).ravel()
        self.b_loc = param(np.log(0.01 * bulk + 1e-6))
        self.b_log_scale = param(np.full(self.n_genes, -2.0))
        self.alpha_loc = param(np.full(self.n_genes, math.log(10.0)))

    def parameters(self):
        return [
            self.w_loc,
            self.w_log_scale,
            self.y_loc,
            self.y_log_scale,
            self.m_loc,
            self.m_log_scale,
            self.b_loc,
            self.b_log_scale,
            self.alpha_loc,
        ]

    def negative_elbo(self, rows: np.ndarray, generator):
        torch = self.torch
        x = torch.tensor(self.counts[rows].toarray())
        scale_local = self.n_spots / len(rows)

        def draw(loc, log_scale):
            eps = torch.randn(loc.shape, generator=generator)
            sd = torch.exp(log_scale)
            value = loc + sd * eps
            # log q(value) of the log-normal, in log space (+ value for the Jacobian)
            log_q = (-0.5 * eps**2 - log_scale - 0.5 * math.log(2 * math.pi)).sum()
            return value, log_q

        log_w, q_w = draw(self.w_loc[rows], self.w_log_scale[rows])
        log_y, q_y = draw(self.y_loc[rows], self.y_log_scale[rows])
        log_m, q_m = draw(self.m_loc, self.m_log_scale)
        log_b, q_b = draw(self.b_loc, self.b_log_scale)
        w, y, m, b = log_w.exp(), log_y.exp(), log_m.exp(), log_b.exp()
        mean = y[:, None] * (m[None, :] * (w @ self.profiles.T) + b[None, :])
        theta = torch.exp(self.alpha_loc)[None, :]
        log_lik = (
            torch.lgamma(x + theta)
            - torch.lgamma(theta)
            - torch.lgamma(x + 1)
            + theta * (torch.log(theta) - torch.log(theta + mean))
            + x * (torch.log(mean + 1e-10) - torch.log(theta + mean))
        ).sum()
        # priors on the log scale (log density of the variable + its log for the Jacobian)
        log_prior_local = (_gamma_log_density(w, _W_SHAPE, self.prior_rate) + log_w).sum()
        log_prior_local = (
            log_prior_local + (_gamma_log_density(y, _Y_SHAPE, _Y_SHAPE) + log_y).sum()
        )
        log_prior_global = (-0.5 * (log_m - self.log_m_prior) ** 2).sum()
        log_prior_global = log_prior_global + (_gamma_log_density(b, 1.0, 100.0) + log_b).sum()
        elbo = scale_local * (log_lik + log_prior_local - q_w - q_y) + log_prior_global - q_m - q_b
        return -elbo / (self.n_spots * self.n_genes)

    def posterior_mean_abundance(self):
        return self.torch.exp(self.w_loc + 0.5 * self.torch.exp(2 * self.w_log_scale))


def _gamma_log_density(value, shape: float, rate: float):
    import torch

    return (
        shape * math.log(rate) - math.lgamma(shape) + (shape - 1) * torch.log(value) - rate * value
    )
