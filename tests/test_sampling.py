"""Samplers and user-conditioned blocks on hand-built graphs."""

import dgl
import pytest
import torch
from dgl.dataloading import MultiLayerFullNeighborSampler

from dglrec.sampling.blocks import (
    FixedSizeNeighborSampler,
    block_from_edges,
    condition_on_users,
    make_pair_batch,
)


def hand_kg() -> dgl.DGLGraph:
    """Entity 0 <- {2 (rel 0), 3 (rel 1)}; 1 <- {3 (rel 2), 4 (rel 0), 5 (rel 1)};
    3 <- {5 (rel 1)}; 2 and 4 have no in-edges; 5 <- {0 (rel 2)}."""
    src = torch.tensor([2, 3, 3, 4, 5, 5, 0])
    dst = torch.tensor([0, 0, 1, 1, 1, 3, 5])
    g = dgl.graph((src, dst), num_nodes=6)
    g.edata["rel"] = torch.tensor([0, 1, 2, 0, 1, 1, 2])
    return g


def in_neighbors(g, node):
    src, _, eid = g.in_edges(node, form="all")
    return sorted(zip(src.tolist(), g.edata["rel"][eid].tolist(), strict=True))


def test_fixed_size_sampler_gives_k_edges_per_node():
    g = hand_kg()
    sampler = FixedSizeNeighborSampler(n_neighbors=2, n_layers=1)
    torch.manual_seed(0)
    _, _, (block,) = sampler.sample(g, torch.tensor([0, 1, 2, 3]))
    in_deg = block.in_degrees()
    # deg 2 -> 2 (without replacement), deg 3 -> 2, deg 0 -> 0, deg 1 -> 2 (with replacement)
    assert in_deg.tolist() == [2, 2, 0, 2]
    src, dst = block.edges()
    global_src = block.srcdata[dgl.NID][src]
    global_dst = block.dstdata[dgl.NID][dst]
    for s, d in zip(global_src.tolist(), global_dst.tolist(), strict=True):
        assert g.has_edges_between(s, d)
    # Node 0 has exactly 2 in-neighbours: sampled without replacement, it keeps both.
    assert sorted(global_src[global_dst == 0].tolist()) == [2, 3]
    # Node 3 has one in-neighbour, drawn twice.
    assert global_src[global_dst == 3].tolist() == [5, 5]
    # Relation ids travel with the edges.
    assert torch.equal(block.edata["rel"], g.edata["rel"][block.edata[dgl.EID]])


def test_fixed_size_sampler_is_seeded():
    g = hand_kg()
    sampler = FixedSizeNeighborSampler(n_neighbors=2, n_layers=2)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        _, _, blocks = sampler.sample(g, torch.tensor([1]))
        runs.append([b.edata[dgl.EID].tolist() for b in blocks])
    assert runs[0] == runs[1]


def test_fixed_size_sampler_is_uniform_without_replacement():
    g = hand_kg()  # entity 1 has in-neighbours 3, 4, 5
    sampler = FixedSizeNeighborSampler(n_neighbors=2, n_layers=1)
    torch.manual_seed(0)
    counts = torch.zeros(6)
    n_draws = 3000
    for _ in range(n_draws):
        picked = g.find_edges(sampler.sample_edges(g, torch.tensor([1])))[0]
        assert len(set(picked.tolist())) == 2  # never the same edge twice
        counts[picked] += 1
    # Each of the 3 neighbours is in a 2-subset with probability 2/3 (±4 sd).
    expected, sd = n_draws * 2 / 3, (n_draws * 2 / 9) ** 0.5
    assert torch.all((counts[[3, 4, 5]] - expected).abs() < 4 * sd), counts
    assert counts[[0, 1, 2]].sum() == 0


