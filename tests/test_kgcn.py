"""KGCN on conditioned blocks against a brute-force per-pair reference."""

import dgl
import pytest
import torch
from dgl.dataloading import MultiLayerFullNeighborSampler

from dglrec.models.kg.kgcn import KGCN
from dglrec.sampling.blocks import FixedSizeNeighborSampler, make_pair_batch


def random_kg(seed=0, n_entities=12, n_edges=30, n_relations=3):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n_entities, (n_edges,), generator=gen)
    dst = torch.randint(0, n_entities, (n_edges,), generator=gen)
    g = dgl.graph((torch.cat([src, dst]), torch.cat([dst, src])), num_nodes=n_entities)
    rel = torch.randint(0, n_relations, (n_edges,), generator=gen)
    g.edata["rel"] = torch.cat([rel, rel])
    return g


def reference_logit(model: KGCN, g, user: int, entity: int) -> torch.Tensor:
    """Tree recursion of the KGCN equations, one pair at a time, all neighbours."""

    def rep(node, layer):
        if layer == 0:
            return model.entity_emb.weight[node]
        h_self = rep(node, layer - 1)
        src, _, eid = g.in_edges(node, form="all")
        if len(src) == 0:
            neighborhood = torch.zeros_like(h_self)
        else:
            rel = model.relation_emb.weight[g.edata["rel"][eid]]
            weights = torch.softmax(rel @ model.user_emb.weight[user], 0)
            neighbours = torch.stack([rep(int(s), layer - 1) for s in src])
            neighborhood = (weights[:, None] * neighbours).sum(0)
        return model.aggregators[layer - 1](h_self[None], neighborhood[None])[0]

    return model.user_emb.weight[user] @ rep(entity, model.n_layers)


@pytest.mark.parametrize("aggregator", ["sum", "concat", "neighbor"])
@pytest.mark.parametrize("n_layers", [1, 2])
def test_kgcn_matches_per_pair_reference(aggregator, n_layers):
    torch.manual_seed(0)
    g = random_kg()
    model = KGCN(
        n_users=4, n_entities=12, n_relations=3, dim=5, n_layers=n_layers, aggregator=aggregator
    )
    with torch.no_grad():  # larger weights than Glorot, so differences would show
        for p in model.parameters():
            p.normal_()
    item_entity = torch.arange(12)
    pairs = torch.tensor([[0, 1, 1], [1, 1, 0], [2, 5, 1], [0, 7, 0], [3, 1, 1], [0, 1, 1]])
    batch = make_pair_batch(g, MultiLayerFullNeighborSampler(n_layers), pairs, item_entity)
    out = model(batch.blocks, batch.pair_index)
    expected = torch.stack([reference_logit(model, g, int(u), int(i)) for u, i, _ in pairs])
    assert out.logits.shape == (len(pairs),)
    torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-5)
    # The same item scored for different users differs: the attention is user-conditioned.
    assert not torch.isclose(out.logits[0], out.logits[4])


@pytest.mark.parametrize(
    "sampler", [FixedSizeNeighborSampler(3, 2), MultiLayerFullNeighborSampler(2)]
)
@pytest.mark.parametrize("aggregator", ["sum", "concat", "neighbor"])
def test_kgcn_shapes_and_gradients(sampler, aggregator):
    torch.manual_seed(0)
    g = random_kg(seed=1)
    model = KGCN(n_users=5, n_entities=12, n_relations=3, dim=8, n_layers=2, aggregator=aggregator)
    pairs = torch.stack(
        [torch.randint(0, 5, (20,)), torch.randint(0, 12, (20,)), torch.randint(0, 2, (20,))], 1
    )
    batch = make_pair_batch(g, sampler, pairs, torch.arange(12))
    out = model(batch.blocks, batch.pair_index)
    assert out.logits.shape == (20,)
    l2 = out.l2()  # deferred: the trainer evaluates only the penalty it uses
    assert l2.ndim == 0 and l2 > 0
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, batch.labels) + l2
    loss.backward()
    for name in ("user_emb", "entity_emb", "relation_emb"):
        assert getattr(model, name).weight.grad.abs().sum() > 0, name


