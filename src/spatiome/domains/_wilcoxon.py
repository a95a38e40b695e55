"""Wilcoxon rank-sum tests of every domain against the rest, from one pass over a sparse matrix.

The statistics are those of :func:`scanpy.tl.rank_genes_groups` with ``method="wilcoxon"``,
``reference="rest"`` and ``tie_correct=False``, computed without densifying the matrix.
Within a gene every zero shares one tied rank, so only the non-zeros need sorting: the
matrix is transposed into gene blocks of bounded size (values and group codes, never a
spots x genes array), each gene's non-zeros are sorted as integers that keep the order of
the values (numpy's vectorized sort; for float32 data the group code rides in the same
64-bit key), and one walk over the sorted values adds every tie block's mid-rank to the
rank sum of each entry's group. The rank sums are sums of half-integers, exact in float64,
so the z-scores equal scanpy's bit for bit. Group sums (for the fold changes) and non-zero
counts (for the detection fractions) come from the same pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import scipy.sparse as sp
from scipy import stats

from .._core.parallel import map_gene_chunks
from .._core.validate import SpatiomeInputError

#: Rows of the matrix are split into this many chunks for the parallel passes; the
#: results do not depend on it (integer counts, and each gene's entries stay in row order).
_ROW_CHUNKS = 64
#: Largest number of non-zeros transposed at once (a gene block): 16 bytes each for float32
#: data (value, group code, sort key), so about 540 MB however large the matrix.
_BLOCK_ENTRIES = 1 << 25
#: Added to both means before the fold change, as scanpy does, so that zeros stay finite.
_FOLD_CHANGE_OFFSET = 1e-9


@dataclass(frozen=True)
class GroupRankSums:
    """Per-group sums over the labelled spots, for every gene.

    ``rank_sums``, ``nonzeros`` and ``sums`` are (n_groups, n_genes): the sum of the
    spots' ranks within each gene (ties share their mid-rank), the number of non-zero
    values and the sum of the values. ``sizes`` holds the spots per group.
    """

    rank_sums: np.ndarray
    nonzeros: np.ndarray
    sums: np.ndarray
    sizes: np.ndarray

    @property
    def n_spots(self) -> int:
        """Number of labelled spots (all groups together)."""
        return int(self.sizes.sum())


def group_rank_sums(matrix: sp.csr_matrix, codes: np.ndarray, n_groups: int) -> GroupRankSums:
    """Rank sums, non-zero counts and value sums of each group, in bounded memory.

    Parameters
    ----------
    matrix
        Spots x genes CSR matrix (explicit zeros count as zeros).
    codes
        Group of each spot, in ``0 .. n_groups - 1``; spots with a negative code are left
        out (they are neither in a group nor in the rest).
    n_groups
        Number of groups.

    Returns
    -------
    GroupRankSums

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> x = sp.csr_matrix(np.array([[0.0], [2.0], [1.0], [0.0]]))
    >>> result = group_rank_sums(x, np.array([0, 0, 1, 1]), 2)
    >>> result.rank_sums.ravel().tolist(), result.nonzeros.ravel().tolist()
    ([5.5, 4.5], [1, 1])
    """
    if not matrix.has_sorted_indices:
        matrix = matrix.sorted_indices()
    # float32 values keep their 32 bits and share a 64-bit sort key with the group code;
    # everything else is ranked as float64 (exact for integers below 2**53).
    data = matrix.data if matrix.data.dtype == np.float32 else matrix.data.astype(np.float64)
    codes = np.ascontiguousarray(codes, dtype=np.int32)
    row_bounds = np.linspace(0, matrix.shape[0], min(_ROW_CHUNKS, matrix.shape[0]) + 1)
    row_bounds = row_bounds.astype(np.int64)
    counts, nan_seen = _count_nonzeros(
        matrix.indptr, matrix.indices, data, codes, row_bounds, matrix.shape[1]
    )
    if nan_seen:
        raise SpatiomeInputError(
            "the expression matrix holds NaN values: rank tests need numbers; replace them "
            "(for example with 0) or drop the genes that hold them"
        )
    shape = (n_groups, matrix.shape[1])
    result = GroupRankSums(
        rank_sums=np.zeros(shape),
        nonzeros=np.zeros(shape, dtype=np.int64),
        sums=np.zeros(shape),
        sizes=np.bincount(codes[codes >= 0], minlength=n_groups).astype(np.int64),
    )
    row_cursor = matrix.indptr[:-1].astype(np.int64)
    for start, stop in _gene_blocks(counts.sum(axis=0)):
        _add_gene_block(matrix, data, codes, row_bounds, row_cursor, counts, start, stop, result)
    return result


def _add_gene_block(
    matrix: sp.csr_matrix,
    data: np.ndarray,
    codes: np.ndarray,
    row_bounds: np.ndarray,
    row_cursor: np.ndarray,
    counts: np.ndarray,
    start: int,
    stop: int,
    result: GroupRankSums,
) -> None:
    """Transpose genes ``start:stop`` (non-zeros only) and fill their columns of ``result``."""
    block_counts = counts[:, start:stop]
    gene_bounds = np.concatenate(([0], np.cumsum(block_counts.sum(axis=0))))
    cursor = gene_bounds[:-1] + np.cumsum(block_counts, axis=0) - block_counts
    values = np.empty(gene_bounds[-1], dtype=data.dtype)
    value_codes = np.empty(gene_bounds[-1], dtype=np.int32)
    _scatter_block(
        matrix.indptr, matrix.indices, data, codes, row_bounds, row_cursor, cursor, stop,
        values, value_codes,
    )  # fmt: skip
    nonzeros = result.nonzeros[:, start:stop]
    _group_sums_block(values, value_codes, gene_bounds, nonzeros, result.sums[:, start:stop])
    packed = data.dtype == np.float32
    bits = values.view(np.uint32 if packed else np.uint64)
    sign = np.uint64(1) << np.uint64(8 * bits.itemsize - 1)
    keys = _sorted_keys(bits, value_codes, gene_bounds, sign)
    _rank_sums_block(
        keys, value_codes, gene_bounds, result.sizes, nonzeros, sign, packed,
        result.rank_sums[:, start:stop],
    )  # fmt: skip


def one_vs_rest(result: GroupRankSums, group: int) -> dict[str, np.ndarray]:
    """scanpy's Wilcoxon statistics of one group against all other labelled spots.

    The z-score uses the normal approximation without tie correction, the p-value is
    two-sided, the log2 fold change compares ``expm1`` of the mean log expression inside and
    outside the group (with scanpy's offset of 1e-9), and ``pts``/``pts_rest`` are the
    fractions of spots with a non-zero value inside and outside.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> x = sp.csr_matrix(np.array([[3.0], [2.0], [0.0], [0.0]]))
    >>> tested = one_vs_rest(group_rank_sums(x, np.array([0, 0, 1, 1]), 2), 0)
    >>> round(float(tested["scores"][0]), 4), tested["pts"].tolist(), tested["pts_rest"].tolist()
    (1.5492, [1.0], [0.0])
    """
    # Python integers, as in scanpy, so the variance is computed exactly before the division.
    n_in = int(result.sizes[group])
    n_all = result.n_spots
    n_out = n_all - n_in
    std_dev = np.sqrt(n_in * n_out * (n_all + 1) / 12.0)
    scores = (result.rank_sums[group] - (n_in * (n_all + 1) / 2.0)) / std_dev
    scores[np.isnan(scores)] = 0
    pvals = 2 * stats.distributions.norm.sf(np.abs(scores))
    nonzero_out = result.nonzeros.sum(axis=0) - result.nonzeros[group]
    fold_change = (np.expm1(result.sums[group] / n_in) + _FOLD_CHANGE_OFFSET) / (
        np.expm1(_sum_of_others(result.sums, group) / n_out) + _FOLD_CHANGE_OFFSET
    )
    return {
        "scores": scores,
        "pvals": pvals,
        "logfoldchanges": np.log2(fold_change),
        "pts": result.nonzeros[group] / n_in,
        "pts_rest": nonzero_out / n_out,
    }


def benjamini_hochberg(pvals: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values, with statsmodels' arithmetic (as scanpy uses).

    Examples
    --------
    >>> benjamini_hochberg(np.array([0.01, 0.04, 0.03])).round(3).tolist()
    [0.03, 0.04, 0.04]
    """
    order = np.argsort(pvals)
    ranked = pvals[order] / (np.arange(1, pvals.size + 1) / float(pvals.size))
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    adjusted[adjusted > 1] = 1
    result = np.empty_like(adjusted)
    result[order] = adjusted
    return result


def ranked_genes(scores: np.ndarray) -> np.ndarray:
    """Gene positions by decreasing score, ties in the same order as scanpy's tables.

    Examples
    --------
    >>> ranked_genes(np.array([0.5, 2.0, -1.0])).tolist()
    [1, 0, 2]
    """
    partition = np.argpartition(scores, -scores.size)[-scores.size :]
    return partition[np.argsort(scores[partition])[::-1]]


def _sum_of_others(per_group: np.ndarray, group: int) -> np.ndarray:
    """Column sums over all groups but one, added up rather than subtracted (no cancellation)."""
    return np.delete(per_group, group, axis=0).sum(axis=0)


def _gene_blocks(nonzeros_per_gene: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous gene ranges holding at most ``_BLOCK_ENTRIES`` non-zeros (or one gene)."""
    blocks, start, held = [], 0, 0
    for gene, count in enumerate(nonzeros_per_gene.tolist()):
        if gene > start and held + count > _BLOCK_ENTRIES:
            blocks.append((start, gene))
            start, held = gene, 0
        held += count
    if start < nonzeros_per_gene.size:
        blocks.append((start, nonzeros_per_gene.size))
    return blocks


@numba.njit(parallel=True, cache=True)
def _count_nonzeros(indptr, indices, data, codes, row_bounds, n_genes):  # pragma: no cover
    n_chunks = row_bounds.size - 1
    counts = np.zeros((n_chunks, n_genes), dtype=np.int64)
    nan_seen = np.zeros(n_chunks, dtype=np.bool_)
    for chunk in numba.prange(n_chunks):
        for row in range(row_bounds[chunk], row_bounds[chunk + 1]):
            if codes[row] < 0:
                continue
            for k in range(indptr[row], indptr[row + 1]):
                if data[k] != data[k]:
                    nan_seen[chunk] = True
                elif data[k] != 0:
                    counts[chunk, indices[k]] += 1
    return counts, nan_seen.any()


@numba.njit(parallel=True, cache=True)
def _scatter_block(
    indptr, indices, data, codes, row_bounds, row_cursor, cursor, stop, out_values, out_codes
):  # pragma: no cover
    """Copy the non-zeros of genes ``< stop`` not yet copied, per gene in row order.

    Column indices are sorted within each row, so ``row_cursor`` (where each row's next
    gene block starts) lets every block read only its own entries: one pass in total.
    """
    start = stop - cursor.shape[1]
    for chunk in numba.prange(row_bounds.size - 1):
        for row in range(row_bounds[chunk], row_bounds[chunk + 1]):
            k, end = row_cursor[row], indptr[row + 1]
            code = codes[row]
            while k < end and indices[k] < stop:
                if code >= 0 and data[k] != 0:
                    column = indices[k] - start
                    position = cursor[chunk, column]
                    cursor[chunk, column] = position + 1
                    out_values[position] = data[k]
                    out_codes[position] = code
                k += 1
            row_cursor[row] = k


def _sorted_keys(
    bits: np.ndarray, codes: np.ndarray, gene_bounds: np.ndarray, sign: np.uint64
) -> np.ndarray:
    """Each gene's non-zeros as order-preserving integer keys, sorted within the gene.

    For 32-bit values the group code rides in the low half of the key, so numpy's
    vectorized sort orders both at once; for 64-bit values the codes are reordered with a
    stable argsort. Genes are sorted on as many threads as numba uses (numpy releases the
    GIL while sorting); each thread sorts its own genes in place.
    """
    packed = bits.dtype == np.uint32
    keys = _ordered_keys(bits, codes, sign, packed)
    bounds = gene_bounds.tolist()

    def sort_genes(first_gene: int, last_gene: int) -> None:
        for gene in range(first_gene, last_gene):
            first, last = bounds[gene], bounds[gene + 1]
            if packed:
                keys[first:last].sort()
            else:
                order = np.argsort(keys[first:last], kind="stable")
                keys[first:last] = keys[first:last][order]
                codes[first:last] = codes[first:last][order]

    n_genes, n_threads = len(bounds) - 1, numba.get_num_threads()
    chunk_size = max(1, -(-n_genes // (4 * n_threads)))
    map_gene_chunks(sort_genes, n_genes, chunk_size=chunk_size, n_jobs=n_threads)
    return keys


@numba.njit(parallel=True, cache=True)
def _group_sums_block(values, codes, gene_bounds, nonzeros, sums):  # pragma: no cover
    for gene in numba.prange(gene_bounds.size - 1):
        for k in range(gene_bounds[gene], gene_bounds[gene + 1]):
            nonzeros[codes[k], gene] += 1
            sums[codes[k], gene] += np.float64(values[k])


@numba.njit(parallel=True, cache=True)
def _ordered_keys(bits, codes, sign, packed):  # pragma: no cover
    """Unsigned integers in the order of the float values whose IEEE bits are ``bits``.

    Negative values have all their bits flipped and positive ones their sign bit set, so
    +0.0 maps to ``sign`` and the integer order is the float order. ``packed`` (32-bit
    values) moves the key to the high half and puts the group code in the low half.
    """
    keys = np.empty(bits.size, dtype=np.uint64)
    all_ones = sign | (sign - np.uint64(1))
    shift = np.uint64(32) if packed else np.uint64(0)
    for k in numba.prange(bits.size):
        key = np.uint64(bits[k])
        key = key ^ all_ones if key & sign else key | sign
        keys[k] = (key << shift) | np.uint64(codes[k]) if packed else key
    return keys


@numba.njit(parallel=True, cache=True)
def _rank_sums_block(
    keys, codes, gene_bounds, sizes, nonzeros, sign, packed, rank_sums
):  # pragma: no cover
    """Add every gene's mid-ranks to the rank sums of the groups, zeros included.

    The zeros (all spots without a stored non-zero) share one mid-rank between the
    negative and the positive values.
    """
    n_spots = sizes.sum()
    low_half = np.uint64(0xFFFFFFFF)
    shift = np.uint64(32) if packed else np.uint64(0)
    for gene in numba.prange(gene_bounds.size - 1):
        first, last = gene_bounds[gene], gene_bounds[gene + 1]
        n_zero = n_spots - (last - first)
        n_negative = 0
        start = first
        while start < last:
            value_key = keys[start] >> shift
            stop = start + 1
            while stop < last and keys[stop] >> shift == value_key:
                stop += 1
            if value_key < sign:
                n_negative = stop - first
                before = start - first
            else:
                before = start - first + n_zero
            mid_rank = before + (stop - start + 1) / 2.0
            for k in range(start, stop):
                group = np.int64(keys[k] & low_half) if packed else np.int64(codes[k])
                rank_sums[group, gene] += mid_rank
            start = stop
        zero_rank = n_negative + (n_zero + 1) / 2.0
        for group in range(sizes.size):
            rank_sums[group, gene] += zero_rank * (sizes[group] - nonzeros[group, gene])
