"""Neighbourhood samplers and user-conditioned blocks.

How a batch of (user, item) pairs becomes blocks
-------------------------------------------------
KG models in the KGCN family weight each neighbour by a *user*-dependent score
π(u, r), so an item's representation depends on who asks. One DGL block per
layer over the unique items is therefore not enough: the same item seen with
two users must be aggregated twice. dglrec does it in two steps.

1. A DGL block sampler (:class:`FullNeighborSampler`, a
   :class:`dgl.dataloading.MultiLayerFullNeighborSampler`;
   :class:`FixedSizeNeighborSampler`, ...) samples ``n_layers`` blocks over the
   undirected KG for the batch's unique item entities, exactly as for any DGL
   model: ``blocks[-1]``'s destination nodes are the items, and the source nodes
   of block ``l`` are the destination nodes of block ``l - 1``.
2. :func:`condition_on_users` rewrites those blocks so that every node becomes a
   *state* ``(user, node)``. Walking from the output block down, the states of
   block ``l``'s destinations are the unique ``(user, item)`` pairs (then the
   source states of the block above); each destination state ``(u, d)`` takes
   every in-edge ``s -> d`` of the sampled block as an edge ``(u, s) -> (u, d)``
   with the same relation id. As in DGL blocks, destination states are the
   first ``num_dst_nodes`` source states, so ``h[:block.num_dst_nodes()]`` is
   the destinations' own representation.

The result is a list of ordinary DGL blocks with

* ``srcdata["node"]``/``dstdata["node"]``: global entity id of each state;
* ``srcdata["user"]``/``dstdata["user"]``: the user each state belongs to;
* ``edata["rel"]``: the relation id of each edge;

and ``pair_index`` mapping pair ``p`` of the batch to its destination state in
``blocks[-1]``. A model runs standard DGL message passing on them (edge softmax
per destination state, ``update_all``) and reads pair scores as
``score[pair_index]``. Everything is vectorised: no Python loop runs per pair,
node or edge. With ``dedup=True``, pairs that share a user and an item share one state.

With ``dedup=False`` (:class:`PairSampler`'s default, what :func:`build_sampler` gives
one-block models for scoring; the trainer conditions training batches with ``dedup=True``)
the states are *pair trees*:
pair ``p`` is destination state ``p`` of the top block and every kept edge gets a
source state of its own, so conditioning is gathers over the sampled blocks' CSC
arrays with no ``torch.unique``; ``dedup=True`` shares one state per distinct
``(user, node)``. Both give the same scores (``tests/test_fast_paths.py``).

``edge_filter`` lets a sampler prune each destination state's in-edges as the
blocks are conditioned (:class:`ImportanceTopK` keeps the K best edges for that
user); pruned edges' sources are never expanded further down.

Samplers as the recipe names them (``[sampler] kind``) are :class:`PairSampler`
objects: a DGL block sampler plus an optional edge filter built from the model's
current embeddings at every step.

Scoring draws
-------------
Scoring (eval and test metrics, the full ranking, ``dglrec recommend``) goes through
:meth:`PairSampler.for_scoring`. The uniform sampler drawn per batch
(``resample = "per_batch"``) then scores on *one* sample of ``K`` neighbours per
entity, drawn for the whole KG from the eval stream
(:class:`FixedAdjacencySampler` seeded by ``derived_seed(seed, EVAL_STREAM)``), the
same sample at every scoring pass, as KGCN's reference code scores on its fixed
adjacency: a pair's score no longer depends on the other pairs of its batch, so
scoring may batch pairs freely. Training batches still draw per batch. Every other
sampler scores as it trains.

Grid scoring: users as a batch dimension
----------------------------------------
To score ``U`` users against all items (the full ranking), conditioning is not
needed: the block sampler samples ordinary blocks once over the item entities, and
the model runs its layers on them with node features ``[N, U, d]`` and edge
attention ``[E, U, 1]``, DGL's multi-head layout (``edge_softmax`` normalises per
destination for every user, ``update_all`` broadcasts). Importance top-K then becomes
how many edges each user keeps of each (destination, relation) group, or a ``[E, U]``
keep mask per block (:class:`GridTopK`): the same edges the pair path's
:class:`ImportanceTopK` keeps for each (user, destination).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import dgl
import torch
from dgl import heterograph_index
from dgl.dataloading import BlockSampler, MultiLayerFullNeighborSampler
from dgl.frame import Frame
from dgl.heterograph import DGLBlock

from dglrec.errors import ConfigError

# (user, relation, destination state, source entity) of each candidate edge -> keep mask
EdgeFilter = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class SampledLayer(NamedTuple):
    """What :func:`condition_on_users` reads of a sampled block: its CSC arrays.

    ``indices`` and ``rel`` are in CSC order (by destination); ``src_nodes`` are the
    global ids of the block's source nodes, its ``n_dst`` destinations first.
    """

    indptr: torch.Tensor  # [n_dst + 1]
    indices: torch.Tensor  # [E] source node (block-local) of each edge
    rel: torch.Tensor  # [E] relation of each edge
    src_nodes: torch.Tensor  # [n_src] global entity id of each source node
    n_dst: int


def layer_of_block(block: dgl.DGLGraph | SampledLayer) -> SampledLayer:
    """A DGL block's :class:`SampledLayer` (a layer is returned as it is)."""
    if isinstance(block, SampledLayer):
        return block
    indptr, indices, eids = block.adj_tensors("csc")
    return SampledLayer(
        indptr, indices, block.edata["rel"][eids], block.srcdata[dgl.NID], block.num_dst_nodes()
    )