def test_kgcn_rejects_wrong_block_count():
    g = random_kg()
    model = KGCN(n_users=2, n_entities=12, n_relations=3, n_layers=2)
    batch = make_pair_batch(
        g, MultiLayerFullNeighborSampler(1), torch.tensor([[0, 1, 1]]), torch.arange(12)
    )
    with pytest.raises(ValueError, match="2 layers but got 1 blocks"):
        model(batch.blocks, batch.pair_index)


def test_unknown_aggregator_is_rejected():
    with pytest.raises(ValueError, match="aggregator"):
        KGCN(n_users=2, n_entities=3, n_relations=1, aggregator="max")


def _random_block(seed: int) -> dgl.DGLGraph:
    """A block with destinations of 0–5 in-edges, edges in no particular order."""
    generator = torch.Generator().manual_seed(seed)
    n_src, n_dst = 9, 6
    degree = torch.tensor([3, 0, 5, 1, 2, 0])
    dst = torch.repeat_interleave(torch.arange(n_dst), degree)
    dst = dst[torch.randperm(len(dst), generator=generator)]
    src = torch.randint(0, n_src, (len(dst),), generator=generator)
    return dgl.create_block((src, dst), num_src_nodes=n_src, num_dst_nodes=n_dst)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scatter_softmax_and_sum_match_dgl(seed):
    """softmax_by_destination / sum_by_destination against DGL's edge_softmax and update_all,
    values and gradients (large scores included: the per-destination maximum must hold)."""
    import dgl.function as fn
    from dgl.nn.functional import edge_softmax

    from dglrec.models.kg.kgcn import softmax_by_destination, sum_by_destination

    block = _random_block(seed)
    src, dst = block.edges()
    generator = torch.Generator().manual_seed(seed)
    # Offset past exp's float32 range (e^89): only the per-destination maximum keeps it finite.
    scores = (torch.randn(block.num_edges(), generator=generator) * 40 + 150).requires_grad_()
    h = torch.randn(block.num_src_nodes(), 4, generator=generator).requires_grad_()
    upstream = torch.randn(block.num_dst_nodes(), 4, generator=generator)

    ours = sum_by_destination(
        softmax_by_destination(scores, dst, block.num_dst_nodes()).unsqueeze(-1) * h[src],
        dst,
        block.num_dst_nodes(),
    )
    grads = torch.autograd.grad((ours * upstream).sum(), [scores, h])
    with block.local_scope():
        block.edata["a"] = edge_softmax(block, scores).unsqueeze(-1)
        block.srcdata["h"] = h
        block.update_all(fn.u_mul_e("h", "a", "m"), fn.sum("m", "n"))
        theirs = block.dstdata["n"]
    expected = torch.autograd.grad((theirs * upstream).sum(), [scores, h])
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert torch.equal(ours[block.in_degrees() == 0], torch.zeros(2, 4))
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # Each destination's weights sum to 1.
    weights = softmax_by_destination(scores.detach(), dst, block.num_dst_nodes())
    sums = torch.zeros(block.num_dst_nodes()).index_add_(0, dst, weights)
    torch.testing.assert_close(sums[block.in_degrees() > 0], torch.ones(4))


def test_half_sq_gradient_is_autograds_bit_for_bit():
    """half_sq's own backward against autograd through x.pow(2).sum() / 2: the same bits
    (what keeps a fit's trajectory unchanged), on leaves and on looked-up rows."""
    from dglrec.models.base import half_sq

    generator = torch.Generator().manual_seed(0)
    table = torch.randn(50, 8, generator=generator).requires_grad_()
    matrix = torch.randn(8, 8, generator=generator).requires_grad_()
    rows = torch.tensor([3, 3, 7, 49])
    constant = torch.randn(5, generator=generator)  # needs no gradient
    for l2 in (1e-4, 3e-7, 0.37):
        got = torch.autograd.grad(l2 * half_sq(table, matrix[rows % 8], constant), [table, matrix])
        reference = (table.pow(2).sum() + matrix[rows % 8].pow(2).sum() + constant.pow(2).sum()) / 2
        want = torch.autograd.grad(l2 * reference, [table, matrix])
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)
        torch.testing.assert_close(
            half_sq(table, constant), (table.pow(2).sum() + constant.pow(2).sum()) / 2
        )
    assert half_sq().item() == 0.0
