"""The dual-attention graph autoencoder behind :func:`spatiome.integrate.multimodal.multimodal`.

Imported only when the model is trained, so ``import spatiome`` never imports torch. Graph
products go through scipy (CSR times dense) on the CPU, which is deterministic and faster than
torch's sparse kernels there for graphs with a few dozen neighbours per spot, and through
``torch.sparse`` on a GPU.

Large tissues are trained by mini-batches: one spatially compact part of the tissue per step
(:mod:`spatiome._core.subgraphs`), with the rows of each graph operator the part's loss needs
(see :class:`_Batch`), so the loss of the part's spots is their exact full-graph loss.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .._core.progress import Progress
from .._core.subgraphs import with_halo
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


class _Operator:
    """A constant sparse operator ``G`` (rows x columns) and its transpose for the gradient.

    On the CPU the products go through scipy; on a GPU (or with ``scipy_products=False``)
    through ``torch.sparse``. ``transpose=None`` marks a symmetric ``G``.
    """

    def __init__(self, matrix, transpose=None, device=None, *, scipy_products=None):
        import torch

        device = torch.device("cpu") if device is None else device
        self.scipy_products = device.type == "cpu" if scipy_products is None else scipy_products
        self.matrix = sp.csr_matrix(matrix, dtype=np.float32)
        self.transpose = self.matrix if transpose is None else sp.csr_matrix(transpose)
        if not self.scipy_products:
            self.matrix = _torch_csr(self.matrix, device)
            self.transpose = _torch_csr(self.transpose, device)

    def apply(self, features, *, transpose: bool = False):
        import torch

        matrix = self.transpose if transpose else self.matrix
        if not self.scipy_products:
            return matrix @ features.detach()
        return torch.from_numpy(np.ascontiguousarray(matrix @ features.detach().numpy()))


def _torch_csr(matrix: sp.csr_matrix, device):
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(np.int64)),
            torch.from_numpy(matrix.indices.astype(np.int64)),
            torch.from_numpy(matrix.data.astype(np.float32)),
            size=matrix.shape,
            device=device,
            check_invariants=False,
        )


@dataclass(eq=False)
class _Batch:
    """The operators and inputs one training step needs (whole graph or one part).

    For a part with spots ``C``, ``L1`` the spots within two spatial hops of ``C`` and
    ``L0`` those within one hop of ``L1`` along any graph, the rows of each operator are
    complete wherever the loss of ``C`` reads them, so that loss is exact::

        encode:  S[L1, L0], F_m[L1, L0]     (inputs at L0, embeddings at L1)
        decode:  S[C, L1]                   (reconstructions at C)
        through: S[L1, L1]                  (inner hop of the correspondence)
    """

    inputs: list  # per modality, rows L0
    targets: list  # per modality, rows C
    encode_spatial: _Operator
    encode_features: list  # per modality
    decode: _Operator
    inner: _Operator
    core: object  # positions of C in L1; None for the whole graph
    n_core: int


def _whole_batch(inputs, spatial, graphs, device) -> _Batch:
    operator = _Operator(spatial, device=device)
    return _Batch(
        inputs, inputs, operator, [_Operator(g, device=device) for g in graphs], operator,
        operator, None, int(inputs[0].shape[0]),
    )  # fmt: skip


def _part_batch(features, spatial, graphs, core, device) -> _Batch:
    import torch

    inner_nodes = with_halo([spatial], core, 2)
    outer_nodes = with_halo([spatial, *graphs], inner_nodes, 1)

    def block(matrix, rows, cols):
        sub = sp.csr_matrix(matrix[rows][:, cols])
        return _Operator(sub, sp.csr_matrix(sub.T), device)

    return _Batch(
        [torch.from_numpy(np.ascontiguousarray(x[outer_nodes])).to(device) for x in features],
        [torch.from_numpy(np.ascontiguousarray(x[core])).to(device) for x in features],
        block(spatial, inner_nodes, outer_nodes),
        [block(g, inner_nodes, outer_nodes) for g in graphs],
        block(spatial, core, inner_nodes),
        block(spatial, inner_nodes, inner_nodes),
        torch.from_numpy(np.searchsorted(inner_nodes, core)).to(device),
        int(core.size),
    )


@functools.cache
def _propagate():
    import torch

    class Propagate(torch.autograd.Function):
        """``G @ H`` for a constant :class:`_Operator` ``G``; the gradient is ``G.T @ grad``."""

        @staticmethod
        def forward(ctx, features, operator):
            ctx.operator = operator
            return operator.apply(features)

        @staticmethod
        def backward(ctx, grad):
            return ctx.operator.apply(grad.contiguous(), transpose=True), None

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
    parts: list[np.ndarray] | None = None,
    device=None,
) -> Trained:
    """Train SpatialGlue's model on two modalities; graphs are normalized and symmetric.

    ``progress``, when given, is updated after every epoch with the weighted loss. With
    ``parts`` (spot indices of each part), each epoch takes one Adam step per part, in a
    seeded random order, on the subgraph its loss needs (:class:`_Batch`); otherwise one
    full-batch step. ``device`` is a ``torch.device`` (default the CPU).

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
    device = torch.device("cpu") if device is None else device
    with deterministic_session(seed, n_threads) as generator:
        spatial = sp.csr_matrix(spatial_graph, dtype=np.float32)
        graphs = [sp.csr_matrix(g, dtype=np.float32) for g in feature_graphs]
        arrays = [np.ascontiguousarray(x, dtype=np.float32) for x in features]
        inputs = [torch.from_numpy(x).to(device) for x in arrays]
        whole = _whole_batch(inputs, spatial, graphs, device)
        batches = (
            [whole]
            if parts is None
            else [_part_batch(arrays, spatial, graphs, part, device) for part in parts]
        )
        latent = int(latent_dim)
        encoders = [glorot_uniform((x.shape[1], latent), generator, device=device) for x in inputs]
        decoders = [glorot_uniform((latent, x.shape[1]), generator, device=device) for x in inputs]
        attention = [
            (
                glorot_uniform((latent, latent), generator, device=device),
                glorot_uniform((latent, 1), generator, device=device),
            )
            for _ in range(3)
        ]
        parameters = [*encoders, *decoders, *(w for pair in attention for w in pair)]
        optimizer = torch.optim.Adam(parameters, lr=learning_rate, weight_decay=weight_decay)
        mse = torch.nn.functional.mse_loss
        weights = torch.tensor(loss_weights, dtype=torch.float32, device=device)

        def attend(first, second, pair):
            stacked = torch.stack((first, second), dim=1)
            scores = (torch.tanh(stacked @ pair[0]) @ pair[1]).squeeze(-1)
            alpha = torch.softmax(scores + _SCORE_OFFSET, dim=1)
            return (stacked * alpha.unsqueeze(-1)).sum(dim=1), alpha

        def forward(batch: _Batch):
            projected = [x @ w for x, w in zip(batch.inputs, encoders, strict=True)]
            combined = [
                attend(propagate(p, batch.encode_spatial), propagate(p, g), pair)
                for p, g, pair in zip(projected, batch.encode_features, attention[:2], strict=True)
            ]
            own = [z for z, _ in combined]
            joint, beta = attend(own[0], own[1], attention[2])
            terms = [
                mse(propagate(joint @ v, batch.decode), x)
                for v, x in zip(decoders, batch.targets, strict=True)
            ]
            for m, other in ((0, 1), (1, 0)):
                through = propagate(
                    propagate(own[m] @ decoders[other], batch.inner) @ encoders[other],
                    batch.decode,
                )
                terms.append(mse(through, own[m] if batch.core is None else own[m][batch.core]))
            terms = torch.stack(terms)
            return (weights * terms).sum(), terms, joint, own, [a for _, a in combined], beta

        losses = np.empty((int(n_epochs), 4), dtype=np.float64)
        share = np.array([batch.n_core for batch in batches], dtype=np.float64)
        share /= share.sum()
        for epoch in range(int(n_epochs)):
            order = [0] if len(batches) == 1 else torch.randperm(len(batches), generator=generator)
            epoch_terms, epoch_loss = np.zeros(4), 0.0
            for index in [int(i) for i in order]:
                optimizer.zero_grad(set_to_none=True)
                loss, terms, *_ = forward(batches[index])
                loss.backward()
                optimizer.step()
                epoch_terms += share[index] * terms.detach().cpu().numpy()
                epoch_loss += share[index] * float(loss.detach())
            losses[epoch] = epoch_terms
            if progress is not None:
                progress.update(epoch + 1, f"loss {epoch_loss:.4g}")
        with torch.no_grad():
            _, terms, joint, own, alphas, beta = forward(whole)

        def unit(tensor) -> np.ndarray:
            normalized = torch.nn.functional.normalize(tensor, p=2.0, dim=1)
            return normalized.cpu().numpy().astype(np.float32)

        return Trained(
            embedding=unit(joint),
            modality_embeddings=[unit(z) for z in own],
            view_weights=[a.cpu().numpy().astype(np.float64) for a in alphas],
            modality_weights=beta.cpu().numpy().astype(np.float64),
            losses=losses,
            final_losses=terms.cpu().numpy().astype(np.float64),
        )
