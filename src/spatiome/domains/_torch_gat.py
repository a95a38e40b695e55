"""Graph autoencoders on a sparse spot graph, trained full-batch with torch on CPU.

:func:`train_autoencoder` is STAGATE's graph attention autoencoder;
:func:`train_contrastive` is GraphST's graph convolution encoder with a deep-graph-infomax
loss against a feature-shuffled tissue and a reconstruction loss.

torch is imported inside the functions (and the autograd functions are built on first use),
so that importing this module, or spatiome, never imports torch.

Two products dominate the cost, and both are kept linear in the number of spots:

- the expression matrix times the first weight matrix. The scaled expression is dense by
  nature (centring fills the zeros) but is never stored dense: it is rebuilt from the
  sparse log-normalized matrix in row blocks of bounded size, forward and backward, unless
  the whole of it fits in ``_DENSE_CACHE_BYTES``;
- the reconstruction error. The decoder's last layer is the transpose of the encoder's first
  (tied weights), so with ``Y = X W1`` and ``X_hat = H W1^T``,
  ``||X - X_hat||^2 = ||X||^2 - 2 <Y, H> + <W1^T W1, H^T H>``: no spots x genes
  reconstruction is formed. The contrastive model's untied decoder ``X_hat = P W2`` uses
  the same identity with ``<X, P W2> = <X W2^T, P>``.

Messages are passed along the edges of a CSR graph (``torch.sparse.mm``); the gradient
with respect to the attention weights is computed edge by edge in chunks, so no
edges x features array is formed either.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .._core.progress import Progress
from .._core.torch_session import deterministic_session, glorot_uniform

# Scratch for one dense row block of the scaled expression (float32).
_BLOCK_BYTES = 64 * 2**20
# Keep the whole scaled expression dense when it is at most this large (float32).
_DENSE_CACHE_BYTES = 256 * 2**20
# Entries (edges x features) per chunk of the edge-wise gradient of the attention weights.
_EDGE_CHUNK_ENTRIES = 2**22
# Elements of an xavier-initialised matrix are drawn with this gain (ELU layers).
_INIT_GAIN = float(np.sqrt(2.0))


@dataclass
class ScaledExpression:
    """``clip((matrix - mean) * inv_std)`` for a sparse ``matrix``, never stored dense.

    ``mean`` and ``inv_std`` are per gene; ``clip`` bounds the absolute value (``None``
    for no bound). Without ``mean`` the matrix is used as it is.
    """

    matrix: sp.csr_matrix | np.ndarray
    mean: np.ndarray | None = None
    inv_std: np.ndarray | None = None
    clip: float | None = None
    _cache: list = field(default_factory=list, repr=False)
    _bounds: list = field(default_factory=list, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    def prepare(self) -> None:
        import torch

        n_obs, n_genes = self.matrix.shape
        dense_bytes = 4 * n_obs * n_genes
        rows = n_obs if dense_bytes <= _DENSE_CACHE_BYTES else _BLOCK_BYTES // (4 * n_genes)
        rows = max(1, int(rows))
        self._bounds = [(s, min(s + rows, n_obs)) for s in range(0, n_obs, rows)]
        self._cache = []
        if dense_bytes <= _DENSE_CACHE_BYTES:
            self._cache = [self._dense(start, stop, torch) for start, stop in self._bounds]

    def _dense(self, start: int, stop: int, torch):
        block = self.matrix[start:stop]
        block = block.toarray() if sp.issparse(block) else np.array(block, dtype=np.float32)
        if self.mean is not None:
            block -= self.mean
            block *= self.inv_std
        if self.clip is not None:
            np.clip(block, -self.clip, self.clip, out=block)
        return torch.from_numpy(block)

    def blocks(self):
        import torch

        for index, (start, stop) in enumerate(self._bounds):
            dense = self._cache[index] if self._cache else self._dense(start, stop, torch)
            yield start, stop, dense

    def matmul(self, weight):
        """``X @ weight`` for a (genes x k) tensor."""
        import torch

        return torch.cat([block @ weight for _, _, block in self.blocks()], dim=0)

    def rmatmul(self, grad):
        """``X.T @ grad`` for a (spots x k) tensor."""
        out = None
        for start, stop, block in self.blocks():
            part = block.T @ grad[start:stop]
            out = part if out is None else out.add_(part)
        return out

    def squared_norm(self) -> float:
        return float(sum(float((block.double() ** 2).sum()) for _, _, block in self.blocks()))


@functools.cache
def _functions():
    import torch

    class ExpressionProduct(torch.autograd.Function):
        """``X @ W`` with ``X`` a :class:`ScaledExpression` (constant) and ``W`` trained."""

        @staticmethod
        def forward(ctx, weight, expression):
            ctx.expression = expression
            return expression.matmul(weight)

        @staticmethod
        def backward(ctx, grad):
            return ctx.expression.rmatmul(grad.contiguous()), None

    class Aggregate(torch.autograd.Function):
        """``A @ H`` for the CSR graph ``A`` whose edge values are ``values``."""

        @staticmethod
        def forward(ctx, values, features, graph):
            ctx.graph = graph
            ctx.save_for_backward(values, features)
            return graph.multiply(values, features)

        @staticmethod
        def backward(ctx, grad):
            values, features = ctx.saved_tensors
            graph = ctx.graph
            grad = grad.contiguous()
            grad_values = grad_features = None
            if ctx.needs_input_grad[0]:
                # d loss / d A_ij = <grad_i, H_j>, evaluated on the edges only.
                grad_values = torch.sparse.sampled_addmm(
                    graph.pattern, grad, features.T, beta=0.0
                ).values()
            if ctx.needs_input_grad[1]:
                grad_features = graph.multiply(values, grad, transpose=True)
            return grad_values, grad_features, None

    return ExpressionProduct, Aggregate


class _Graph:
    """A CSR spot graph (rows receive from columns) and its transpose, with edge values.

    Products go through scipy, whose CSR times dense kernel is several times faster than
    torch's on CPU for graphs of a few neighbours per spot.
    """

    def __init__(self, graph: sp.csr_matrix):
        import torch

        graph = sp.csr_matrix(graph)
        graph.sort_indices()
        self.shape = graph.shape
        self.indptr, self.indices = graph.indptr, graph.indices
        lengths = np.diff(graph.indptr)
        self.rows = torch.from_numpy(np.repeat(np.arange(graph.shape[0]), lengths))
        self.cols = torch.from_numpy(graph.indices.astype(np.int64))
        self.lengths = torch.from_numpy(lengths.astype(np.int64))
        # Edge e of the transpose is edge perm[e] of the graph.
        order = sp.csr_matrix(
            (np.arange(graph.nnz, dtype=np.float64) + 1.0, graph.indices, graph.indptr),
            shape=graph.shape,
        ).T.tocsr()
        order.sort_indices()
        self.indptr_t, self.indices_t = order.indptr, order.indices
        self.perm_t = order.data.astype(np.int64) - 1
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
            self.pattern = torch.sparse_csr_tensor(
                torch.from_numpy(graph.indptr.astype(np.int64)),
                self.cols,
                torch.ones(graph.nnz, dtype=torch.float32),
                size=graph.shape,
                check_invariants=False,
            )

    def multiply(self, values, features, *, transpose: bool = False):
        """``A @ features`` (or ``A.T @ features``) for edge values ``values``."""
        import torch

        data = values.detach().numpy()
        if transpose:
            matrix = sp.csr_matrix((data[self.perm_t], self.indices_t, self.indptr_t), self.shape)
        else:
            matrix = sp.csr_matrix((data, self.indices, self.indptr), shape=self.shape)
        return torch.from_numpy(np.ascontiguousarray(matrix @ features.detach().numpy()))


def train_autoencoder(
    expression: ScaledExpression,
    graph: sp.csr_matrix,
    *,
    hidden_dims: tuple[int, int],
    n_epochs: int,
    learning_rate: float,
    weight_decay: float,
    gradient_clip: float | None,
    seed: int,
    n_threads: int | None,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Train the autoencoder; return the (spots x hidden_dims[1]) embedding and loss trace.

    ``progress``, when given, is updated after every epoch with the epoch's loss.

    Architecture (tied weights, no biases, attention shared by encoder and decoder)::

        Y  = X W1                       # genes -> hidden_dims[0]
        a  = softmax_j sigmoid(<Y_j, u> + <Y_i, v>)   over the graph neighbours j of i
        H1 = elu(A(a) Y)                # graph attention layer
        Z  = H1 W2                      # embedding, hidden_dims[1]
        H3 = elu(A(a) Z W2^T)           # decoder graph attention layer, same attention
        X_hat = H3 W1^T                 # loss: mean squared error of X_hat against X
    """
    import torch

    product, aggregate = _functions()
    with deterministic_session(seed, n_threads) as generator:
        expression.prepare()
        n_obs, n_genes = expression.shape
        edges = _Graph(graph)
        hidden, latent = (int(d) for d in hidden_dims)
        w1 = glorot_uniform((n_genes, hidden), generator, gain=_INIT_GAIN)
        w2 = glorot_uniform((hidden, latent), generator, gain=_INIT_GAIN)
        attention = glorot_uniform((hidden, 2), generator, gain=_INIT_GAIN)
        parameters = [w1, w2, attention]
        optimizer = torch.optim.Adam(parameters, lr=learning_rate, weight_decay=weight_decay)
        total = expression.squared_norm()
        scale = 1.0 / (n_obs * n_genes)

        def forward():
            projected = product.apply(w1, expression)
            scores = projected @ attention
            logits = torch.sigmoid(scores[edges.cols, 0] + scores[edges.rows, 1])
            # Sigmoid outputs lie in (0, 1), so the exponentials need no max-shift.
            weights = torch.exp(logits)
            sums = torch.segment_reduce(weights, "sum", lengths=edges.lengths)
            weights = weights / sums[edges.rows]
            hidden1 = torch.nn.functional.elu(aggregate.apply(weights, projected, edges))
            embedding = hidden1 @ w2
            hidden3 = torch.nn.functional.elu(aggregate.apply(weights, embedding @ w2.T, edges))
            cross = (projected * hidden3).sum()
            gram = ((w1.T @ w1) * (hidden3.T @ hidden3)).sum()
            return (total - 2.0 * cross.double() + gram.double()) * scale, embedding

        losses = _fit(
            lambda: forward()[0], parameters, optimizer, n_epochs, gradient_clip, progress
        )
        with torch.no_grad():
            _, embedding = forward()
        return embedding.numpy().astype(np.float32, copy=True), losses