def _first_appearance(dst_nodes: torch.Tensor, src: torch.Tensor):
    """``dgl.to_block``'s numbering: ``dst_nodes`` (unique) first, then each new id of
    ``src`` in order of first appearance. Returns ``(numbered ids, local id of each src)``."""
    both = torch.cat([dst_nodes, src])
    unique, inverse = torch.unique(both, return_inverse=True)
    first = torch.full((len(unique),), len(both), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(len(both)), "amin")
    order = torch.argsort(first)
    local = torch.empty_like(order)
    local[order] = torch.arange(len(order))
    return unique[order], local[inverse[len(dst_nodes) :]]


class _CachedCSC:
    """A graph's CSC arrays ``(indptr, indices, eids)``, kept while it is the graph asked
    for: DGL rebuilds them on every ``adj_tensors`` call."""

    def __init__(self):
        self._entry: tuple[dgl.DGLGraph, tuple[torch.Tensor, ...]] | None = None

    def __call__(self, g: dgl.DGLGraph) -> tuple[torch.Tensor, ...]:
        if self._entry is None or self._entry[0] is not g:
            self._entry = g, g.adj_tensors("csc")
        return self._entry[1]


def _in_edge_slots(indptr: torch.Tensor, nodes: torch.Tensor):
    """``(slot, owner)`` of every in-edge of ``nodes`` (repeats allowed): its position in
    the CSC arrays and the position of its node in ``nodes``; node after node, each
    node's edges in CSC order."""
    start = indptr[nodes]
    degree = indptr[nodes + 1] - start
    owner = torch.repeat_interleave(torch.arange(len(nodes)), degree)
    first = torch.cumsum(degree, 0) - degree
    return start[owner] + torch.arange(len(owner)) - first[owner], owner


def block_in_order(g: dgl.DGLGraph, eids: torch.Tensor, seeds: torch.Tensor) -> dgl.DGLGraph:
    """The block of ``g``'s edges ``eids`` into ``seeds`` (unique), numbered the same way every run.

    What ``dgl.to_block`` makes of the subgraph of those edges with one thread: the
    edges in the order given, ``seeds`` first among the source nodes, then each new
    source in order of first appearance (:func:`_first_appearance`); ``NID`` on both
    sides, ``EID`` = ``eids`` and ``g``'s edge data. With more than one thread, DGL 2.1's
    ``to_block`` numbers the sources through a concurrent hash map, in an order that
    changes from run to run; two hops down, that order is the order of a sum (two fits
    of two-hop KAISG, one seed, 2 threads, differed after one epoch).
    ``tests/test_determinism.py`` compares the two.
    """
    src, dst = g.find_edges(eids)
    src_nodes, src_local = _first_appearance(seeds, src)
    by_id = torch.argsort(seeds)
    dst_local = by_id[torch.searchsorted(seeds[by_id], dst)]
    edata = {key: value[eids] for key, value in g.edata.items()}
    edata[dgl.EID] = eids
    return block_from_edges(src_local, dst_local, {dgl.NID: src_nodes}, {dgl.NID: seeds}, edata)


def in_edges_in_order(csc: tuple[torch.Tensor, ...], seeds: torch.Tensor) -> torch.Tensor:
    """Edge ids into ``seeds`` of the graph whose CSC arrays are ``csc``: seed after seed,
    each seed's in CSC order."""
    indptr, _, eids = csc
    return eids[_in_edge_slots(indptr, seeds)[0]]


class FullNeighborSampler(MultiLayerFullNeighborSampler):
    """DGL's all-neighbour sampler, with blocks numbered the same way in every run.

    Every in-edge of every seed, seed after seed in CSC order, made a block by
    :func:`block_in_order`. DGL's own, with more than one thread, samples through its
    fused path and numbers source nodes in a run-dependent order, and draws the order
    of each node's edges from its generator.
    """

    def __init__(self, n_layers: int):
        super().__init__(n_layers)
        self.n_layers = n_layers
        self._csc_of = _CachedCSC()

    def sample_blocks(self, g, seed_nodes, exclude_eids=None):
        if exclude_eids is not None:
            raise ValueError("FullNeighborSampler excludes no edges")
        output_nodes, blocks = seed_nodes, []
        for _ in range(self.n_layers):
            block = block_in_order(g, in_edges_in_order(self._csc_of(g), seed_nodes), seed_nodes)
            seed_nodes = block.srcdata[dgl.NID]
            blocks.insert(0, block)
        return seed_nodes, output_nodes, blocks


