"""Importance top-K sampling (KAISG) on hand-built graphs."""

import dgl
import pytest
import torch
from dgl.dataloading import MultiLayerFullNeighborSampler
from torch import nn

from dglrec.errors import ConfigError
from dglrec.models.base import Capabilities
from dglrec.models.cf.bprmf import BPRMF
from dglrec.models.kg.kgcn import KGCN
from dglrec.sampling.blocks import build_sampler, condition_on_users, top_k_per_group


def test_top_k_per_group_by_hand():
    group = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    score = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.3, 0.2, 0.7])
    tie = torch.tensor([5, 7, 1, 3, 0, 1, 4])
    keep = top_k_per_group(group, score, tie, k=2)
    # group 0: 0.9 (tie 3) and 0.9 (tie 7) beat 0.5; group 1 (2 members) and 2 (1) keep all.
    assert keep.tolist() == [False, True, False, True, True, True, True]
    keep1 = top_k_per_group(group, score, tie, k=1)
    # The tie between the two 0.9s goes to the smaller tie key (3).
    assert keep1.tolist() == [False, False, False, True, True, False, True]


class Tables(nn.Module):
    """A stand-in model: 2 users, 3 relations, 2-d vectors chosen by hand."""

    capabilities = Capabilities(importance_sampling=True)
    importance_scores = KGCN.importance_scores  # sigmoid(e_u . e_r) from the two tables

    def __init__(self):
        super().__init__()
        self.user_emb = nn.Embedding(2, 2)
        self.relation_emb = nn.Embedding(3, 2)
        with torch.no_grad():
            self.user_emb.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
            # user 0 ranks rel 0 > 2 > 1; user 1 ranks rel 1 > 2 > 0.
            self.relation_emb.weight.copy_(torch.tensor([[2.0, -1.0], [-1.0, 2.0], [0.5, 0.5]]))


def star_kg() -> dgl.DGLGraph:
    """Entity 0 <- 1 (rel 0), 2 (rel 1), 3 (rel 2), 4 (rel 0); 5 <- 6 (rel 1);
    1 <- 7 (rel 1), 8 (rel 2)."""
    src = torch.tensor([1, 2, 3, 4, 6, 7, 8])
    dst = torch.tensor([0, 0, 0, 0, 5, 1, 1])
    g = dgl.graph((src, dst), num_nodes=9)
    g.edata["rel"] = torch.tensor([0, 1, 2, 0, 1, 1, 2])
    return g


def neighbours_kept(g, sampler, model, users, items, n_layers=1):
    pairs = torch.stack([users, items, torch.ones_like(users)], 1)
    batch = sampler.sample(g, pairs, torch.arange(g.num_nodes()), model)
    top = batch.blocks[-1]
    src, dst = top.edges()
    out = {}
    for p, state in enumerate(batch.pair_index.tolist()):
        out[p] = sorted(top.srcdata["node"][src[dst == state]].tolist())
    return out, batch


def test_importance_topk_keeps_best_for_each_user():
    g, model = star_kg(), Tables()
    sampler = build_sampler("importance_topk", n_layers=1, n_neighbors=2, model=model)
    kept, _ = neighbours_kept(g, sampler, model, torch.tensor([0, 1, 0]), torch.tensor([0, 0, 5]))
    # User 0: rel 0 (entities 1 and 4) beats the rest;
    # user 1: rel 1 (entity 2), then rel 2 (entity 3).
    assert kept[0] == [1, 4]
    assert kept[1] == [2, 3]
    # Fewer neighbours than K: all kept.
    assert kept[2] == [6]


def test_importance_topk_ties_break_by_entity_id():
    g, model = star_kg(), Tables()
    sampler = build_sampler("importance_topk", n_layers=1, n_neighbors=1, model=model)
    kept, _ = neighbours_kept(g, sampler, model, torch.tensor([0]), torch.tensor([0]))
    assert kept[0] == [1]  # entities 1 and 4 tie on rel 0: the smaller id wins


def test_importance_topk_prunes_every_layer():
    g, model = star_kg(), Tables()
    sampler = build_sampler("importance_topk", n_layers=2, n_neighbors=1, model=model)
    _, batch = neighbours_kept(g, sampler, model, torch.tensor([1]), torch.tensor([0]))
    lower, upper = batch.blocks
    assert int(upper.in_degrees().max()) <= 1 and int(lower.in_degrees().max()) <= 1
    # User 1 keeps entity 2 (rel 1) for entity 0; entity 2 has no in-edges, so nothing below.
    assert sorted(upper.srcdata["node"].tolist()) == [0, 2]


def test_importance_reads_current_embeddings():
    g, model = star_kg(), Tables()
    sampler = build_sampler("importance_topk", n_layers=1, n_neighbors=1, model=model)
    before, _ = neighbours_kept(g, sampler, model, torch.tensor([0]), torch.tensor([0]))
    with torch.no_grad():
        model.relation_emb.weight[2] = torch.tensor([5.0, 0.0])  # rel 2 now best for user 0
    after, _ = neighbours_kept(g, sampler, model, torch.tensor([0]), torch.tensor([0]))
    assert before[0] == [1] and after[0] == [3]


def test_importance_topk_matches_brute_force_on_random_graph():
    gen = torch.Generator().manual_seed(0)
    g = dgl.graph(
        (torch.randint(0, 30, (200,), generator=gen), torch.randint(0, 30, (200,), generator=gen))
    )
    g.edata["rel"] = torch.randint(0, 5, (200,), generator=gen)
    model = Tables()
    model.relation_emb = nn.Embedding(5, 2)
    _, _, blocks = MultiLayerFullNeighborSampler(1).sample(g, torch.arange(30))
    users = torch.randint(0, 2, (30,), generator=gen)

    from dglrec.sampling.blocks import ImportanceTopK

    cblocks, pair_index = condition_on_users(
        blocks, users, torch.arange(30), ImportanceTopK(3, model)
    )
    block = cblocks[-1]
    src, dst = block.edges()
    for pair in range(30):
        user, state = int(users[pair]), int(pair_index[pair])
        in_src, _, eid = g.in_edges(pair, form="all")
        scores = torch.sigmoid(
            model.relation_emb.weight[g.edata["rel"][eid]] @ model.user_emb.weight[user]
        )
        ranked = sorted(zip((-scores).tolist(), in_src.tolist(), strict=True))[:3]
        expected = sorted(entity for _, entity in ranked)
        assert sorted(block.srcdata["node"][src[dst == state]].tolist()) == expected


def test_importance_topk_needs_user_and_relation_tables():
    with pytest.raises(ConfigError, match="importance_topk"):
        build_sampler("importance_topk", 1, 4, model=BPRMF(n_users=3, n_items=4))
