"""Graph autoencoders on a sparse spot graph, trained with torch, full batch or by subgraphs.

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

Messages are passed along the edges of a CSR graph (scipy on the CPU, ``torch.sparse`` on a
GPU); the gradient with respect to the attention weights is evaluated on the edges only
(``sampled_addmm``), so no edges x features array is formed either.

Large tissues are trained by mini-batches (``parts``): each step takes one spatially compact
part of the tissue with its 2-hop halo (:mod:`spatiome._core.subgraphs`). Both models see at
most two hops, so the loss of a part's own spots computed on that subgraph equals their
loss on the whole graph; only the contrastive shuffles are drawn within the subgraph.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .._core.progress import Progress
from .._core.subgraphs import with_halo
from .._core.torch_session import deterministic_session, glorot_uniform

# Scratch for one dense row block of the scaled expression (float32).
_BLOCK_BYTES = 64 * 2**20
# Keep the whole scaled expression dense when it is at most this large (float32).
_DENSE_CACHE_BYTES = 256 * 2**20
# Both models reach two hops: a part's halo must hold every spot within two hops of it.
_HALO_HOPS = 2
# Elements of an xavier-initialised matrix are drawn with this gain (ELU layers).
_INIT_GAIN = float(np.sqrt(2.0))


@dataclass
class ScaledExpression:
    """``clip((matrix - mean) * inv_std)`` for a sparse ``matrix``, never stored dense.

    ``mean`` and ``inv_std`` are per gene; ``clip`` bounds the absolute value (``None``
    for no bound). Without ``mean`` the matrix is used as it is. ``rows`` restricts it to
    those rows of ``matrix`` (a subgraph's spots) without copying them.
    """

    matrix: sp.csr_matrix | np.ndarray
    mean: np.ndarray | None = None
    inv_std: np.ndarray | None = None
    clip: float | None = None
    rows: np.ndarray | None = None
    _cache: list = field(default_factory=list, repr=False)
    _bounds: list = field(default_factory=list, repr=False)
    _device: object = field(default=None, repr=False)
    _held: list | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        n_rows = self.matrix.shape[0] if self.rows is None else self.rows.size
        return (n_rows, self.matrix.shape[1])

    @property
    def dense_bytes(self) -> int:
        return 4 * self.shape[0] * self.shape[1]

    def subset(self, rows: np.ndarray) -> ScaledExpression:
        """The same scaled expression restricted to ``rows`` (sorted spot indices)."""
        return ScaledExpression(self.matrix, self.mean, self.inv_std, self.clip, rows=rows)

    def prepare(self, device=None, cache: bool | None = None) -> None:
        """Set the row blocks; keep them dense (on ``device``) when ``cache``, by default
        when the whole matrix is at most ``_DENSE_CACHE_BYTES``."""
        import torch

        n_obs, n_genes = self.shape
        cache = self.dense_bytes <= _DENSE_CACHE_BYTES if cache is None else cache
        rows = n_obs if cache else _BLOCK_BYTES // (4 * n_genes)
        rows = max(1, int(rows))
        self._device = device
        self._bounds = [(s, min(s + rows, n_obs)) for s in range(0, n_obs, rows)]
        self._cache = []
        if cache:
            self._cache = [self._dense(start, stop, torch) for start, stop in self._bounds]

    def _dense(self, start: int, stop: int, torch):
        index = slice(start, stop) if self.rows is None else self.rows[start:stop]
        block = self.matrix[index]
        block = block.toarray() if sp.issparse(block) else np.array(block, dtype=np.float32)
        if self.mean is not None:
            block -= self.mean
            block *= self.inv_std
        if self.clip is not None:
            np.clip(block, -self.clip, self.clip, out=block)
        tensor = torch.from_numpy(block)
        return tensor if self._device is None else tensor.to(self._device)

    def hold(self) -> None:
        """Keep the dense blocks built from now on until :meth:`release` (one training
        step's forward and backward products then densify the rows once)."""
        if not self._cache:
            self._held = []

    def release(self) -> None:
        self._held = None

    def blocks(self):
        import torch

        for index, (start, stop) in enumerate(self._bounds):
            if self._cache:
                dense = self._cache[index]
            elif self._held is not None and index < len(self._held):
                dense = self._held[index]
            else:
                dense = self._dense(start, stop, torch)
                if self._held is not None:
                    self._held.append(dense)
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

    def row_squared_norms(self) -> np.ndarray:
        """``||x_i||^2`` of every row, float64."""
        return np.concatenate(
            [(block.double() ** 2).sum(dim=1).cpu().numpy() for _, _, block in self.blocks()]
        )


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

    On the CPU, products go through scipy, whose CSR times dense kernel is several times
    faster than torch's for graphs of a few neighbours per spot; on a GPU (or with
    ``scipy_products=False``) through ``torch.sparse``.
    """

    def __init__(self, graph: sp.csr_matrix, device=None, *, scipy_products: bool | None = None):
        import torch

        device = torch.device("cpu") if device is None else device
        self.scipy_products = device.type == "cpu" if scipy_products is None else scipy_products
        graph = sp.csr_matrix(graph)
        graph.sort_indices()
        self.shape = graph.shape
        self.indptr, self.indices = graph.indptr, graph.indices
        lengths = np.diff(graph.indptr)
        self.rows = torch.from_numpy(np.repeat(np.arange(graph.shape[0]), lengths)).to(device)
        self.cols = torch.from_numpy(graph.indices.astype(np.int64)).to(device)
        self.lengths = torch.from_numpy(lengths.astype(np.int64)).to(device)
        # Edge e of the transpose is edge perm[e] of the graph.
        order = sp.csr_matrix(
            (np.arange(graph.nnz, dtype=np.float64) + 1.0, graph.indices, graph.indptr),
            shape=graph.shape,
        ).T.tocsr()
        order.sort_indices()
        self.indptr_t, self.indices_t = order.indptr, order.indices
        self.perm_t = order.data.astype(np.int64) - 1
        self.crow = torch.from_numpy(graph.indptr.astype(np.int64)).to(device)
        self.crow_t = torch.from_numpy(self.indptr_t.astype(np.int64)).to(device)
        self.cols_t = torch.from_numpy(self.indices_t.astype(np.int64)).to(device)
        self.edges_t = torch.from_numpy(self.perm_t).to(device)
        self.pattern = self._csr(torch.ones(graph.nnz, dtype=torch.float32, device=device))

    def _csr(self, values, *, transpose: bool = False):
        import torch

        crow, cols = (self.crow_t, self.cols_t) if transpose else (self.crow, self.cols)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(
                crow, cols, values, size=self.shape, check_invariants=False
            )

    def multiply(self, values, features, *, transpose: bool = False):
        """``A @ features`` (or ``A.T @ features``) for edge values ``values``."""
        import torch

        if not self.scipy_products:
            values = values.detach()
            matrix = self._csr(values[self.edges_t] if transpose else values, transpose=transpose)
            return matrix @ features.detach()
        data = values.detach().numpy()
        if transpose:
            matrix = sp.csr_matrix((data[self.perm_t], self.indices_t, self.indptr_t), self.shape)
        else:
            matrix = sp.csr_matrix((data, self.indices, self.indptr), shape=self.shape)
        return torch.from_numpy(np.ascontiguousarray(matrix @ features.detach().numpy()))


@dataclass(eq=False)
class _Batch:
    """One training subgraph: its spots' expression, its graph, and which spots count."""

    expression: ScaledExpression
    edges: _Graph
    nodes: np.ndarray  # the subgraph's spots (sorted global indices)
    core: object  # positions of the part's own spots in ``nodes``; None: all of them
    core_nodes: np.ndarray  # global indices of the part's own spots
    total: float  # squared norm of the core spots' expression
    scale: float  # 1 / (core spots x genes)

    def core_rows(self, tensor):
        return tensor if self.core is None else tensor[self.core]


def _batches(
    expression: ScaledExpression, graph: sp.csr_matrix, parts: list[np.ndarray] | None, device
) -> list[_Batch]:
    """The whole graph as one batch (``parts`` None), or each part with its 2-hop halo.

    The dense row blocks of all subgraphs are cached when together they fit in
    ``_DENSE_CACHE_BYTES``; otherwise each is rebuilt from the sparse rows at each use.
    """
    import torch

    n_obs, n_genes = expression.shape
    if parts is None:
        expression.prepare(device)
        return [
            _Batch(expression, _Graph(graph, device), np.arange(n_obs), None, np.arange(n_obs),
                   expression.squared_norm(), 1.0 / (n_obs * n_genes))
        ]  # fmt: skip
    expression.prepare(None, cache=False)
    row_norms = expression.row_squared_norms()
    halos = [with_halo([graph], part, _HALO_HOPS) for part in parts]
    cache = 4 * n_genes * sum(nodes.size for nodes in halos) <= _DENSE_CACHE_BYTES
    batches = []
    for part, nodes in zip(parts, halos, strict=True):
        subset = expression.subset(nodes)
        subset.prepare(device, cache=cache)
        core = torch.from_numpy(np.searchsorted(nodes, part)).to(device)
        subgraph = sp.csr_matrix(graph[nodes][:, nodes])
        batches.append(
            _Batch(subset, _Graph(subgraph, device), nodes, core, part,
                   float(row_norms[part].sum()), 1.0 / (part.size * n_genes))
        )  # fmt: skip
    return batches


def _gather(batches: list[_Batch], outputs: list[np.ndarray], n_obs: int) -> np.ndarray:
    """Place each batch's core rows of ``outputs`` at their spots."""
    if len(batches) == 1 and batches[0].core is None:
        return outputs[0]
    full = np.empty((n_obs, outputs[0].shape[1]), dtype=outputs[0].dtype)
    for batch, rows in zip(batches, outputs, strict=True):
        full[batch.core_nodes] = rows
    return full


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
    parts: list[np.ndarray] | None = None,
    device=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Train the autoencoder; return the (spots x hidden_dims[1]) embedding and loss trace.

    ``progress``, when given, is updated after every epoch with the epoch's loss. With
    ``parts`` (spot indices of each part), each epoch takes one Adam step per part, in a
    seeded random order, on the part and its 2-hop halo; otherwise one full-batch step.
    ``device`` is a ``torch.device`` (default the CPU).

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
        n_obs, n_genes = expression.shape
        batches = _batches(expression, graph, parts, device)
        hidden, latent = (int(d) for d in hidden_dims)
        w1 = glorot_uniform((n_genes, hidden), generator, gain=_INIT_GAIN, device=device)
        w2 = glorot_uniform((hidden, latent), generator, gain=_INIT_GAIN, device=device)
        attention = glorot_uniform((hidden, 2), generator, gain=_INIT_GAIN, device=device)
        parameters = [w1, w2, attention]
        optimizer = torch.optim.Adam(parameters, lr=learning_rate, weight_decay=weight_decay)

        def forward(batch: _Batch):
            edges = batch.edges
            projected = product.apply(w1, batch.expression)
            scores = projected @ attention
            logits = torch.sigmoid(scores[edges.cols, 0] + scores[edges.rows, 1])
            # Sigmoid outputs lie in (0, 1), so the exponentials need no max-shift.
            weights = torch.exp(logits)
            sums = torch.segment_reduce(weights, "sum", lengths=edges.lengths)
            weights = weights / sums[edges.rows]
            hidden1 = torch.nn.functional.elu(aggregate.apply(weights, projected, edges))
            embedding = hidden1 @ w2
            hidden3 = torch.nn.functional.elu(aggregate.apply(weights, embedding @ w2.T, edges))
            hidden3 = batch.core_rows(hidden3)
            cross = (batch.core_rows(projected) * hidden3).sum()
            gram = ((w1.T @ w1) * (hidden3.T @ hidden3)).sum()
            return (batch.total - 2.0 * cross.double() + gram.double()) * batch.scale, embedding

        losses = _train(
            lambda batch: forward(batch)[0], batches, parameters, optimizer, n_epochs,
            gradient_clip, progress, generator,
        )  # fmt: skip
        with torch.no_grad():
            outputs = [_numpy(batch.core_rows(forward(batch)[1])) for batch in batches]
        return _gather(batches, outputs, n_obs).astype(np.float32, copy=True), losses


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
    parts: list[np.ndarray] | None = None,
    device=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Train the contrastive graph autoencoder; return the embedding and the loss trace.

    ``progress``, when given, is updated after every epoch with the epoch's loss;
    ``parts`` and ``device`` as in :func:`train_autoencoder` (with parts, the corrupted
    view shuffles the spots within each subgraph).

    GraphST's model on a sparse graph (``G`` the graph with self-loops, symmetrically
    normalized, ``M`` its row-normalized version; only ``hidden_dims[1]`` is used)::

        Z = G X W1                          # embedding; the corrupted view uses the rows
        E = relu(Z)                         # of X shuffled: E' = relu(G X[perm] W1)
        g = sigmoid(normalize(M E))         # summary of each spot's neighbourhood
        s(e, g) = e^T B g + b               # bilinear discriminator
        X_hat = G Z W2                      # decoder
        loss = w ||X - X_hat||^2 / (n p) + BCE(s(E, g), 1) + BCE(s(E', g), 0)
                                          + BCE(s(E', g'), 1) + BCE(s(E, g'), 0)

    A new permutation is drawn from the seeded generator at every step. The returned
    embedding is the smoothed reconstruction's coordinates ``G Z`` in the row space of
    ``W2``: principal component scores of ``X_hat`` without forming it (see
    :func:`_decoded_scores`).
    """
    import torch

    product, aggregate = _functions()
    with deterministic_session(seed, n_threads) as generator:
        n_obs, n_genes = expression.shape
        batches = _batches(expression, graph, parts, device)
        # The normalizations use each spot's degree in the whole graph: a subgraph's rows
        # within one hop of its part are then exactly those of the whole graph.
        degree = np.diff(graph.indptr).astype(np.float64)
        edge_values = [_contrastive_edge_values(batch, degree, device) for batch in batches]
        latent = int(hidden_dims[1])
        w1 = glorot_uniform((n_genes, latent), generator, gain=_INIT_GAIN, device=device)
        w2 = glorot_uniform((latent, n_genes), generator, gain=_INIT_GAIN, device=device)
        bound = 1.0 / np.sqrt(latent)
        bilinear = (torch.rand((latent, latent), generator=generator) * 2 - 1) * bound
        bilinear = bilinear.to(device).requires_grad_(True)
        bias = torch.zeros(1, device=device, requires_grad=True)
        parameters = [w1, w2, bilinear, bias]
        optimizer = torch.optim.Adam(parameters, lr=learning_rate, weight_decay=weight_decay)
        bce = torch.nn.functional.binary_cross_entropy_with_logits

        def summary(embedded, mean_weights, edges):
            pooled = aggregate.apply(mean_weights, embedded, edges)
            return torch.sigmoid(torch.nn.functional.normalize(pooled, p=2.0, dim=1))

        def discriminate(embedded, context):
            return ((embedded @ bilinear) * context).sum(dim=1) + bias

        def forward(index, permutation):
            batch = batches[index]
            normalized, mean_weights = edge_values[index]
            edges = batch.edges
            projected = product.apply(w1, batch.expression)
            latent_z = aggregate.apply(normalized, projected, edges)
            smoothed = aggregate.apply(normalized, latent_z, edges)
            core_smoothed = batch.core_rows(smoothed)
            decoded = batch.core_rows(product.apply(w2.T, batch.expression))
            cross = (core_smoothed * decoded).sum()
            gram = ((core_smoothed.T @ core_smoothed) * (w2 @ w2.T)).sum()
            error = (batch.total - 2.0 * cross.double() + gram.double()) * batch.scale
            if permutation is None:
                return error, core_smoothed
            corrupted = aggregate.apply(normalized, projected[permutation], edges)
            embedded, embedded_c = torch.relu(latent_z), torch.relu(corrupted)
            context = batch.core_rows(summary(embedded, mean_weights, edges))
            context_c = batch.core_rows(summary(embedded_c, mean_weights, edges))
            embedded, embedded_c = batch.core_rows(embedded), batch.core_rows(embedded_c)
            ones = torch.ones(batch.core_nodes.size, device=embedded.device)
            zeros = torch.zeros(batch.core_nodes.size, device=embedded.device)
            contrast = (
                bce(discriminate(embedded, context), ones)
                + bce(discriminate(embedded_c, context), zeros)
                + bce(discriminate(embedded_c, context_c), ones)
                + bce(discriminate(embedded, context_c), zeros)
            )
            return reconstruction_weight * error + contrast.double(), core_smoothed

        def step_loss(batch):  # a new shuffle of the spots for the corrupted view each step
            index = batches.index(batch)
            permutation = torch.randperm(batch.nodes.size, generator=generator).to(device)
            return forward(index, permutation)[0]

        losses = _train(
            step_loss, batches, parameters, optimizer, n_epochs, gradient_clip, progress,
            generator,
        )  # fmt: skip
        with torch.no_grad():
            outputs = [_numpy(forward(index, None)[1]) for index in range(len(batches))]
        smoothed = _gather(batches, outputs, n_obs)
        scores = _decoded_scores(smoothed.astype(np.float64), _numpy(w2))
        return scores.astype(np.float32), losses


def _contrastive_edge_values(batch: _Batch, degree: np.ndarray, device):
    """GraphST's symmetric normalization and neighbourhood mean weights on ``batch``'s edges."""
    import torch

    rows = batch.nodes[np.repeat(np.arange(batch.nodes.size), np.diff(batch.edges.indptr))]
    cols = batch.nodes[batch.edges.indices]
    norm = 1.0 / np.sqrt(degree[rows] * degree[cols])
    normalized = torch.from_numpy(norm.astype(np.float32)).to(device)
    mean_weights = torch.from_numpy((1.0 / degree[rows]).astype(np.float32)).to(device)
    return normalized, mean_weights


def _numpy(tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _train(step_loss, batches, parameters, optimizer, n_epochs, gradient_clip, progress, generator):
    """Full batch (one batch) through :func:`_fit`; otherwise :func:`_fit_batches`."""
    if len(batches) == 1 and batches[0].core is None:
        batch = batches[0]
        return _fit(
            lambda: step_loss(batch), parameters, optimizer, n_epochs, gradient_clip, progress
        )
    return _fit_batches(
        step_loss, batches, parameters, optimizer, n_epochs, gradient_clip, progress, generator
    )


def _fit_batches(
    step_loss,
    batches: list[_Batch],
    parameters,
    optimizer,
    n_epochs: int,
    gradient_clip: float | None,
    progress: Progress | None,
    generator,
):
    """Mini-batch training: each epoch, one Adam step per batch in a seeded random order.

    The loss of an epoch is the mean of its batches' losses weighted by their core spots.
    """
    import torch

    share = np.array([batch.core_nodes.size for batch in batches], dtype=np.float64)
    share /= share.sum()
    losses = np.empty(int(n_epochs), dtype=np.float64)
    for epoch in range(int(n_epochs)):
        epoch_loss = 0.0
        for index in torch.randperm(len(batches), generator=generator).tolist():
            optimizer.zero_grad(set_to_none=True)
            batches[index].expression.hold()
            loss = step_loss(batches[index])
            loss.backward()
            batches[index].expression.release()
            if gradient_clip is not None:
                torch.nn.utils.clip_grad_norm_(parameters, float(gradient_clip))
            optimizer.step()
            epoch_loss += share[index] * float(loss.detach())
        losses[epoch] = epoch_loss
        if progress is not None:
            progress.update(epoch + 1, f"loss {losses[epoch]:.4g}")
    return losses


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