class FixedSizeNeighborSampler(BlockSampler):
    """KGCN's fixed-size uniform neighbourhood: exactly ``K`` in-edges per node.

    A node with at least ``K`` in-neighbours gets ``K`` of them drawn without
    replacement; one with fewer gets ``K`` draws with replacement (KGCN's rule, so
    low-degree nodes still receive ``K`` messages); an isolated node gets none.
    Edge data (``rel``) is carried into the blocks.

    The draws use torch's global generator (seeded by the trainer), not DGL's
    per-thread generators, whose streams depend on the number of OpenMP threads:
    a seed gives the same sample on any machine and thread count.

    Args:
        n_neighbors: ``K``.
        n_layers: number of blocks (hops).
    """

    def __init__(self, n_neighbors: int, n_layers: int):
        super().__init__()
        if n_neighbors < 1 or n_layers < 1:
            raise ValueError("n_neighbors and n_layers must be >= 1")
        self.n_neighbors = n_neighbors
        self.n_layers = n_layers
        self._csc_of = _CachedCSC()

    def sample_edges(self, g: dgl.DGLGraph, seeds: torch.Tensor) -> torch.Tensor:
        """Edge ids of ``g`` drawn for ``seeds``: ``K`` per seed with in-edges."""
        slot, _ = self._draw(g, seeds)
        return self._csc_of(g)[2][slot]

    def _draw(self, g: dgl.DGLGraph, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(slot, seed_index)`` of every drawn edge: its position in ``g``'s CSC arrays
        and the position of its destination in ``seeds``; rich seeds' edges first."""
        k = self.n_neighbors
        indptr = self._csc_of(g)[0]
        start = indptr[seeds]
        degree = indptr[seeds + 1] - start
        rich = degree >= k
        poor = (degree > 0) & ~rich
        # Without replacement: a random key per candidate edge, keep each node's k smallest.
        rich_start, rich_degree = start[rich], degree[rich]
        segment = torch.repeat_interleave(torch.arange(len(rich_start)), rich_degree)
        first = torch.cumsum(rich_degree, 0) - rich_degree
        order = torch.argsort(segment.double() + torch.rand(len(segment), dtype=torch.float64))
        rank = torch.arange(len(segment)) - first[segment]  # position after sorting
        slot = rich_start[segment] + (order - first[segment])
        kept = rank < k
        chosen_rich, rich_seed = slot[kept], torch.nonzero(rich, as_tuple=True)[0][segment[kept]]
        # With replacement: k uniform offsets into each node's in-edges.
        poor_start, poor_degree = start[poor], degree[poor]
        offsets = (torch.rand(len(poor_start), k) * poor_degree[:, None]).long()
        chosen_poor = (poor_start[:, None] + offsets).reshape(-1)
        poor_seed = torch.nonzero(poor, as_tuple=True)[0].repeat_interleave(k)
        return torch.cat([chosen_rich, chosen_poor]), torch.cat([rich_seed, poor_seed])

    def sample_layers(self, g: dgl.DGLGraph, seed_nodes: torch.Tensor) -> list[SampledLayer]:
        """The blocks :meth:`sample_blocks` draws, as CSC arrays, without building graphs.

        Same draws, same node numbering and edge order as the DGL blocks (``dgl.to_block``'s:
        destinations first, then sources by first appearance in draw order; CSC edges
        stable by destination), so :func:`condition_on_users` gives identical blocks from
        either. Training batches take this path: their sampled blocks are only read once,
        by the conditioning, and building them as DGL graphs was a third of a batch.
        """
        indptr, indices, eids = self._csc_of(g)
        rel = g.edata["rel"]
        layers: list[SampledLayer] = []
        for _ in range(self.n_layers):
            slot, seed_index = self._draw(g, seed_nodes)
            src_nodes, src_local = _first_appearance(seed_nodes, indices[slot])
            order = torch.argsort(seed_index, stable=True)
            counts = torch.bincount(seed_index, minlength=len(seed_nodes))
            layers.insert(
                0,
                SampledLayer(
                    indptr=torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)]),
                    indices=src_local[order],
                    rel=rel[eids[slot[order]]],
                    src_nodes=src_nodes,
                    n_dst=len(seed_nodes),
                ),
            )
            seed_nodes = src_nodes
        return layers

    def sample_blocks(self, g, seed_nodes, exclude_eids=None):
        output_nodes = seed_nodes
        blocks = []
        for _ in range(self.n_layers):
            block = block_in_order(g, self.sample_edges(g, seed_nodes), seed_nodes)
            seed_nodes = block.srcdata[dgl.NID]
            blocks.insert(0, block)
        return seed_nodes, output_nodes, blocks


