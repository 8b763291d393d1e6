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