@pytest.mark.parametrize("n_layers", [1, 2])
def test_conditioned_blocks_expand_every_state(n_layers):
    g = hand_kg()
    _, _, blocks = MultiLayerFullNeighborSampler(n_layers).sample(g, torch.tensor([0, 1]))
    users = torch.tensor([0, 1, 0, 0, 1])
    seed_pos = torch.tensor([0, 0, 1, 0, 1])  # (0,e0) (1,e0) (0,e1) (0,e0) (1,e1)
    cblocks, pair_index = condition_on_users(blocks, users, seed_pos)
    top = cblocks[-1]
    assert top.num_dst_nodes() == 4  # duplicate pair (0, e0) shares one state
    assert pair_index[0] == pair_index[3]
    assert len(set(pair_index.tolist())) == 4
    assert torch.equal(top.dstdata["user"][pair_index], users)
    assert torch.equal(top.dstdata["node"][pair_index], seed_pos)  # entity ids 0, 1
    for lower, upper in zip(cblocks[:-1], cblocks[1:], strict=True):
        # The states computed by block l are the inputs of block l + 1, in order.
        assert torch.equal(lower.dstdata["user"], upper.srcdata["user"])
        assert torch.equal(lower.dstdata["node"], upper.srcdata["node"])
    for block in cblocks:
        n_dst = block.num_dst_nodes()
        # Destination states are the prefix of the source states.
        assert torch.equal(block.srcdata["user"][:n_dst], block.dstdata["user"])
        assert torch.equal(block.srcdata["node"][:n_dst], block.dstdata["node"])
        states = list(
            zip(block.srcdata["user"].tolist(), block.srcdata["node"].tolist(), strict=True)
        )
        assert len(set(states)) == len(states)
        src, dst = block.edges()
        # Every edge stays inside one user, and each state sees exactly its node's in-edges.
        assert torch.equal(block.srcdata["user"][src], block.dstdata["user"][dst])
        for state in range(n_dst):
            mask = dst == state
            got = sorted(
                zip(
                    block.srcdata["node"][src[mask]].tolist(),
                    block.edata["rel"][mask].tolist(),
                    strict=True,
                )
            )
            assert got == in_neighbors(g, int(block.dstdata["node"][state]))


def test_edge_filter_prunes_before_expanding():
    g = hand_kg()
    _, _, blocks = MultiLayerFullNeighborSampler(2).sample(g, torch.tensor([1]))

    def keep_rel_1(user, rel, dst_state, src_entity):
        return rel == 1

    cblocks, _ = condition_on_users(blocks, torch.tensor([0]), torch.tensor([0]), keep_rel_1)
    assert all(bool((b.edata["rel"] == 1).all()) for b in cblocks)
    # Entity 1 keeps only 5 (rel 1); 3 and 4 are pruned, so the lower block expands only 1 and 5.
    assert sorted(cblocks[0].dstdata["node"].tolist()) == [1, 5]


def test_make_pair_batch_maps_items_through_entities():
    g = hand_kg()
    item_entity = torch.tensor([1, 0])  # item 0 is entity 1, item 1 is entity 0
    pairs = torch.tensor([[0, 0, 1], [1, 1, 0], [0, 1, 1]])
    batch = make_pair_batch(g, MultiLayerFullNeighborSampler(1), pairs, item_entity)
    top = batch.blocks[-1]
    assert torch.equal(top.dstdata["node"][batch.pair_index], item_entity[pairs[:, 1]])
    assert torch.equal(top.dstdata["user"][batch.pair_index], pairs[:, 0])
    assert batch.labels.dtype == torch.float32


def random_kg(n_nodes: int, n_edges: int, seed: int) -> dgl.DGLGraph:
    """Long-tailed in-degrees (some nodes isolated, some below K) with 5 relations."""
    generator = torch.Generator().manual_seed(seed)
    dst = (torch.rand(n_edges, generator=generator) ** 3 * n_nodes).long()
    src = torch.randint(0, n_nodes, (n_edges,), generator=generator)
    g = dgl.graph((src, dst), num_nodes=n_nodes)
    g.edata["rel"] = torch.randint(0, 5, (n_edges,), generator=generator)
    return g