class FixedAdjacencySampler(BlockSampler):
    """KGCN's reference adjacency: every entity's ``K`` neighbours drawn once per run.

    On first use, :meth:`FixedSizeNeighborSampler.sample_edges` draws ``K`` in-edges of
    every node of the KG (same rule: without replacement where the degree allows,
    with replacement below it) from a generator seeded by ``seed``; every batch then
    takes all of its nodes' fixed edges. The draws do not touch the global RNG, so
    the rest of the run's randomness is the same as with per-batch sampling.

    Args:
        n_neighbors: ``K``.
        n_layers: number of blocks (hops).
        seed: fixes the adjacency (``derived_seed(run seed, ADJACENCY_STREAM)``).
    """

    def __init__(self, n_neighbors: int, n_layers: int, seed: int):
        super().__init__()
        self.uniform = FixedSizeNeighborSampler(n_neighbors, n_layers)
        self.n_layers = n_layers
        self.seed = seed
        self._graph: dgl.DGLGraph | None = None
        self._source: dgl.DGLGraph | None = None
        self._fixed_csc_of = _CachedCSC()

    def fixed_graph(self, g: dgl.DGLGraph) -> dgl.DGLGraph:
        """The K-regular subgraph of ``g`` kept for the run (``g``'s edge ids in ``EID``)."""
        if self._source is not g:
            with torch.random.fork_rng():
                torch.manual_seed(self.seed)
                eids = self.uniform.sample_edges(g, torch.arange(g.num_nodes()))
            src, dst = g.find_edges(eids)
            fixed = dgl.graph((src, dst), num_nodes=g.num_nodes())
            for key, value in g.edata.items():
                fixed.edata[key] = value[eids]
            fixed.edata[dgl.EID] = eids
            self._graph, self._source = fixed, g
        return self._graph

    def sample_blocks(self, g, seed_nodes, exclude_eids=None):
        fixed = self.fixed_graph(g)
        output_nodes, blocks = seed_nodes, []
        for _ in range(self.n_layers):
            in_fixed = in_edges_in_order(self._fixed_csc_of(fixed), seed_nodes)
            block = block_in_order(fixed, in_fixed, seed_nodes)
            block.edata[dgl.EID] = fixed.edata[dgl.EID][in_fixed]  # the KG's edge ids
            seed_nodes = block.srcdata[dgl.NID]
            blocks.insert(0, block)
        return seed_nodes, output_nodes, blocks


def top_k_per_group(
    group: torch.Tensor, score: torch.Tensor, tie: torch.Tensor, k: int
) -> torch.Tensor:
    """Mask of the ``k`` highest-``score`` members of each group; ties go to the smaller ``tie``.

    Three stable sorts (by ``tie``, then ``-score``, then ``group``) order each group
    best first; members whose rank in their group is below ``k`` are kept.
    """
    order = torch.argsort(tie, stable=True)
    order = order[torch.argsort(-score[order], stable=True)]
    order = order[torch.argsort(group[order], stable=True)]
    sorted_group = group[order]
    size = torch.bincount(sorted_group)
    first = torch.cumsum(size, 0) - size
    rank = torch.arange(len(order), device=order.device) - first[sorted_group]
    keep = torch.zeros(len(order), dtype=torch.bool, device=order.device)
    keep[order[rank < k]] = True
    return keep


class ImportanceTopK:
    """Edge filter keeping, per (user, destination) state, the ``k`` in-edges of highest importance.

    Importance is the model's ``importance_scores(users, relations)`` (KAISG's
    ``s(u, r) = sigmoid(e_u · e_r)``) of the state's user and the edge's relation,
    read from the model at call time (no gradient). Ties, frequent since
    the score depends on the relation only, go to the neighbour with the smaller
    entity id; a node with fewer than ``k`` neighbours keeps them all.
    """

    def __init__(self, k: int, model: torch.nn.Module):
        if k < 1:
            raise ValueError("k must be >= 1")
        self.k = k
        self.model = model

    @torch.no_grad()
    def __call__(self, users, relations, dst_state, src_entity) -> torch.Tensor:
        score = self.model.importance_scores(users, relations).cpu()
        return top_k_per_group(dst_state, score, src_entity, self.k)


class RelationGroups(NamedTuple):
    """A block's edges in (destination, relation) groups, numbered in that order.

    The edges of one group share their attention weight for every user and, under
    importance top-K, their score: whatever the user, a group keeps a *prefix* of its
    edges in rank order (by source entity, then edge id, the top-K's tie-break).
    """

    group: torch.Tensor  # [E] each edge's group
    position: torch.Tensor  # [E] the edge's rank in its group
    ranked: torch.Tensor  # [E] edge ids, group after group, each group in rank order
    size: torch.Tensor  # [G] edges per group
    dst: torch.Tensor  # [G] each group's destination (groups are sorted by it)
    rel: torch.Tensor  # [G] each group's relation