def train_contrastive(
    expression: ScaledExpression,
    graph: sp.csr_matrix,
    *,
    hidden_dims: tuple[int, int],
    n_epochs: int,
    learning_rate: float,
    weight_decay: float,
    gradient_clip: float | None,
    reconstruction_weight: float,
    seed: int,
    n_threads: int | None,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Train the contrastive graph autoencoder; return the embedding and the loss trace.

    ``progress``, when given, is updated after every epoch with the epoch's loss.

    GraphST's model on a sparse graph (``G`` the graph with self-loops, symmetrically
    normalized, ``M`` its row-normalized version; only ``hidden_dims[1]`` is used)::

        Z = G X W1                          # embedding; the corrupted view uses the rows
        E = relu(Z)                         # of X shuffled: E' = relu(G X[perm] W1)
        g = sigmoid(normalize(M E))         # summary of each spot's neighbourhood
        s(e, g) = e^T B g + b               # bilinear discriminator
        X_hat = G Z W2                      # decoder
        loss = w ||X - X_hat||^2 / (n p) + BCE(s(E, g), 1) + BCE(s(E', g), 0)
                                          + BCE(s(E', g'), 1) + BCE(s(E, g'), 0)

    A new permutation is drawn from the seeded generator at every epoch. The returned
    embedding is the smoothed reconstruction's coordinates ``G Z`` in the row space of
    ``W2``: principal component scores of ``X_hat`` without forming it (see
    :func:`_decoded_scores`).
    """
    import torch

    product, aggregate = _functions()
    with deterministic_session(seed, n_threads) as generator:
        expression.prepare()
        n_obs, n_genes = expression.shape
        edges = _Graph(graph)
        latent = int(hidden_dims[1])
        degree = np.diff(graph.indptr).astype(np.float64)
        rows = np.repeat(np.arange(n_obs), np.diff(graph.indptr))
        norm = 1.0 / np.sqrt(degree[rows] * degree[graph.indices])
        normalized = torch.from_numpy(norm.astype(np.float32))
        mean_weights = torch.from_numpy((1.0 / degree[rows]).astype(np.float32))
        w1 = glorot_uniform((n_genes, latent), generator, gain=_INIT_GAIN)
        w2 = glorot_uniform((latent, n_genes), generator, gain=_INIT_GAIN)
        bound = 1.0 / np.sqrt(latent)
        bilinear = (torch.rand((latent, latent), generator=generator) * 2 - 1) * bound
        bilinear.requires_grad_(True)
        bias = torch.zeros(1, requires_grad=True)
        parameters = [w1, w2, bilinear, bias]
        optimizer = torch.optim.Adam(parameters, lr=learning_rate, weight_decay=weight_decay)
        total = expression.squared_norm()
        scale = 1.0 / (n_obs * n_genes)
        ones = torch.ones(n_obs)
        zeros = torch.zeros(n_obs)
        bce = torch.nn.functional.binary_cross_entropy_with_logits

        def summary(embedded):
            pooled = aggregate.apply(mean_weights, embedded, edges)
            return torch.sigmoid(torch.nn.functional.normalize(pooled, p=2.0, dim=1))

        def discriminate(embedded, context):
            return ((embedded @ bilinear) * context).sum(dim=1) + bias

        def forward(permutation):
            projected = product.apply(w1, expression)
            latent_z = aggregate.apply(normalized, projected, edges)
            smoothed = aggregate.apply(normalized, latent_z, edges)
            cross = (smoothed * product.apply(w2.T, expression)).sum()
            gram = ((smoothed.T @ smoothed) * (w2 @ w2.T)).sum()
            error = (total - 2.0 * cross.double() + gram.double()) * scale
            if permutation is None:
                return error, smoothed
            corrupted = aggregate.apply(normalized, projected[permutation], edges)
            embedded, embedded_c = torch.relu(latent_z), torch.relu(corrupted)
            context, context_c = summary(embedded), summary(embedded_c)
            contrast = (
                bce(discriminate(embedded, context), ones)
                + bce(discriminate(embedded_c, context), zeros)
                + bce(discriminate(embedded_c, context_c), ones)
                + bce(discriminate(embedded, context_c), zeros)
            )
            return reconstruction_weight * error + contrast.double(), smoothed

        def epoch_loss():  # a new shuffle of the spots for the corrupted view each epoch
            return forward(torch.randperm(n_obs, generator=generator))[0]

        losses = _fit(epoch_loss, parameters, optimizer, n_epochs, gradient_clip, progress)
        with torch.no_grad():
            _, smoothed = forward(None)
        scores = _decoded_scores(smoothed.numpy().astype(np.float64), w2.detach().numpy())
        return scores.astype(np.float32), losses


def _fit(
    epoch_loss,
    parameters,
    optimizer,
    n_epochs: int,
    gradient_clip: float | None,
    progress: Progress | None = None,
):
    """Full-batch training: ``n_epochs`` Adam steps on ``epoch_loss()``, the gradient norm
    clipped at ``gradient_clip``; returns the loss of every epoch, each also reported to
    ``progress``."""
    import torch

    losses = np.empty(int(n_epochs), dtype=np.float64)
    for epoch in range(int(n_epochs)):
        optimizer.zero_grad(set_to_none=True)
        loss = epoch_loss()
        loss.backward()
        if gradient_clip is not None:
            torch.nn.utils.clip_grad_norm_(parameters, float(gradient_clip))
        optimizer.step()
        losses[epoch] = float(loss.detach())
        if progress is not None:
            progress.update(epoch + 1, f"loss {losses[epoch]:.4g}")
    return losses


def _decoded_scores(smoothed: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Principal component scores of ``smoothed @ weight`` (spots x genes), not formed.

    With ``weight.T = Q R`` (thin QR), the centred product is ``(S_c R.T) Q.T`` and ``Q``
    has orthonormal columns, so its scores are those of the small ``S_c R.T``; all of them
    are returned, largest variance first, with a deterministic sign.
    """
    centred = smoothed - smoothed.mean(axis=0)
    _, upper = np.linalg.qr(weight.T.astype(np.float64))
    left, values, right = np.linalg.svd(centred @ upper.T, full_matrices=False)
    signs = np.sign(right[np.arange(right.shape[0]), np.abs(right).argmax(axis=1)])
    signs[signs == 0] = 1.0
    return left * values * signs
