"""The dual-attention graph autoencoder behind :func:`spatiome.integrate.multimodal.multimodal`.

Imported only when the model is trained, so ``import spatiome`` never imports torch. Graph
products go through scipy (CSR times dense), which is deterministic and faster than torch's
sparse kernels on CPU for graphs with a few dozen neighbours per spot.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .._core.progress import Progress
from .._core.torch_session import deterministic_session, glorot_uniform

# SpatialGlue adds this to the attention scores before the softmax.
_SCORE_OFFSET = 1e-6


@dataclass
class Trained:
    """What the model returns, as numpy arrays (spots in rows)."""

    embedding: np.ndarray  # integrated, L2-normalized (n_spots, latent_dim)
    modality_embeddings: list[np.ndarray]  # per modality, L2-normalized
    view_weights: list[np.ndarray]  # per modality, (n_spots, 2): spatial vs feature graph
    modality_weights: np.ndarray  # (n_spots, 2)
    losses: np.ndarray  # (n_epochs, 4): the four terms, unweighted
    final_losses: np.ndarray  # (4,) after training


@functools.cache
def _propagate():
    import torch

    class Propagate(torch.autograd.Function):
        """``G @ H`` for a constant symmetric CSR graph ``G``; the gradient is ``G @ grad``."""

        @staticmethod
        def forward(ctx, features, graph):
            ctx.graph = graph
            return torch.from_numpy(np.ascontiguousarray(graph @ features.detach().numpy()))

        @staticmethod
        def backward(ctx, grad):
            return torch.from_numpy(
                np.ascontiguousarray(ctx.graph @ grad.contiguous().numpy())
            ), None

    return Propagate


def train_dual_attention(
    features: list[np.ndarray],
    spatial_graph: sp.csr_matrix,
    feature_graphs: list[sp.csr_matrix],
    *,
    latent_dim: int,
    n_epochs: int,
    learning_rate: float,
    weight_decay: float,
    loss_weights: tuple[float, float, float, float],
    seed: int,
    n_threads: int | None,
    progress: Progress | None = None,
) -> Trained:
    """Train SpatialGlue's model on two modalities; graphs are normalized and symmetric.

    ``progress``, when given, is updated after every epoch with the weighted loss.

    For modality ``m`` with features ``X_m``, spatial graph ``S`` and feature graph ``F_m``
    (both ``D^-1/2 (A + I) D^-1/2``)::

        P_m = X_m W_m                                   # linear encoder, shared by views
        Z_m = att_m(S P_m, F_m P_m)                     # within-modality attention
        Z   = att(Z_1, Z_2)                             # cross-modality attention
        X_m_hat = S (Z V_m)                             # decoder of modality m
        Z_1' = S (S (Z_1 V_2) W_2),  Z_2' = S (S (Z_2 V_1) W_1)   # through the other one
        loss = w1 mse(X_1, X_1_hat) + w2 mse(X_2, X_2_hat)
               + w3 mse(Z_1, Z_1') + w4 mse(Z_2, Z_2')

    with ``att(a, b) = sum_v softmax_v(u^T tanh(W^T e_v)) e_v`` over the two views ``e``.
    """
    import torch

    propagate = _propagate().apply
    with deterministic_session(seed, n_threads) as generator:
        spatial = sp.csr_matrix(spatial_graph, dtype=np.float32)
        graphs = [sp.csr_matrix(g, dtype=np.float32) for g in feature_graphs]
        inputs = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x in features]
        latent = int(latent_dim)
        encoders = [glorot_uniform((x.shape[1], latent), generator) for x in inputs]
        decoders = [glorot_uniform((latent, x.shape[1]), generator) for x in inputs]
        attention = [
            (glorot_uniform((latent, latent), generator), glorot_uniform((latent, 1), generator))
            for _ in range(3)
        ]
        parameters = [*encoders, *decoders, *(w for pair in attention for w in pair)]
        optimizer = torch.optim.Adam(parameters, lr=learning_rate, weight_decay=weight_decay)
        mse = torch.nn.functional.mse_loss
        weights = torch.tensor(loss_weights, dtype=torch.float32)

        def attend(first, second, pair):
            stacked = torch.stack((first, second), dim=1)
            scores = (torch.tanh(stacked @ pair[0]) @ pair[1]).squeeze(-1)
            alpha = torch.softmax(scores + _SCORE_OFFSET, dim=1)
            return (stacked * alpha.unsqueeze(-1)).sum(dim=1), alpha

        def forward():
            projected = [x @ w for x, w in zip(inputs, encoders, strict=True)]
            combined = [
                attend(propagate(p, spatial), propagate(p, g), pair)
                for p, g, pair in zip(projected, graphs, attention[:2], strict=True)
            ]
            own = [z for z, _ in combined]
            joint, beta = attend(own[0], own[1], attention[2])
            terms = [
                mse(propagate(joint @ v, spatial), x) for v, x in zip(decoders, inputs, strict=True)
            ]
            for m, other in ((0, 1), (1, 0)):
                through = propagate(
                    propagate(own[m] @ decoders[other], spatial) @ encoders[other], spatial
                )
                terms.append(mse(through, own[m]))
            terms = torch.stack(terms)
            return (weights * terms).sum(), terms, joint, own, [a for _, a in combined], beta

        losses = np.empty((int(n_epochs), 4), dtype=np.float64)
        for epoch in range(int(n_epochs)):
            optimizer.zero_grad(set_to_none=True)
            loss, terms, *_ = forward()
            loss.backward()
            optimizer.step()
            losses[epoch] = terms.detach().numpy()
            if progress is not None:
                progress.update(epoch + 1, f"loss {float(loss.detach()):.4g}")
        with torch.no_grad():
            _, terms, joint, own, alphas, beta = forward()

        def unit(tensor) -> np.ndarray:
            return torch.nn.functional.normalize(tensor, p=2.0, dim=1).numpy().astype(np.float32)

        return Trained(
            embedding=unit(joint),
            modality_embeddings=[unit(z) for z in own],
            view_weights=[a.numpy().astype(np.float64) for a in alphas],
            modality_weights=beta.numpy().astype(np.float64),
            losses=losses,
            final_losses=terms.numpy().astype(np.float64),
        )