def relation_groups(block: dgl.DGLGraph) -> RelationGroups:
    """The (destination, relation) groups of ``block``'s edges (see :class:`RelationGroups`)."""
    src, dst = block.edges(order="eid")
    rel = block.edata["rel"]
    n_rel = int(rel.max()) + 1 if len(rel) else 1
    keys, group = torch.unique(dst * n_rel + rel, return_inverse=True)  # sorted by dst
    ranked = torch.argsort(block.srcdata[dgl.NID][src], stable=True)
    ranked = ranked[torch.argsort(group[ranked], stable=True)]
    size = torch.bincount(group, minlength=len(keys))
    first = torch.cumsum(size, 0) - size
    position = torch.empty_like(ranked)
    position[ranked] = torch.arange(len(ranked), device=ranked.device) - first[group[ranked]]
    return RelationGroups(group, position, ranked, size, keys // n_rel, keys % n_rel)


class _BlockRanks(NamedTuple):
    """What :class:`GridTopK` needs of a block, whoever the users."""

    groups: RelationGroups
    rel: torch.Tensor  # [E] relation of each edge
    src_entity: torch.Tensor  # [E] entity of each edge's source (the tie-break)
    mine: torch.Tensor  # [P] with other: every ordered pair of groups at one destination
    other: torch.Tensor  # [P]
    by_dst: torch.Tensor  # [E] edge ids sorted by destination
    dst_first: torch.Tensor  # [num_dst] where each destination's edges start in by_dst
    in_degree: torch.Tensor  # [num_dst]


class GridTopK:
    """:class:`ImportanceTopK` for every user of a grid at once.

    The ``k`` in-edges of highest ``s(u, r)`` per (user, destination), ties to the
    smaller source entity, as the pair path keeps them; given as how many edges each
    user keeps of each (destination, relation) group (:meth:`kept_counts`, a prefix of
    the group: :class:`RelationGroups`) or as ``[E, U]`` keep masks (:meth:`__call__`).

    Why no sort per user: ``s(u, r)`` depends on the relation only, so an edge's rank
    at its destination is the number of edges of relations that ``u`` scores higher,
    plus its rank by source entity among the edges of its own relation (the second
    term does not depend on ``u``, and is computed once per block). The first is a sum
    over the few (relation, relation) pairs that meet at a destination. Where two
    relations of exactly equal score for a user meet at a destination (the tie-break by
    source entity then crosses relations), that (user, destination) is ranked edge by
    edge by :func:`top_k_per_group` instead, exactly as the pair path.
    """

    def __init__(self, k: int, model: torch.nn.Module):
        if k < 1:
            raise ValueError("k must be >= 1")
        self.k = k
        self.model = model
        self._ranks: dict[int, tuple[dgl.DGLGraph, _BlockRanks]] = {}  # by id(block)

    @staticmethod
    def _block_ranks(block: dgl.DGLGraph) -> _BlockRanks:
        src, dst = block.edges(order="eid")
        groups = relation_groups(block)
        # Pair each group with every group of its destination (itself included).
        at_dst = torch.bincount(groups.dst)
        first_at_dst = (torch.cumsum(at_dst, 0) - at_dst)[groups.dst]  # [G] first group there
        per_dst = at_dst[groups.dst]  # [G] groups at the group's destination
        mine = torch.repeat_interleave(torch.arange(len(per_dst), device=dst.device), per_dst)
        start = torch.cumsum(per_dst, 0) - per_dst
        other = first_at_dst[mine] + torch.arange(len(mine), device=dst.device) - start[mine]
        src_entity = block.srcdata[dgl.NID][src]
        in_degree = torch.bincount(dst, minlength=block.num_dst_nodes())
        by_dst = torch.argsort(dst, stable=True)
        dst_first = torch.cumsum(in_degree, 0) - in_degree
        return _BlockRanks(
            groups, block.edata["rel"], src_entity, mine, other, by_dst, dst_first, in_degree
        )

    def may_prune(self, block: dgl.DGLGraph) -> torch.Tensor:
        """``[num_dst]`` bool: destinations with more than ``k`` in-edges (the others keep all)."""
        return block.in_degrees() > self.k

    @torch.no_grad()
    def kept_counts(self, block: dgl.DGLGraph, users: torch.Tensor) -> torch.Tensor:
        """``[G, U]``: edges ``users[u]`` keeps of each group of ``relation_groups(block)``.

        The kept edges of a group are its first ones in rank order.
        """
        if id(block) not in self._ranks:
            self._ranks[id(block)] = block, self._block_ranks(block)
        r = self._ranks[id(block)][1]
        groups = r.groups
        n_users, n_rel = len(users), int(groups.rel.max()) + 1 if len(groups.rel) else 1
        score = self.model.importance_scores(
            users.repeat_interleave(n_rel), torch.arange(n_rel, device=users.device).repeat(n_users)
        )
        score = score.view(n_users, n_rel).T.to(r.rel.device)  # [n_rel, U]
        group_score = score[groups.rel]  # [G, U]
        # Edges ahead of each group's: those of the groups at its destination scored higher.
        # (index_select, not [] indexing: several times faster for these short rows.)
        other_score = torch.index_select(group_score, 0, r.other)  # [P, U]
        my_score = torch.index_select(group_score, 0, r.mine)
        # Counts in float32 (exact below 2^24): its index_add_ is vectorised, int64's is not.
        size = groups.size.to(torch.float32)
        higher = (other_score > my_score).to(torch.float32).mul_(size[r.other, None])
        ahead = torch.zeros_like(group_score, dtype=torch.float32).index_add_(0, r.mine, higher)
        kept = torch.minimum((self.k - ahead).clamp_(min=0), size[:, None]).long()  # [G, U]
        # Two relations of exactly equal score that meet at a destination (float32 ties are
        # common where the sigmoid saturates): the tie-break by source entity crosses them.
        tied = (other_score == my_score) & (r.other != r.mine)[:, None]  # [P, U]
        pair, user = torch.nonzero(tied, as_tuple=True)
        if len(pair):  # there, rank (score, source entity) over the destination's edges
            n_dst = block.num_dst_nodes()
            redo = torch.unique(user * n_dst + groups.dst[r.mine[pair]])  # (user, destination)
            redo_user, redo_dst = redo // n_dst, redo % n_dst
            degree = r.in_degree[redo_dst]
            which = torch.repeat_interleave(torch.arange(len(redo), device=redo.device), degree)
            first = torch.cumsum(degree, 0) - degree
            offset = torch.arange(len(which), device=redo.device) - first[which]
            edge = r.by_dst[r.dst_first[redo_dst][which] + offset]  # their edges
            edge_user = redo_user[which]
            keep = top_k_per_group(which, score[r.rel[edge], edge_user], r.src_entity[edge], self.k)
            edge_group = groups.group[edge]
            kept[edge_group, edge_user] = 0  # every group there has an edge in the redo
            kept.index_put_((edge_group, edge_user), keep.long(), accumulate=True)
        return kept

    def __call__(self, block: dgl.DGLGraph, users: torch.Tensor) -> torch.Tensor:
        """``[E, U]`` bool: edge ``e`` kept for ``users[u]``."""
        kept = self.kept_counts(block, users)
        groups = self._ranks[id(block)][1].groups
        return groups.position[:, None] < kept[groups.group]


class PairSampler:
    """What ``[sampler] kind`` names: pairs -> :class:`PairBatch`.

    Args:
        block_sampler: the DGL block sampler over the KG; ``None`` for models that
            need no KG blocks (batches then carry only users, items and labels).
        importance_k: if set, prune every state's in-edges to the top-k by
            importance for its user (:class:`ImportanceTopK`).
        dedup: how batches are conditioned (:func:`condition_on_users`).
    """

    def __init__(
        self,
        block_sampler: BlockSampler | None,
        importance_k: int | None = None,
        dedup: bool = False,
    ):
        self.block_sampler = block_sampler
        self.importance_k = importance_k
        self.dedup = dedup
        self._scoring_adjacency: FixedAdjacencySampler | None = None

    @property
    def deterministic(self) -> bool:
        """Whether a pair's blocks are the same whatever else is in its batch.

        True without KG blocks, for all-neighbour sampling (with or without the
        importance filter, a function of the pair's user only) and for a fixed
        adjacency; False for the per-batch uniform sampler, whose draws depend on the
        batch's unique items and the generator's state. Always true of
        :meth:`for_scoring`'s sampler.
        """
        return self.block_sampler is None or isinstance(
            self.block_sampler, MultiLayerFullNeighborSampler | FixedAdjacencySampler
        )

    def for_scoring(self, seed: int) -> PairSampler:
        """The sampler that scores pairs (see "Scoring draws" in the module docstring).

        ``self`` unless it draws uniform neighbours per batch; then the same sampler over
        one ``K``-neighbour sample of every entity, drawn with ``seed``
        (``derived_seed(run seed, EVAL_STREAM)``), kept while ``seed`` is the same.
        """
        if not isinstance(self.block_sampler, FixedSizeNeighborSampler):
            return self
        cached = self._scoring_adjacency
        if cached is None or cached.seed != seed:
            uniform = self.block_sampler
            cached = FixedAdjacencySampler(uniform.n_neighbors, uniform.n_layers, seed)
            self._scoring_adjacency = cached
        return PairSampler(cached, self.importance_k, self.dedup)

    def grid_edge_filter(self, model: torch.nn.Module) -> GridTopK | None:
        """The per-(user, edge) keep masks of grid scoring; ``None``: every edge is kept."""
        return None if self.importance_k is None else GridTopK(self.importance_k, model)

    def scoring_batch_size(self, batch_size: int) -> int:
        """Pairs per batch when only scoring: ``batch_size`` unless the batching cannot matter.

        On the fast path (``dedup=False``) with a :attr:`deterministic` sampler, scores do
        not depend on how pairs are batched, so scoring (evaluation, full ranking) takes
        :data:`SCORING_BATCH` pairs at a time: fewer, larger blocks, same logits.
        """
        if self.dedup or not self.deterministic:
            return batch_size
        return max(batch_size, SCORING_BATCH)

    def sample(
        self,
        kg: dgl.DGLGraph,
        pairs: torch.Tensor,
        item_entity: torch.Tensor,
        model: torch.nn.Module | None = None,
        dedup: bool | None = None,
    ) -> PairBatch:
        """Blocks for ``pairs``; ``dedup`` (default: :attr:`dedup`) as in condition_on_users."""
        dedup = self.dedup if dedup is None else dedup
        if self.block_sampler is None:  # models that score (user, item) without the KG
            users, items, labels = pairs.unbind(1)
            return PairBatch(users, items, labels.float(), [], torch.arange(len(pairs)))
        edge_filter = None
        if self.importance_k is not None:
            edge_filter = ImportanceTopK(self.importance_k, model)
        return make_pair_batch(kg, self.block_sampler, pairs, item_entity, edge_filter, dedup=dedup)


SAMPLER_KINDS = ("uniform", "full", "importance_topk")
# Pairs per scoring batch where batching cannot change the scores (PairSampler.scoring_batch_size).
SCORING_BATCH = 65536


def build_sampler(
    kind: str,
    n_layers: int,
    n_neighbors: int,
    model=None,
    resample: str = "per_batch",
    seed: int = 0,
) -> PairSampler:
    """The sampler named by ``[sampler] kind`` (and ``resample``).

    * ``uniform``: KGCN's fixed-size sample (:class:`FixedSizeNeighborSampler`), drawn
      per batch, or once per run with ``resample = "fixed"``
      (:class:`FixedAdjacencySampler`, seeded by ``seed``);
    * ``full``: all neighbours (:class:`FullNeighborSampler`);
    * ``importance_topk``: all neighbours, then per user the ``n_neighbors`` most
      important (KAISG); needs a model that declares ``importance_sampling``.
    """
    # Pair trees for one hop; from two hops on they repeat (user, node) states so often
    # (1 + K + K² per pair, more with all neighbours) that deduplicating is faster and
    # smaller (benchmarks/fast_kg.py: two-hop KAISG ranking 2x slower, 1.6 GB, as trees).
    dedup = n_layers > 1
    if kind == "full":
        return PairSampler(FullNeighborSampler(n_layers), dedup=dedup)
    if kind == "uniform" and resample == "fixed":
        return PairSampler(FixedAdjacencySampler(n_neighbors, n_layers, seed), dedup=dedup)
    if kind == "uniform":
        return PairSampler(FixedSizeNeighborSampler(n_neighbors, n_layers), dedup=dedup)
    if kind == "importance_topk":
        if model is not None and not model.capabilities.importance_sampling:
            raise ConfigError(
                f"sampler.kind: 'importance_topk' needs a model that scores the importance "
                f"of (user, relation); {type(model).__name__} does not"
            )
        return PairSampler(FullNeighborSampler(n_layers), importance_k=n_neighbors, dedup=dedup)
    raise ConfigError(
        f"sampler.kind: unknown sampler {kind!r}; allowed: {', '.join(SAMPLER_KINDS)}"
    )


def _unique_dst_first(dst_keys: torch.Tensor, edge_keys: torch.Tensor):
    """Unique keys with ``dst_keys`` (already unique) first, in their order.

    Returns ``(keys of the new states, state index of each edge key)``.
    """
    keys, inverse = torch.unique(torch.cat([dst_keys, edge_keys]), return_inverse=True)
    n_dst = len(dst_keys)
    is_dst = torch.zeros(len(keys), dtype=torch.bool)
    is_dst[inverse[:n_dst]] = True
    order = torch.cat([inverse[:n_dst], torch.nonzero(~is_dst, as_tuple=True)[0]])
    new_id = torch.empty_like(order)
    new_id[order] = torch.arange(len(order))
    return keys[order], new_id[inverse[n_dst:]]


def block_from_edges(
    src: torch.Tensor,
    dst: torch.Tensor,
    srcdata: dict[str, torch.Tensor],
    dstdata: dict[str, torch.Tensor],
    edata: dict[str, torch.Tensor],
) -> dgl.DGLGraph:
    """The DGL block ``dgl.create_block((src, dst), ...)`` with these data fields, built directly.

    Node counts are the data fields' lengths. The same graph (edge ids in ``(src, dst)``
    order, every sparse format allowed) from DGL's own constructors: its graph index
    from the COO arrays and a :class:`dgl.heterograph.DGLBlock` with the fields' frames.
    Why not ``dgl.create_block`` and five assignments: they validate ids and dtypes and
    update frames field by field, about 0.45 ms a training batch (a tenth of a KGCN
    step) where this takes 0.06 ms. Ids must be valid and ``int64``: conditioning makes
    them so (``tests/test_sampling.py`` compares the two constructions).
    """
    n_src, n_dst = len(next(iter(srcdata.values()))), len(next(iter(dstdata.values())))
    index = heterograph_index.create_unitgraph_from_coo(
        2, n_src, n_dst, src, dst, ["coo", "csr", "csc"]
    )
    frames = [Frame(srcdata, num_rows=n_src), Frame(dstdata, num_rows=n_dst)]
    return DGLBlock(index, (["_N"], ["_N"]), ["_E"], frames, [Frame(edata, num_rows=len(src))])


def condition_on_users(
    blocks: list[dgl.DGLGraph] | list[SampledLayer],
    pair_users: torch.Tensor,
    pair_seed_pos: torch.Tensor,
    edge_filter: EdgeFilter | None = None,
    dedup: bool = True,
) -> tuple[list[dgl.DGLGraph], torch.Tensor]:
    """Rewrite sampled blocks into user-conditioned blocks (see the module docstring).

    Args:
        blocks: blocks from a DGL block sampler, input side first, or their
            :class:`SampledLayer` arrays (:meth:`FixedSizeNeighborSampler.sample_layers`).
        pair_users: ``[n_pairs]`` user of each pair.
        pair_seed_pos: ``[n_pairs]`` position of each pair's item among
            ``blocks[-1]``'s destination nodes.
        edge_filter: optional pruning of candidate edges per destination state.
        dedup: ``True``: one state per distinct ``(user, node)`` (pairs and edges that
            reach the same node for the same user share it; found with ``torch.unique``,
            a sort per layer). ``False``: the *pair trees*: pair ``p`` is destination
            state ``p`` of the top block, and every kept edge of a destination state
            gets a source state of its own, after the destination states
            (``src = [dst states, one per edge in edge order]``). No sort and no search:
            the states are plain gathers of the sampled blocks' CSC arrays. A state's
            value depends only on its ``(user, node)`` and the sampled block below, so
            both give the same scores; the trees repeat states that ``dedup`` shares
            (the price, for a batch of few users over many items and many hops).

    Returns:
        ``(conditioned blocks, pair_index)`` with ``pair_index`` of shape ``[n_pairs]``.
    """
    layers = [layer_of_block(b) for b in blocks]
    n_top = layers[-1].n_dst
    if dedup:
        keys, pair_index = torch.unique(pair_users * n_top + pair_seed_pos, return_inverse=True)
        state_user, state_node = keys // n_top, keys % n_top
    else:
        pair_index = torch.arange(len(pair_users))
        state_user, state_node = pair_users, pair_seed_pos
    conditioned = []
    for layer in reversed(layers):
        indptr, indices = layer.indptr, layer.indices
        n_src = len(layer.src_nodes)
        n_states = len(state_node)
        # Expand each destination state into the in-edges of its node.
        slot, edge_state = _in_edge_slots(indptr, state_node)
        edge_src, edge_rel = indices[slot], layer.rel[slot]
        if edge_filter is not None:
            src_entity = layer.src_nodes[edge_src]
            keep = edge_filter(state_user[edge_state], edge_rel, edge_state, src_entity)
            edge_state, edge_src, edge_rel = edge_state[keep], edge_src[keep], edge_rel[keep]
        # Source states: destination states first (self features), then new ones.
        if dedup:
            src_keys, edge_src_state = _unique_dst_first(
                state_user * n_src + state_node, state_user[edge_state] * n_src + edge_src
            )
            src_user, src_node = src_keys // n_src, src_keys % n_src
        else:
            edge_src_state = n_states + torch.arange(len(edge_state))
            src_user = torch.cat([state_user, state_user[edge_state]])
            src_node = torch.cat([state_node, edge_src])
        global_src = layer.src_nodes[src_node]
        cblock = block_from_edges(
            edge_src_state,
            edge_state,
            {"node": global_src, "user": src_user},
            {"node": global_src[:n_states], "user": src_user[:n_states]},
            {"rel": edge_rel},
        )
        conditioned.insert(0, cblock)
        state_user, state_node = src_user, src_node
    return conditioned, pair_index


@dataclass
class PairBatch:
    """A batch of labelled (user, item) pairs with their conditioned blocks."""

    users: torch.Tensor
    items: torch.Tensor
    labels: torch.Tensor
    blocks: list[dgl.DGLGraph]
    pair_index: torch.Tensor

    def to(self, device: torch.device | str) -> PairBatch:
        return PairBatch(
            self.users.to(device),
            self.items.to(device),
            self.labels.to(device),
            [b.to(device) for b in self.blocks],
            self.pair_index.to(device),
        )


def make_pair_batch(
    kg: dgl.DGLGraph,
    sampler: BlockSampler,
    pairs: torch.Tensor,
    item_entity: torch.Tensor,
    edge_filter: EdgeFilter | None = None,
    dedup: bool = True,
) -> PairBatch:
    """Sample and condition the blocks for ``pairs`` (``[n, 3]``: user, item, label).

    ``dedup`` as in :func:`condition_on_users`; the sampler draws the same blocks either way.
    """
    users, items, labels = pairs[:, 0], pairs[:, 1], pairs[:, 2]
    seeds, seed_pos = torch.unique(item_entity[items], return_inverse=True)
    if isinstance(sampler, FixedSizeNeighborSampler):
        blocks = sampler.sample_layers(kg, seeds)
    else:
        _, _, blocks = sampler.sample(kg, seeds)
    cblocks, pair_index = condition_on_users(blocks, users, seed_pos, edge_filter, dedup)
    return PairBatch(users, items, labels.float(), cblocks, pair_index)
