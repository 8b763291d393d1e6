"""KGCN: Knowledge Graph Convolutional Networks for Recommender Systems.

Wang, Zhao, Xie, Li, Guo. WWW 2019. https://arxiv.org/abs/1904.12575
(reference code: https://github.com/hwwang55/KGCN).

For a user ``u`` and an entity ``v`` with sampled in-neighbours ``N(v)``
(reached through relations ``r_{v,e}``):

.. math::

    π^u_r = e_u^⊤ e_r, \\qquad
    \\tilde π^u_{r_{v,e}} = \\operatorname{softmax}_{e ∈ N(v)} π^u_{r_{v,e}}, \\qquad
    e^u_{N(v)} = \\sum_{e ∈ N(v)} \\tilde π^u_{r_{v,e}}\\, h_e

and one of three aggregators produces the next representation of ``v``:

.. math::

    \\text{sum:}\\; σ(W(h_v + e^u_{N(v)}) + b) \\quad
    \\text{concat:}\\; σ(W[h_v \\,\\|\\, e^u_{N(v)}] + b) \\quad
    \\text{neighbor:}\\; σ(W e^u_{N(v)} + b)

with ``σ = ReLU`` in every layer but the last, which uses ``tanh``. After ``H``
layers (hops) the score is :math:`\\hat y_{uv} = \\mathrm{sigmoid}(e_u^⊤ h^{(H)}_v)`.
Each layer has its own weights. Embeddings and weights use Glorot-uniform
initialisation, as the reference code does.

The model consumes user-conditioned blocks (:mod:`dglrec.sampling.blocks`): every
block node is a ``(user, entity)`` state, so the softmax above runs per
destination state over the block's edge lists (:func:`softmax_by_destination`, DGL's
``edge_softmax`` written with torch's scatter operators).

To score ``U`` users against many items at once (the full ranking),
:meth:`KGCN.score_grid` runs the same layers on ordinary (unconditioned) blocks with
the users as a batch dimension: node states ``[N, d, U]`` (users last, so the first
layer's sparse products write them as they come), edge scores ``π^u_r`` ``[E, U]``
from one ``[n_relations, U]`` product, the softmax per destination and user; an
importance top-K sampler supplies ``[E, U]`` keep masks. The first layer's sources are
the same for every user, so the aggregator's linear map is applied to them once,
before aggregating, and the edges of one (destination, relation) group, which share
their weight, pool into one: under importance top-K a user keeps a prefix of each
group (ranked by source entity), read from per-group prefix sums. With one layer, an
item whose neighbours all share one relation gets equal attention weights from every
user, so its representation is computed once and its scores are one matrix product.
Destinations that keep every edge aggregate by relation: ``Σ_r e^{π_r} S_{v,r} / Σ_r
e^{π_r} c_{v,r}`` (``S_{v,r}``, ``c_{v,r}``: the sum and count of ``v``'s sources
through ``r``), one sparse product per pass of users, without a per-edge softmax. A
deeper layer, whose sources differ per user, sums each group's sources with a sparse
product and takes the softmax over groups, not edges, a chunk of destinations at a
time, so that the chunk's sums, aggregator and scores stay in the CPU's cache; where
an importance top-K may prune a destination's edges, a per-edge softmax over each
user's kept edges. The last layer's ``tanh`` is computed as ``2 sigmoid(2x) - 1``
there (:func:`tanh_`).
Subclasses change the pieces (attention, aggregators, the user and entity vectors),
which both paths share.

Args:
    n_users: number of users.
    n_entities: number of KG entities (items included).
    n_relations: number of relation types.
    dim: embedding size ``d``.
    n_layers: number of hops ``H``; must match the sampler's block count.
    aggregator: ``"sum"``, ``"concat"`` or ``"neighbor"``.

Shapes:
    input: ``H`` conditioned blocks and ``pair_index`` ``[n_pairs]``;
    output: :class:`~dglrec.models.base.ScoreOutput` with logits ``[n_pairs]``;
    grid: ``H`` sampled blocks and users ``[U]`` -> logits ``[U, num_dst of blocks[-1]]``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Literal, Protocol

import dgl
import dgl.function as fn
import torch
from dgl.nn.functional import edge_softmax
from torch import nn

from dglrec.models.base import ScoreOutput, half_sq
from dglrec.models.registry import register_model
from dglrec.sampling.blocks import relation_groups

AGGREGATORS = ("sum", "concat", "neighbor")
# The spread of one user's softmax inputs that grid_by_relation takes with one shared
# maximum: every weight stays above e^-40, far from float32 underflow.
BY_RELATION_MAX_SPREAD = 40.0
# grid_by_relation's chunks: about this many floats of sums (4 MB), so a chunk's product,
# division, bias and activation run in the CPU's cache.
BY_RELATION_CHUNK_FLOATS = 1 << 20


def softmax_by_destination(scores: torch.Tensor, dst: torch.Tensor, n_dst: int) -> torch.Tensor:
    """``[E, ...]`` softmax of ``scores`` over the edges of each destination (``dst``: ``[E]``),
    for every trailing index (a grid's users) on its own.

    ``exp(s - max) / Σ exp(s - max)`` per destination, as DGL's ``edge_softmax``. The
    maximum only keeps ``exp`` in range and cancels out of the result, so no gradient
    flows through it.
    """
    with torch.no_grad():
        index = dst.view(-1, *(1,) * (scores.dim() - 1)).expand_as(scores)
        peak = scores.new_full((n_dst, *scores.shape[1:]), -math.inf)
        peak = peak.scatter_reduce_(0, index, scores, "amax")
    exp = torch.exp(scores - peak[dst])
    return exp / sum_by_destination(exp, dst, n_dst).index_select(0, dst)


def sum_by_destination(values: torch.Tensor, dst: torch.Tensor, n_dst: int) -> torch.Tensor:
    """``[n_dst, ...]``: ``values`` (``[E, ...]``) summed per destination; 0 where none."""
    return values.new_zeros((n_dst, *values.shape[1:])).index_add_(0, dst, values)


class GridEdgeFilter(Protocol):
    """Which edges each user's states keep (importance top-K, ``sampling.blocks.GridTopK``)."""

    def __call__(self, block: dgl.DGLGraph, users: torch.Tensor) -> torch.Tensor:
        """``[E, U]`` bool: edge ``e`` kept for ``users[u]``."""

    def kept_counts(self, block: dgl.DGLGraph, users: torch.Tensor) -> torch.Tensor:
        """``[G, U]``: edges ``users[u]`` keeps of each group of ``relation_groups(block)``.

        A group keeps its first edges in :class:`~dglrec.sampling.blocks.RelationGroups`
        rank order.
        """

    def may_prune(self, block: dgl.DGLGraph) -> torch.Tensor:
        """``[num_dst]`` bool: destinations where some user might drop an edge."""


class UserRelationAttention(nn.Module):
    """``e^u_{N(v)}``: neighbours weighted by the softmax of ``e_u · e_r`` per destination state.

    Shared by the KGCN family; a subclass may change :meth:`logit`, the map from the
    affinity ``e_u · e_r`` to the score that the softmax normalises.
    """

    def logit(self, affinity: torch.Tensor) -> torch.Tensor:
        """The softmax's input for an affinity ``e_u · e_r``: KGCN's ``π^u_r`` itself."""
        return affinity

    def edge_weights(
        self, block: dgl.DGLGraph, user: torch.Tensor, rel: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(src, dst, a)``: each edge's end points and ``\\tilde π^u_{r_{v,e}}`` (``[E]``).

        The softmax of :meth:`logit` of ``e_u · e_r``, ``u`` the destination state's user,
        as :func:`dgl.nn.functional.edge_softmax` gives it (within float32 rounding),
        computed with torch's scatter operators on the block's edge lists: a training
        batch's block has about a thousand edges, and each DGL sparse operator, forward
        and backward, cost more there (70–130 µs) than its arithmetic.
        """
        src, dst = block.edges()
        scores = self.logit((user.index_select(0, dst) * rel).sum(-1))
        return src, dst, softmax_by_destination(scores, dst, block.num_dst_nodes())

    def forward(
        self, block: dgl.DGLGraph, h_src: torch.Tensor, user: torch.Tensor, rel: torch.Tensor
    ) -> torch.Tensor:
        """``[num_dst, d]`` attention-weighted neighbourhood of each destination state."""
        src, dst, weights = self.edge_weights(block, user, rel)
        neighbours = weights.unsqueeze(-1) * h_src.index_select(0, src)
        return sum_by_destination(neighbours, dst, block.num_dst_nodes())

    def grid(
        self,
        block: dgl.DGLGraph,
        h_src: torch.Tensor,
        affinity: torch.Tensor,
        keep: torch.Tensor | None = None,
        cache: dict | None = None,
    ) -> torch.Tensor:
        """:meth:`forward` for ``U`` users at once on an unconditioned block.

        Grid states keep the users last, ``[N, d, U]``: a layer's linear map is then one
        product per node over contiguous rows, and the first layer's chunks
        (:meth:`grid_by_relation`) are written as they come, without a transposed copy.

        Args:
            h_src: ``[num_src, d, U]`` (or ``[num_src, d, 1]``, the same for every user).
            affinity: ``[n_relations, U]`` ``e_r · e_u`` of each relation for each user.
            keep: ``[E, U]`` bool, the edges each user keeps (all if ``None``).
            cache: a ranking's cache (see :meth:`KGCN.score_grid`), for :meth:`grid_pooled`.

        Returns:
            ``[num_dst, d, U]``.
        """
        if keep is None:
            return self.grid_pooled(block, h_src, affinity, cache=cache)
        logits = self.logit(affinity[block.edata["rel"]]).masked_fill(~keep, -math.inf)  # [E, U]
        with block.local_scope():
            a = edge_softmax(block, logits.unsqueeze(1))  # [E, 1, U], per destination and user
            # 0, not 0/0, where a destination keeps none of its edges.
            block.edata["a"] = a.masked_fill(~keep.unsqueeze(1), 0.0)
            block.srcdata["h"] = h_src
            block.update_all(fn.u_mul_e("h", "a", "m"), fn.sum("m", "n"))
            return block.dstdata["n"]

    def grid_pooled(
        self,
        block: dgl.DGLGraph,
        h_src: torch.Tensor,
        affinity: torch.Tensor,
        kept: torch.Tensor | None = None,
        cache: dict | None = None,
    ) -> torch.Tensor:
        """:meth:`grid` by (destination, relation) group: one edge per group.

        Serves the first layer (sources ``[N, d, 1]``, shared by every user) and deeper
        ones (``[N, d, U]``), where each group's sources are summed per user by one
        sparse product (:meth:`grid_by_groups`).

        An edge's weight depends on its relation only, so the ``c`` kept edges of one
        relation into one destination share it: they enter the softmax as one edge from
        the mean of their sources, with logit ``+ log c`` (``Σ_e e^{s_r} h_e = c e^{s_r}
        mean h``). Same result, fewer edges (Last.FM-KG, 8 uniform neighbours per item:
        6.3k (item, relation) groups for 30.8k edges).

        Args:
            kept: ``[G, U]``, how many edges of each group each user keeps (a prefix of
                the group in rank order: :class:`~dglrec.sampling.blocks.RelationGroups`;
                every edge if ``None``). Needs ``h_src`` to be the ranking's shared
                first-layer sources (``cache["attended"]``): their per-group prefix sums
                are computed once per ranking, and each (group, user) reads its own.
            cache: a ranking's cache (see :meth:`KGCN.score_grid`): the block's groups,
                and, for the shared first-layer sources, their per-group means and
                prefix sums.

        Returns:
            ``[num_dst, d, U]`` (a view with users before features where ``kept`` is given).
        """
        cache = {} if cache is None else cache
        src, groups, group_block = _cached_relation_groups(block, cache)
        # Means and prefix sums depend on the sources: shared only where they are the
        # ranking's first-layer vectors (a deeper layer's [N, d, 1] is one user's).
        shared = h_src is cache.get("attended")
        if kept is not None:
            if not shared:
                raise ValueError("kept counts need the ranking's shared first-layer sources")
            if ("prefix", block) not in cache:
                cache[("prefix", block)] = _group_prefix_sums(h_src[..., 0], src, groups)
            logits = self.logit(affinity[groups.rel])  # [G, U]
            logits = logits.add_(kept.to(logits.dtype).log())
            weight = softmax_by_destination(logits, groups.dst, block.num_dst_nodes())  # [G, U]
            # Per edge, not per group: Σ_e a_e h_e = (a_g / c) Σ_kept h_e. 0, not 0/0, where
            # a user keeps no edge of the group (its logit is -inf).
            weight = weight.div_(kept.clamp(min=1)).masked_fill_(kept == 0, 0.0)
            return _weighted_prefix_sums(block, groups, kept, weight, cache).transpose(1, 2)
        if not shared:  # a deeper layer's sources differ per user
            out = h_src.new_empty(block.num_dst_nodes(), h_src.shape[1], affinity.shape[1])
            for _ in self.grid_by_groups(block, h_src, affinity, cache, out):
                pass
            return out
        weight = self._group_softmax(groups, affinity, block.num_dst_nodes())
        pooled = cache.get(("pooled", block))
        if pooled is None:
            pooled = h_src.new_zeros(len(groups.size), *h_src.shape[1:])
            pooled.index_add_(0, groups.group, h_src[src])
            pooled = cache[("pooled", block)] = pooled.div_(groups.size.view(-1, 1, 1))
        with group_block.local_scope():
            group_block.edata["a"] = weight.unsqueeze(1)  # [G, 1, U]
            group_block.srcdata["h"] = pooled  # [G, d, 1]
            group_block.update_all(fn.u_mul_e("h", "a", "m"), fn.sum("m", "n"))
            return group_block.dstdata["n"]

    def _group_softmax(self, groups, affinity: torch.Tensor, n_dst: int) -> torch.Tensor:
        """``[G, U]``: softmax over each destination's groups of :meth:`logit` ``+ log c``.

        A group of ``c`` edges that share their weight, weighed as one edge: its
        share of the destination's softmax over all its edges.
        """
        size = groups.size.to(affinity.dtype)
        logits = self.logit(affinity[groups.rel]).add_(size.log()[:, None])
        return softmax_by_destination(logits, groups.dst, n_dst)

    def grid_by_groups(
        self,
        block: dgl.DGLGraph,
        h_src: torch.Tensor,
        affinity: torch.Tensor,
        cache: dict,
        out: torch.Tensor | None = None,
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """:meth:`grid` of a deeper layer (sources ``[N, d, U]``, every edge kept), in chunks.

        Per (destination, relation) group ``g`` with ``c_g`` edges, the weight
        ``softmax_g(s_g + log c_g) / c_g`` (``[G, U]``: the groups' softmax, not the
        edges'), times the sum of the group's sources, summed by destination. Chunk by
        chunk of destinations, a few thousand groups at a time: each chunk's group sums
        (one sparse product), weighting and destination sums stay in the CPU's cache,
        and so can what the caller does next (the aggregator, the scores), instead of
        each step reading and writing every group of the pass from memory.

        Yields:
            ``(start, stop, [stop - start, d, U])``: destinations ``start..stop-1``, in
            order, written into ``out[start:stop]`` (``out``: ``[num_dst, d, U]``) or
            into a tensor of their own.
        """
        src, groups, _ = _cached_relation_groups(block, cache)
        n_dst, features = block.num_dst_nodes(), h_src.shape[1:]
        size = groups.size.to(affinity.dtype)
        # The mean's 1 / c goes into the weight: the chunks sum each group's sources.
        weight = self._group_softmax(groups, affinity, n_dst).div_(size[:, None]).unsqueeze(1)
        per_user = h_src.shape[-1] == weight.shape[-1]
        width = math.prod(features)
        per_chunk = max(1, BY_RELATION_CHUNK_FLOATS // width)
        if ("group_chunks", block, per_chunk) not in cache:
            cache[("group_chunks", block, per_chunk)] = _group_chunks(
                src, groups, n_dst, len(h_src), per_chunk
            )
        flat = h_src.reshape(len(h_src), width)
        for start, stop, first, last, members, at in cache[("group_chunks", block, per_chunk)]:
            pooled = _sparse_product(members, flat).view(last - first, *features)
            pooled = pooled.mul_(weight[first:last]) if per_user else pooled * weight[first:last]
            shape = (stop - start, h_src.shape[1], weight.shape[-1])
            sums = pooled.new_zeros(shape) if out is None else out[start:stop].zero_()
            yield start, stop, sums.index_add_(0, at, pooled)

    def grid_by_relation(
        self,
        block: dgl.DGLGraph,
        h_src: torch.Tensor,
        affinity: torch.Tensor,
        cache: dict,
        out: torch.Tensor | None = None,
    ) -> Iterator[tuple[int, int, torch.Tensor]] | None:
        """:meth:`grid` with every edge kept, features before users, chunk by chunk.

        ``h_src`` must be the ranking's shared first-layer sources (``cache["attended"]``,
        ``[N, m, 1]``). A destination's edges of relation ``r`` share the weight
        ``e^{s_r}`` (``s_r`` the user's softmax input), so with ``S_{v,r}`` the sum of
        their sources and ``c_{v,r}`` their count,

        .. math::

            e^u_{N(v)} = \\frac{\\sum_r e^{s_r - μ} S_{v,r}}{\\sum_r e^{s_r - μ} c_{v,r}},

        ``μ`` the user's largest ``s_r``: a sparse ``[num_dst (m + 1), R']`` by dense
        ``[R', U]`` product over the ``R'`` relations the block has, the sparse ``[S; c]``
        matrix built once per ranking; no per-edge softmax. ``None`` (use
        :meth:`grid_pooled`) where the block has no edges, or a user's inputs spread more
        than :data:`BY_RELATION_MAX_SPREAD`: one shared ``μ`` could underflow a denominator.

        Yields:
            ``(start, stop, [stop - start, m, U])``: destinations ``start..stop-1``, a few
            hundred at a time, written into ``out[start:stop]`` (``out``: ``[num_dst, m,
            U]``), or into a buffer the next chunk reuses. Chunks small enough to stay in
            the CPU's cache while the caller finishes them (bias, activation) take a
            quarter of the time of one product over every destination.
        """
        if h_src is not cache.get("attended"):
            raise ValueError("grid_by_relation needs the ranking's shared first-layer sources")
        if ("by_relation", block) not in cache:
            cache[("by_relation", block)] = _relation_sums(block, h_src[..., 0], cache)
        relations, sums_by_relation = cache[("by_relation", block)]
        if not len(relations):  # no edges: no maximum to take; the pooled path's empty sums
            return None
        inputs = self.logit(affinity[relations])  # [R', U]
        inputs = inputs - inputs.amax(0)
        if float(inputs.amin()) < -BY_RELATION_MAX_SPREAD:
            return None
        width = h_src.shape[1] + 1
        per_chunk = max(1, BY_RELATION_CHUNK_FLOATS // (width * affinity.shape[1]))
        if ("by_relation_chunks", block, per_chunk) not in cache:
            cache[("by_relation_chunks", block, per_chunk)] = _row_chunks(
                sums_by_relation, width, per_chunk
            )
        chunks = cache[("by_relation_chunks", block, per_chunk)]
        return _relation_products(chunks, inputs.exp_(), width, out)


def _relation_products(chunks: list, weights: torch.Tensor, width: int, out=None):
    """``grid_by_relation``'s chunks: ``Σ_r w_r S_{v,r} / Σ_r w_r c_{v,r}`` (``w``: ``[R', U]``)."""
    n_users = weights.shape[1]
    buffer = weights.new_empty(chunks[0][2].shape[0], n_users)
    for start, stop, matrix in chunks:
        # Into an empty buffer (beta = 0): `matrix @ weights` would zero-fill a result and
        # copy it, twice the product's own time.
        rows = buffer[: matrix.shape[0]]
        sums = torch.addmm(rows, matrix, weights, beta=0, out=rows)
        sums = sums.view(stop - start, width, n_users)
        # A destination without edges: 0 / tiny = 0 (grid_pooled's empty sum), not 0 / 0.
        # In place or into `out`: a new tensor of this size each time costs more in page
        # faults than the division itself.
        counts = sums[:, -1:].clamp_(min=1e-30)
        if out is None:
            yield start, stop, sums[:, :-1].div_(counts)
        else:
            yield start, stop, torch.div(sums[:, :-1], counts, out=out[start:stop])


def _row_chunks(matrix: torch.Tensor, width: int, per_chunk: int) -> list:
    """``(start, stop, CSR of destinations start..stop-1)`` of a ``[num_dst width, R']`` CSR."""
    n_dst, chunks = matrix.shape[0] // width, []
    for start in range(0, n_dst, per_chunk):
        stop = min(n_dst, start + per_chunk)
        chunks.append((start, stop, _csr_rows(matrix, start * width, stop * width)))
    return chunks


def _group_chunks(src, groups, n_dst: int, n_src: int, per_chunk: int) -> list:
    """``grid_by_groups``' chunks: ``(start, stop, first, last, members, at)``.

    Destinations ``start..stop-1`` own groups ``first..last-1`` (groups are sorted by
    destination), about ``per_chunk`` of them (a destination's groups are never split);
    ``members``: the CSR ``[last - first, n_src]`` 0/1 matrix of their sources; ``at``:
    each group's destination within the chunk.
    """
    members = _zero_one_csr(groups.group, src, (len(groups.size), n_src))
    per_dst = torch.bincount(groups.dst, minlength=n_dst)
    before = torch.cumsum(per_dst, 0) - per_dst  # groups of the earlier destinations
    # A destination joins the chunk its first group falls in.
    chunk_of = torch.div(before, per_chunk, rounding_mode="floor")
    _, counts = torch.unique_consecutive(chunk_of, return_counts=True)
    chunks, start = [], 0
    for stop in torch.cumsum(counts, 0).tolist():
        first = int(before[start])
        last = int(before[stop - 1] + per_dst[stop - 1])
        at = groups.dst[first:last] - start
        chunks.append((start, stop, first, last, _csr_rows(members, first, last), at))
        start = stop
    return chunks


def _csr_rows(matrix: torch.Tensor, first: int, last: int) -> torch.Tensor:
    """Rows ``first..last-1`` of a CSR matrix, as a CSR matrix of their own."""
    crow, col, values = matrix.crow_indices(), matrix.col_indices(), matrix.values()
    begin, end = int(crow[first]), int(crow[last])
    with warnings.catch_warnings():  # "sparse CSR support is in beta": used as documented
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            crow[first : last + 1] - begin,
            col[begin:end],
            values[begin:end],
            (last - first, matrix.shape[1]),
        )


def _zero_one_csr(rows: torch.Tensor, columns: torch.Tensor, shape: tuple) -> torch.Tensor:
    """The CSR matrix with a 1 at each ``(rows[i], columns[i])`` (repeats add up)."""
    values = torch.ones(len(rows), device=rows.device)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": used as documented
        warnings.simplefilter("ignore", UserWarning)
        matrix = torch.sparse_coo_tensor(torch.stack([rows, columns]), values, shape)
        return matrix.coalesce().to_sparse_csr()


def _sparse_product(matrix: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``matrix @ dense`` over ``dense``'s first dimension, its others flattened and kept.

    Into an empty tensor (beta = 0): ``matrix @ dense`` would zero-fill a result and copy
    it; an empty row is 0 all the same.
    """
    flat = dense.reshape(len(dense), math.prod(dense.shape[1:]))
    out = flat.new_empty(matrix.shape[0], flat.shape[1])
    with warnings.catch_warnings():  # "sparse CSR support is in beta": used as documented
        warnings.simplefilter("ignore", UserWarning)
        torch.addmm(out, matrix.to(flat.dtype), flat, beta=0, out=out)
    return out.view(matrix.shape[0], *dense.shape[1:])


def _weighted_prefix_sums(
    block: dgl.DGLGraph, groups, kept: torch.Tensor, weight: torch.Tensor, cache: dict
) -> torch.Tensor:
    """``[num_dst, U, m]``: ``Σ_g weight[g, u] · (sum of group g's first kept[g, u] sources)``.

    The prefix sums are the ranking's (``cache[("prefix", block)]``,
    :func:`_group_prefix_sums`). One sparse ``[num_dst U, rows]`` by dense ``[rows, m]``
    product, its row ``(v, u)`` holding one entry per group at ``v``: gathering the
    ``[G, U, m]`` prefix sums and summing them by destination moves several times as
    much memory.
    """
    table, zero_row = cache[("prefix", block)]
    n_dst, n_users = block.num_dst_nodes(), kept.shape[1]
    if ("prefix_layout", block) not in cache:
        at_dst = torch.bincount(groups.dst, minlength=n_dst)  # groups per destination
        first = torch.cumsum(at_dst, 0) - at_dst
        offset = first[groups.dst]  # [G] the destination's first group
        cache[("prefix_layout", block)] = (
            at_dst,
            offset,
            at_dst[groups.dst],
            torch.arange(len(offset), device=offset.device) - offset,
        )
    at_dst, offset, width, rank = cache[("prefix_layout", block)]
    # Entry of (g, u): after the rows of earlier destinations and of v's earlier users.
    user = torch.arange(n_users, device=kept.device)
    entry = ((offset * n_users + rank)[:, None] + user * width[:, None]).flatten()
    columns = torch.empty(entry.numel(), dtype=torch.long, device=kept.device)
    columns[entry] = (zero_row[:, None] + kept).flatten()
    values = weight.new_empty(entry.numel())
    values[entry] = weight.flatten()
    row_ends = torch.cumsum(at_dst.repeat_interleave(n_users), 0)
    rows = torch.cat([row_ends.new_zeros(1), row_ends])
    with warnings.catch_warnings():  # "sparse CSR support is in beta": used as documented
        warnings.simplefilter("ignore", UserWarning)
        matrix = torch.sparse_csr_tensor(rows, columns, values, (n_dst * n_users, len(table)))
    # Into an empty tensor (beta = 0): `matrix @ table` would zero-fill a result and copy it.
    out = table.new_empty(n_dst * n_users, table.shape[1])
    return torch.addmm(out, matrix, table, beta=0, out=out).view(n_dst, n_users, -1)


def _relation_sums(block: dgl.DGLGraph, h_src: torch.Tensor, cache: dict) -> tuple:
    """``(relations, CSR [num_dst (m + 1), R'])`` for ``UserRelationAttention.grid_by_relation``.

    ``relations``: the ``R'`` relations ``block`` has; row ``v (m + 1) + k`` holds, per
    relation, component ``k`` of the sum of ``v``'s sources through it (``k = m``: their
    count). ``h_src``: ``[num_src, m]``.
    """
    src, groups, _ = _cached_relation_groups(block, cache)
    relations, column = torch.unique(groups.rel, return_inverse=True)
    width = h_src.shape[1] + 1
    sums = h_src.new_zeros(len(groups.size), width)
    sums[:, :-1].index_add_(0, groups.group, h_src[src])
    sums[:, -1] = groups.size.to(sums.dtype)
    rows = groups.dst[:, None] * width + torch.arange(width, device=src.device)
    entries = torch.stack([rows.flatten(), column[:, None].expand_as(rows).flatten()])
    shape = (block.num_dst_nodes() * width, len(relations))
    with warnings.catch_warnings():  # "sparse CSR support is in beta": used as documented
        warnings.simplefilter("ignore", UserWarning)
        matrix = torch.sparse_coo_tensor(entries, sums.flatten(), shape).coalesce()
        return relations, matrix.to_sparse_csr()


def _group_prefix_sums(h_src: torch.Tensor, src: torch.Tensor, groups) -> tuple:
    """``(table, zero_row)``: ``table[zero_row[g] + c]`` sums group ``g``'s first ``c`` sources.

    ``h_src``: ``[num_src, d]``. Sums run in float64 over the whole block, then each
    group's own prefix is taken and rounded once to ``h_src``'s dtype, so a long block
    loses no precision to the cancellation.
    """
    n_groups, n_edges = len(groups.size), len(src)
    sums = h_src[src[groups.ranked]].double().cumsum(0)  # [E, d], group after group
    first = torch.cumsum(groups.size, 0) - groups.size
    before = torch.cat([sums.new_zeros(1, sums.shape[1]), sums])[first]  # [G, d]
    rank_group = groups.group[groups.ranked]
    zero_row = first + torch.arange(n_groups, device=first.device)  # one zero row per group
    table = h_src.new_zeros(n_edges + n_groups, h_src.shape[1])
    table[torch.arange(n_edges, device=first.device) + rank_group + 1] = (
        sums - before[rank_group]
    ).to(h_src.dtype)
    return table, zero_row


def _destination_classes(block: dgl.DGLGraph, n_relations: int, may_prune: torch.Tensor | None):
    """``block``'s destinations in three classes, each ``(ids, block of their in-edges)``.

    ``alike``: in-edges of at most one relation (weights equal for every user);
    ``unpruned``: two or more relations, every edge kept for every user (``may_prune``
    false, or no filter); ``pruned``: the rest (see :func:`_sub_blocks`).
    """
    _, dst = block.edges(order="eid")
    keys = torch.unique(dst * n_relations + block.edata["rel"])
    alike = torch.bincount(keys // n_relations, minlength=block.num_dst_nodes()) <= 1
    pruned = ~alike & (may_prune if may_prune is not None else torch.zeros_like(alike))
    return _sub_blocks(block, (alike, ~alike & ~pruned, pruned))


def _sub_blocks(block: dgl.DGLGraph, selections) -> list:
    """``(ids, block of their in-edges)`` for each ``[num_dst]`` bool selection of destinations.

    Each sub-block keeps ``block``'s sources and each destination's edge order, its
    destinations renumbered ``0..n-1``.
    """
    src, dst = block.edges(order="eid")
    n_dst = block.num_dst_nodes()
    parts = []
    for chosen in selections:
        ids = torch.nonzero(chosen, as_tuple=True)[0]
        renumber = torch.full((n_dst,), -1, dtype=dst.dtype, device=dst.device)
        renumber[ids] = torch.arange(len(ids), dtype=dst.dtype, device=dst.device)
        edges = torch.nonzero(chosen[dst], as_tuple=True)[0]
        part = dgl.create_block(
            (src[edges], renumber[dst[edges]]),
            num_src_nodes=block.num_src_nodes(),
            num_dst_nodes=len(ids),
            device=block.device,
        )
        part.srcdata[dgl.NID] = block.srcdata[dgl.NID]
        part.edata["rel"] = block.edata["rel"][edges]
        parts.append((ids, part))
    return parts


def _relation_groups(block: dgl.DGLGraph):
    """``(src, groups, group_block)`` of ``block``'s edges.

    ``src``: each edge's source; ``groups``: its (destination, relation) groups
    (:func:`~dglrec.sampling.blocks.relation_groups`); ``group_block``: a block from
    each group to its destination. They depend on the block alone, so a ranking builds
    them once (its cache), not once per pass of users.
    """
    src, _ = block.edges(order="eid")
    groups = relation_groups(block)
    group_block = dgl.create_block(  # group g -> its destination
        (torch.arange(len(groups.size), device=src.device), groups.dst),
        num_src_nodes=len(groups.size),
        num_dst_nodes=block.num_dst_nodes(),
    )
    return src, groups, group_block


def _cached_relation_groups(block: dgl.DGLGraph, cache: dict):
    """:func:`_relation_groups` of ``block``, built once per ranking ``cache``."""
    if ("groups", block) not in cache:
        cache[("groups", block)] = _relation_groups(block)
    return cache[("groups", block)]


def tanh_(x: torch.Tensor) -> torch.Tensor:
    """``tanh`` in place as ``2 sigmoid(2x) - 1``, for scoring without gradients.

    PyTorch 2.2's CPU ``tanh`` takes about three times ``sigmoid``'s time per float32
    (2.8 against 0.9 ns with AVX-512, one thread), and a ranking applies it to every
    (item, user, feature) state; the two agree within 2e-7. Not bit-stable across
    tensor lengths (``sigmoid``'s scalar tail), so pair scoring keeps ``torch.tanh``.
    """
    return x.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)


def _grid_aggregate(
    aggregator: nn.Module, h_dst: torch.Tensor, neighborhood: torch.Tensor
) -> torch.Tensor:
    """A deeper grid layer's output ``[n, m, U]`` from ``h_dst`` and ``neighborhood``.

    The aggregator's forward with features before users: its pre-activation
    ``W_v h_v + W_N e^u_{N(v)} + b`` (:meth:`KGCNAggregator.linear_parts`) as products
    over each node's ``[d, U]`` states, then its activation in place. Overwrites
    ``neighborhood`` where it can (the caller's own).
    """
    own, neighbour, bias = aggregator.linear_parts()
    if own is neighbour:  # the sum aggregator: W (h_v + e_N) + b
        pre_activation = torch.matmul(neighbour, neighborhood.add_(h_dst))
    else:
        pre_activation = torch.matmul(neighbour, neighborhood)
        if own is not None:
            pre_activation += torch.matmul(own, h_dst)
    return aggregator.activate_(pre_activation.add_(bias[:, None]))


class KGCNAggregator(nn.Module):
    """One KGCN layer's aggregator: sum, concat or neighbor (see the module docstring)."""

    def __init__(self, dim: int, kind: str, last: bool):
        super().__init__()
        if kind not in AGGREGATORS:
            raise ValueError(f"aggregator must be one of {AGGREGATORS}, got {kind!r}")
        self.kind = kind
        self.linear = nn.Linear(2 * dim if kind == "concat" else dim, dim)
        self.activation = torch.tanh if last else torch.relu
        self.activation_ = tanh_ if last else torch.relu_
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, h_dst: torch.Tensor, neighborhood: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(self._input(h_dst, neighborhood)))

    def _input(self, h_dst: torch.Tensor, neighborhood: torch.Tensor) -> torch.Tensor:
        if self.kind == "sum":
            return h_dst + neighborhood
        if self.kind == "concat":
            return torch.cat([h_dst, neighborhood], dim=-1)
        return neighborhood

    def linear_parts(self) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """``(W_v, W_N, b)``: the pre-activation is ``W_v h_v + W_N e^u_{N(v)} + b``.

        ``W_v`` is ``None`` for the neighbor aggregator. The grid uses the split to
        project shared sources before aggregating them (see :meth:`KGCN.score_grid`).
        """
        weight, bias = self.linear.weight, self.linear.bias
        dim = weight.shape[0]
        if self.kind == "sum":
            return weight, weight, bias
        if self.kind == "concat":
            return weight[:, :dim], weight[:, dim:], bias
        return None, weight, bias

    def activate_(self, pre_activation: torch.Tensor) -> torch.Tensor:
        """The layer's output from a grid's pre-activation ``[n, m, U]``, in place."""
        return self.activation_(pre_activation)


@register_model("kgcn", kge_init=True, importance_sampling=True, explains=True, scores_grid=True)
class KGCN(nn.Module):
    def __init__(
        self,
        n_users: int,
        n_entities: int,
        n_relations: int,
        dim: int = 16,
        n_layers: int = 1,
        aggregator: Literal["sum", "concat", "neighbor"] = "sum",
    ):
        super().__init__()
        if n_layers < 1:
            raise ValueError("n_layers must be >= 1")
        self.n_layers = n_layers
        self.dim = dim
        self.user_emb = nn.Embedding(n_users, dim)
        self.entity_emb = nn.Embedding(n_entities, dim)
        self.relation_emb = nn.Embedding(n_relations, dim)
        self.attention = UserRelationAttention()
        self.aggregators = nn.ModuleList(
            KGCNAggregator(dim, aggregator, last=i == n_layers - 1) for i in range(n_layers)
        )
        # KGCN's own reset: a subclass resets its extra layers at the end of its __init__.
        KGCN.reset_parameters(self)

    def reset_parameters(self) -> None:
        for table in (self.user_emb, self.entity_emb, self.relation_emb):
            nn.init.xavier_uniform_(table.weight)
        for layer in self.aggregators:
            layer.reset_parameters()

    def item_representations(self, blocks: list[dgl.DGLGraph]) -> torch.Tensor:
        """``[num_dst, d]``: ``h^{(H)}`` of ``blocks[-1]``'s destination states."""
        if len(blocks) != len(self.aggregators):
            raise ValueError(
                f"KGCN has {len(self.aggregators)} layers but got {len(blocks)} blocks"
            )
        h = self.entity_emb(blocks[0].srcdata["node"])
        for block, aggregator in zip(blocks, self.aggregators, strict=True):
            user = self.user_emb(block.dstdata["user"])
            rel = self.relation_emb(block.edata["rel"])
            neighborhood = self.attention(block, h, user, rel)
            h = aggregator(h[: block.num_dst_nodes()], neighborhood)
        return h

    @property
    def n_blocks(self) -> int:
        """How many blocks (hops) the sampler draws for this model."""
        return self.n_layers

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """``[n, d]``: ``e_u`` of ``users`` (the grid's users; MKGCN aggregates them)."""
        return self.user_emb(users)

    def entity_vectors(self, entities: torch.Tensor) -> torch.Tensor:
        """``[n, d]``: ``h^{(0)}`` of ``entities`` (MKGCN fuses modalities in)."""
        return self.entity_emb(entities)

    def score_grid(
        self,
        blocks: list[dgl.DGLGraph],
        users: torch.Tensor,
        edge_filter: GridEdgeFilter | None = None,
        cache: dict | None = None,
    ) -> torch.Tensor:
        """``[U, num_dst]`` logits of every user against every destination of ``blocks[-1]``.

        The pair path's arithmetic with the users as a batch dimension (see the module
        docstring): ``blocks`` are sampled, not conditioned (``srcdata[dgl.NID]``: the
        entities, ``edata["rel"]``); ``edge_filter(block, users)`` gives the ``[E, U]``
        edges each user keeps. Equal to :meth:`forward` on the same sampled blocks
        conditioned on every (user, item) pair (``tests/test_fast_paths.py``).

        ``cache``: a dict the caller keeps for one ranking (same blocks, same weights),
        where what does not depend on the users (each block's (destination, relation)
        groups, the first layer's source vectors and their per-group means) is
        computed on the first pass only.
        """
        if len(blocks) != len(self.aggregators):
            raise ValueError(
                f"{type(self).__name__} has {len(self.aggregators)} layers "
                f"but got {len(blocks)} blocks"
            )
        user = self.user_vectors(users)  # [U, d]
        affinity = self.relation_emb.weight @ user.T  # [n_relations, U]: e_r · e_u
        h = None if cache is None else cache.get("sources")
        if h is None:
            h = self.entity_vectors(blocks[0].srcdata[dgl.NID]).unsqueeze(-1)  # [N, d, 1]
            if cache is not None:
                cache["sources"] = h
        if len(blocks) == 1:
            return self._grid_one_layer(blocks[0], h, user, users, affinity, edge_filter, cache)
        h = self._grid_first_of_layers(blocks[0], h, users, affinity, edge_filter, cache)
        for layer in range(1, len(blocks)):
            h = self._grid_deeper_layer(
                blocks[layer], h, users, affinity, layer, edge_filter, cache, user
            )
        return h.T  # [N, U] -> [U, N]

    def _grid_one_layer(
        self,
        block: dgl.DGLGraph,
        h: torch.Tensor,
        user: torch.Tensor,
        users: torch.Tensor,
        affinity: torch.Tensor,
        edge_filter: GridEdgeFilter | None,
        cache: dict | None,
    ) -> torch.Tensor:
        """``[U, num_dst]`` logits of a one-layer grid (``h``: the ``[N, d, 1]`` sources).

        The destinations alike for every user (:meth:`_first_layer_by_class`) score
        with one matrix product; the others from their ``[n, d, U]`` states.
        """
        (alike, shared), per_user = self._first_layer_by_class(
            block, h, users, affinity, edge_filter, cache
        )
        logits = user.new_empty(len(users), block.num_dst_nodes())
        logits[:, alike] = user @ shared[..., 0].T
        for ids, out in per_user:  # [n, d, U]
            logits[:, ids] = out.mul_(user.T).sum(1).T
        return logits

    def _first_layer_by_class(
        self,
        block: dgl.DGLGraph,
        h: torch.Tensor,
        users: torch.Tensor,
        affinity: torch.Tensor,
        edge_filter: GridEdgeFilter | None,
        cache: dict | None,
    ) -> tuple[tuple, list]:
        """The first layer by destination class: ``((ids, [n, d, 1]), [(ids, [n, d, U]), ...])``.

        An edge's attention weight depends on the user only through the edge's
        relation, so a destination whose in-edges all have one relation weighs its kept
        edges equally, whoever the user (and an importance top-K keeps the same ones:
        equal scores, ties to the smaller source entity). Its output ``h^{(1)}_v`` is one
        vector, computed once per ranking (for the first user) and shared by every user.
        Only destinations with two or more relations (1,439 of Last.FM's 3,846 items
        with 8 uniform neighbours) need a ``[n, U, d]`` state per user, and of those
        only the ones an importance top-K may prune (more in-edges than K; 363 items
        with all neighbours and K = 8) need per-user kept counts: the others keep every
        edge, and aggregate by relation (:meth:`UserRelationAttention.grid_by_relation`).
        Per-user outputs are ``[n, d, U]`` (a view of ``[n, U, d]`` where kept counts pool).
        """
        cache = {} if cache is None else cache
        aggregator = self.aggregators[0]
        if ("classes", block) not in cache:
            may_prune = edge_filter.may_prune(block) if edge_filter is not None else None
            cache[("classes", block)] = _destination_classes(block, len(affinity), may_prune)
        (alike, alike_block), *classes = cache[("classes", block)]
        if ("alike_out", block) not in cache:
            first = users[:1]
            kept = edge_filter.kept_counts(alike_block, first) if edge_filter is not None else None
            cache[("alike_out", block)] = self._grid_first_layer(
                alike_block, h, alike, aggregator, affinity[:, :1], kept, cache
            )  # [n_alike, d, 1]
        per_user = []
        for (ids, part), filtered in zip(classes, (False, True), strict=True):
            if not len(ids):
                continue
            out = None
            if not filtered:
                out = self._grid_first_layer_by_relation(part, h, ids, aggregator, affinity, cache)
            if out is None:
                kept = edge_filter.kept_counts(part, users) if filtered else None
                out = self._grid_first_layer(part, h, ids, aggregator, affinity, kept, cache)
            per_user.append((ids, out))
        return (alike, cache[("alike_out", block)]), per_user

    def _grid_first_of_layers(
        self,
        block: dgl.DGLGraph,
        h: torch.Tensor,
        users: torch.Tensor,
        affinity: torch.Tensor,
        edge_filter: GridEdgeFilter | None,
        cache: dict | None,
    ) -> torch.Tensor:
        """``[num_dst, d, U]``: the first layer of a grid with more (``h``: ``[N, d, 1]``).

        Every destination as if it kept all its edges (by relation, or one pooled pass);
        then the destinations an importance top-K may prune (more in-edges than K) again,
        from each user's kept counts. Rows are not split further: a deeper layer needs all
        of them as ``[num_dst, d, U]``, and writing the alike ones there costs what
        computing them does.
        """
        cache = {} if cache is None else cache
        aggregator = self.aggregators[0]
        every = slice(0, block.num_dst_nodes())
        out = None
        if affinity.shape[1] > 1:
            out = self._grid_first_layer_by_relation(block, h, every, aggregator, affinity, cache)
        if out is None:
            out = self._grid_first_layer(block, h, every, aggregator, affinity, None, cache)
        if edge_filter is not None:
            if ("prunable", block) not in cache:
                cache[("prunable", block)] = _sub_blocks(block, (edge_filter.may_prune(block),))
            [(ids, part)] = cache[("prunable", block)]
            if len(ids):
                kept = edge_filter.kept_counts(part, users)
                out[ids] = self._grid_first_layer(part, h, ids, aggregator, affinity, kept, cache)
        return out

    def _grid_deeper_layer(
        self,
        block: dgl.DGLGraph,
        h: torch.Tensor,
        users: torch.Tensor,
        affinity: torch.Tensor,
        layer: int,
        edge_filter: GridEdgeFilter | None,
        cache: dict | None,
        user: torch.Tensor,
    ) -> torch.Tensor:
        """Layer ``layer`` (past the first) of a grid, from ``h`` (``[N, d, U]``).

        Returns ``[num_dst, d, U]``, or for the last layer the scores ``[num_dst, U]``
        (``user``: ``[U, d]``). Chunk by chunk of destinations: each chunk's
        neighbourhood (:meth:`UserRelationAttention.grid_by_groups`, or a slice of
        :meth:`_grid_neighborhoods` under an edge filter), aggregator and scores are
        finished while in the CPU's cache.
        """
        cache = {} if cache is None else cache
        aggregator, last = self.aggregators[layer], layer == len(self.aggregators) - 1
        if edge_filter is None:
            chunks = self.attention.grid_by_groups(block, h, affinity, cache)
        else:
            neighborhood = self._grid_neighborhoods(block, h, users, affinity, edge_filter, cache)
            step = max(1, BY_RELATION_CHUNK_FLOATS // math.prod(neighborhood.shape[1:]))
            chunks = (
                (start, min(start + step, len(neighborhood)), neighborhood[start : start + step])
                for start in range(0, len(neighborhood), step)
            )
        n_dst, out = block.num_dst_nodes(), None
        for start, stop, part in chunks:
            part = _grid_aggregate(aggregator, h[start:stop], part)
            if last:
                part = part.mul_(user.T).sum(1)  # [n, U]: h · e_u
            if out is None:
                out = part.new_empty(n_dst, *part.shape[1:])
            out[start:stop] = part
        if out is None:  # no destinations
            out = h.new_empty(0, len(users)) if last else h.new_empty(0, self.dim, len(users))
        return out

    def _grid_neighborhoods(
        self,
        block: dgl.DGLGraph,
        h: torch.Tensor,
        users: torch.Tensor,
        affinity: torch.Tensor,
        edge_filter: GridEdgeFilter,
        cache: dict,
    ) -> torch.Tensor:
        """``[num_dst, d, U]`` neighbourhoods of a layer past the first under an edge filter.

        Keep masks only for the destinations an importance top-K may prune (more
        in-edges than K); the others keep every edge for every user.
        """
        if ("pruning", block) not in cache:
            may_prune = edge_filter.may_prune(block)
            cache[("pruning", block)] = _sub_blocks(block, (~may_prune, may_prune))
        out = h.new_empty(block.num_dst_nodes(), h.shape[1], len(users))
        for (ids, part), filtered in zip(cache[("pruning", block)], (False, True), strict=True):
            if not len(ids):
                continue
            keep = edge_filter(part, users) if filtered else None
            out[ids] = self.attention.grid(part, h, affinity, keep, cache)
        return out

    def _grid_first_layer(
        self,
        block: dgl.DGLGraph,
        h: torch.Tensor,
        dst: torch.Tensor | slice,
        aggregator: nn.Module,
        affinity: torch.Tensor,
        kept: torch.Tensor | None,
        cache: dict | None,
    ) -> torch.Tensor:
        """``[n, m, U]``: the grid's first layer, whose sources ``h`` (``[N, d, 1]``) every
        user shares.

        ``dst``: where the block's destinations are among ``h``'s rows (their own vectors);
        ``kept``: ``[G, U]`` edges each user keeps per (destination, relation) group
        (:meth:`GridEdgeFilter.kept_counts`; all if ``None``).

        The neighbourhood is a weighted sum of sources, so the aggregator's linear map
        moves inside it: ``W_N Σ_e a_e h_e = Σ_e a_e (W_N h_e)``. Projecting the ``N``
        shared sources (and ``W_v h_v + b``) once per ranking replaces a matrix product
        over every ``[num_dst, U]`` state; what is left per state is one add and the
        activation, both in place. Equal to the aggregator's forward up to float32
        summation order (``tests/test_fast_paths.py``).
        """
        cache = {} if cache is None else cache
        own_part = self._own_part(block, h, dst, aggregator, cache)
        pre_activation = self.attention.grid_pooled(block, cache["attended"], affinity, kept, cache)
        return aggregator.activate_(pre_activation.add_(own_part))

    def _grid_first_layer_by_relation(
        self,
        block: dgl.DGLGraph,
        h: torch.Tensor,
        dst: torch.Tensor | slice,
        aggregator: nn.Module,
        affinity: torch.Tensor,
        cache: dict,
    ) -> torch.Tensor | None:
        """``[n, m, U]``: :meth:`_grid_first_layer` with every edge kept, or ``None``.

        By relation (:meth:`UserRelationAttention.grid_by_relation`): ``None`` where
        that declines. Each chunk of destinations is finished (own part, activation)
        while in cache: where the result is as wide as the pre-activation (an activation
        applied in place), in the result itself; otherwise (MGWA's gate halves the
        width) in a buffer, then copied.
        """
        own_part = self._own_part(block, h, dst, aggregator, cache)  # [n, m, 1]
        n, width, n_users = block.num_dst_nodes(), own_part.shape[1], affinity.shape[1]
        in_place = width == self.dim
        out = h.new_empty(n, width, n_users) if in_place else None
        chunks = self.attention.grid_by_relation(block, cache["attended"], affinity, cache, out)
        if chunks is None:
            return None
        for start, stop, pre_activation in chunks:
            part = aggregator.activate_(pre_activation.add_(own_part[start:stop]))
            if not in_place:
                if out is None:
                    out = part.new_empty(n, part.shape[1], n_users)
                out[start:stop] = part
        return out

    @staticmethod
    def _own_part(
        block: dgl.DGLGraph,
        h: torch.Tensor,
        dst: torch.Tensor | slice,
        aggregator: nn.Module,
        cache: dict,
    ) -> torch.Tensor:
        """``[n, m, 1]``: ``W_v h_v + b`` of ``block``'s destinations, once per ranking.

        Also keeps ``cache["attended"]``, the shared sources projected by ``W_N`` (``[N, m, 1]``).
        """
        if ("own_part", block) not in cache:
            own, neighbour, bias = aggregator.linear_parts()
            if "attended" not in cache:  # the same sources for every first-layer block of a ranking
                # [N, m, 1]; their group means are kept too
                cache["attended"] = (h[..., 0] @ neighbour.T).unsqueeze(-1)
            own_part = bias if own is None else torch.addmm(bias, h[dst][..., 0], own.T)
            cache[("own_part", block)] = own_part.view(-1, own_part.shape[-1], 1)
        return cache[("own_part", block)]

    def importance_scores(self, users: torch.Tensor, relations: torch.Tensor) -> torch.Tensor:
        """KAISG's importance ``s(u, r) = sigmoid(e_u · e_r)`` from the current tables.

        Computed in float64 and rounded once to float32: a float32 reduction rounds
        differently with the row's position in the batch, so the same ``(u, r)``
        could score differently in two places, and a top-K filter would break a tie
        by that noise rather than by source entity (nor the same way on every path).
        """
        device = self.user_emb.weight.device
        user = self.user_emb.weight[users.to(device)].double()
        relation = self.relation_emb.weight[relations.to(device)].double()
        return torch.sigmoid((user * relation).sum(-1)).float()

    def forward(self, blocks: list[dgl.DGLGraph], pair_index: torch.Tensor) -> ScoreOutput:
        item_h = self.item_representations(blocks)
        user = self.user_emb(blocks[-1].dstdata["user"])
        logits = (user * item_h).sum(-1).index_select(0, pair_index)
        # Both penalties are deferred (the trainer evaluates the one it picks; scoring none).
        return ScoreOutput(
            logits=logits,
            l2=lambda: self._matrices_l2() + self._tables_l2(),
            l2_batch=lambda: self._matrices_l2() + self._rows_l2(blocks),
        )

    def _matrices_l2(self) -> torch.Tensor:
        return half_sq(*(m.weight for m in self.aggregators.modules() if isinstance(m, nn.Linear)))

    def _tables_l2(self) -> torch.Tensor:
        return half_sq(self.user_emb.weight, self.entity_emb.weight, self.relation_emb.weight)

    def _rows_l2(self, blocks: list[dgl.DGLGraph]) -> torch.Tensor:
        """``½ Σ w²`` over the rows a batch used: its users, its states' entities, its relations."""
        used_entities = torch.unique(torch.cat([b.srcdata["node"] for b in blocks]))
        used_relations = torch.unique(torch.cat([b.edata["rel"] for b in blocks]))
        return half_sq(
            self.user_emb(torch.unique(blocks[-1].dstdata["user"])),
            self.entity_emb(used_entities),
            self.relation_emb(used_relations),
        )

    @torch.no_grad()
    def explain(self, block: dgl.DGLGraph) -> torch.Tensor:
        """``[E]`` first-hop attention ``\\tilde π^u_{r_{v,e}}`` of each edge of a user block.

        The weights with which each destination state (a user's item) averages its
        KG neighbours: what ``dglrec recommend`` reports as the reason for an item.
        """
        user = self.user_emb(block.dstdata["user"])
        rel = self.relation_emb(block.edata["rel"])
        return self.attention.edge_weights(block, user, rel)[2]

    @torch.no_grad()
    def load_kge_embeddings(
        self, entity: torch.Tensor, relation: torch.Tensor, rescale: bool = True
    ) -> None:
        """Start the entity and relation tables from pretrained ones (e.g. TransE).

        With ``rescale``, each table is scaled to the RMS of this model's own
        initialisation: directions (the KG structure) are kept, while the scale,
        which TransE fixes at unit norm, matches what the rest of the model and
        its L2 penalty were tuned for.
        """
        for table, values in ((self.entity_emb, entity), (self.relation_emb, relation)):
            if values.shape != table.weight.shape:
                raise ValueError(
                    f"pretrained table {tuple(values.shape)} != {tuple(table.weight.shape)}"
                )
            if rescale:
                values = values * (table.weight.pow(2).mean().sqrt() / values.pow(2).mean().sqrt())
            table.weight.copy_(values)