@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("dedup", [True, False])
@pytest.mark.parametrize("filtered", [False, True])
def test_sampled_layers_condition_exactly_like_dgl_blocks(n_layers, dedup, filtered):
    """The training path's CSC layers: same draws, numbering and edges as the DGL blocks."""
    g = random_kg(60, 400, seed=n_layers)
    sampler = FixedSizeNeighborSampler(n_neighbors=3, n_layers=n_layers)
    seeds = torch.tensor([5, 0, 59, 17, 33, 2])  # 59: no in-edges; 0: the most
    users = torch.tensor([0, 1, 1, 2, 0, 3, 1, 2])
    seed_pos = torch.tensor([0, 1, 1, 2, 3, 4, 5, 0])

    def keep_even_relations(user, rel, dst_state, src_entity):
        return (rel + user) % 2 == 0

    edge_filter = keep_even_relations if filtered else None
    torch.manual_seed(11)
    _, _, blocks = sampler.sample_blocks(g, seeds)
    torch.manual_seed(11)
    layers = sampler.sample_layers(g, seeds)
    for block, layer in zip(blocks, layers, strict=True):
        assert torch.equal(layer.src_nodes, block.srcdata[dgl.NID])
        indptr, indices, eids = block.adj_tensors("csc")
        assert torch.equal(layer.indptr, indptr) and torch.equal(layer.indices, indices)
        assert torch.equal(layer.rel, block.edata["rel"][eids])
    expected, expected_index = condition_on_users(blocks, users, seed_pos, edge_filter, dedup)
    got, got_index = condition_on_users(layers, users, seed_pos, edge_filter, dedup)
    assert torch.equal(got_index, expected_index)
    for want, have in zip(expected, got, strict=True):
        assert [t.tolist() for t in want.adj_tensors("csc")] == [
            t.tolist() for t in have.adj_tensors("csc")
        ]
        for key in ("node", "user"):
            assert torch.equal(want.srcdata[key], have.srcdata[key])
        assert torch.equal(want.edata["rel"], have.edata["rel"])
    # The random stream is left where the DGL path leaves it.
    torch.manual_seed(11)
    sampler.sample_blocks(g, seeds)
    after_blocks = torch.rand(1)
    torch.manual_seed(11)
    sampler.sample_layers(g, seeds)
    assert torch.equal(torch.rand(1), after_blocks)


@pytest.mark.parametrize("n_edges", [0, 1, 40])
def test_block_from_edges_is_dgls_create_block(n_edges):
    """The direct construction against ``dgl.create_block`` and field assignments: same
    edges and ids, node counts, sparse formats, data, and message passing on it."""
    import dgl.function as fn

    g = torch.Generator().manual_seed(n_edges)
    n_src, n_dst = 9, 4
    src = torch.randint(0, n_src, (n_edges,), generator=g)
    dst = torch.randint(0, n_dst, (n_edges,), generator=g)  # repeated edges included
    node, user = torch.randperm(n_src, generator=g), torch.randint(0, 3, (n_src,), generator=g)
    rel = torch.randint(0, 5, (n_edges,), generator=g)
    got = block_from_edges(
        src,
        dst,
        {"node": node, "user": user},
        {"node": node[:n_dst], "user": user[:n_dst]},
        {"rel": rel},
    )
    expected = dgl.create_block((src, dst), num_src_nodes=n_src, num_dst_nodes=n_dst)
    expected.srcdata.update({"node": node, "user": user})
    expected.dstdata.update({"node": node[:n_dst], "user": user[:n_dst]})
    expected.edata["rel"] = rel
    assert got.is_block and got.num_src_nodes() == n_src and got.num_dst_nodes() == n_dst
    assert got.formats() == expected.formats() and got.idtype == expected.idtype
    for order in ("eid", "srcdst"):
        for a, b in zip(got.edges(order=order), expected.edges(order=order), strict=True):
            assert torch.equal(a, b)
    for a, b in zip(got.adj_tensors("csc"), expected.adj_tensors("csc"), strict=True):
        assert torch.equal(a, b)
    for frame, other in ((got.srcdata, expected.srcdata), (got.dstdata, expected.dstdata)):
        assert frame.keys() == other.keys()
        assert all(torch.equal(frame[k], other[k]) for k in frame.keys())
    assert torch.equal(got.edata["rel"], expected.edata["rel"])
    h = torch.randn(n_src, 3, generator=g)
    for block in (got, expected):
        block.srcdata["h"] = h
        block.update_all(fn.copy_u("h", "m"), fn.sum("m", "s"))
    assert torch.equal(got.dstdata["s"], expected.dstdata["s"])
