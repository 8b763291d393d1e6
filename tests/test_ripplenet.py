"""RippleNet: ripple sets from training positives only, the forward pass, the recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dglrec.models.base import TrainingTensors
from dglrec.models.kg.ripplenet import RippleNet, relation_products
from dglrec.runs import pipeline
from dglrec.runs.recipes import load_recipe
from dglrec.sampling.ripple_sets import build_ripple_sets, sample_per_group
from tests.conftest import assert_evaluate_matches

RECIPES = Path(__file__).parents[1] / "recipes"


def test_ripple_sets_never_reach_a_test_item_through_test_interactions():
    # Entities: items A=0, B=1, C=2; attributes X=3, Y=4, Z=5.
    # User 0 listened to A in training and to B only in test; user 1 listened to B in training.
    triples = torch.tensor([[0, 0, 3], [1, 1, 4], [2, 0, 5], [1, 2, 5]])
    train_positives = torch.tensor([[0, 0], [1, 1]])  # (user, entity)
    ripple = build_ripple_sets(train_positives, triples, 2, 6, n_hop=2, n_memory=2, seed=0)
    # User 0: hop 0 only A's triple; hop 1 continues from X, which leads back to A only.
    assert set(ripple.heads[0, 0].tolist()) == {0}
    assert set(ripple.tails[0, 0].tolist()) == {3}
    assert set(ripple.heads[0, 1].tolist()) == {3} and set(ripple.tails[0, 1].tolist()) == {0}
    reached_by_user0 = set(ripple.heads[0].flatten().tolist()) | set(
        ripple.tails[0].flatten().tolist()
    )
    assert not reached_by_user0 & {1, 4, 5, 2}  # B, its attribute Y, and B's neighbourhood
    # User 1's ripples start from B (its training positive): (B, r1, Y) and (B, r2, Z).
    assert set(ripple.heads[1, 0].tolist()) == {1}
    assert set(ripple.tails[1, 0].tolist()) == {4, 5}
    assert ripple.mask.tolist() == [True, True]


def test_ripple_sets_on_the_tiny_kg_hold_only_training_positives_at_hop_zero(tiny_raw, isolated):
    cfg = load_recipe(
        RECIPES / "ripplenet.toml", ["data.name=tiny-kg", f"data.raw_dir={tiny_raw}"], seed=2
    )
    built = pipeline.build(cfg, log=lambda _: None)
    dataset, model = built.dataset, built.model
    train = dataset.splits["train"]
    entity = dataset.item_entity
    train_entities = {
        (u, e)
        for u, e in zip(
            train[train[:, 2] == 1, 0].tolist(),
            entity[train[train[:, 2] == 1, 1]].tolist(),
            strict=True,
        )
    }
    heads = model.memory_heads[:, 0]
    for user in range(dataset.n_users):
        if model.has_memory[user]:
            assert {(user, h) for h in heads[user].tolist()} <= train_entities
    # Held-out positives that are not also training positives never seed a ripple.
    for split in ("eval", "test"):
        pairs = dataset.splits[split]
        for u, item in pairs[pairs[:, 2] == 1, :2].tolist():
            e = int(entity[item])
            if (u, e) not in train_entities:
                assert e not in heads[u].tolist()


def test_memory_sampling_is_without_replacement_when_possible():
    group = torch.tensor([0, 0, 0, 0, 0, 1, 1, 3])  # sizes 5, 2, 0, 1
    chosen, has = sample_per_group(group, 4, 3, torch.Generator().manual_seed(1))
    assert has.tolist() == [True, True, False, True]
    assert len(set(chosen[0].tolist())) == 3 and set(chosen[0].tolist()) <= {0, 1, 2, 3, 4}
    assert set(chosen[1].tolist()) <= {5, 6}
    assert chosen[3].tolist() == [7, 7, 7]
    again, _ = sample_per_group(group, 4, 3, torch.Generator().manual_seed(1))
    assert torch.equal(chosen, again)


def _small_model(init_seed: int) -> RippleNet:
    """Two hops, 3 memories of dim 4 over a 6-triple KG, bound to 5 training pairs."""
    torch.manual_seed(init_seed)
    model = RippleNet(n_users=3, n_items=4, n_entities=8, n_relations=3, dim=4, n_hop=2, n_memory=3)
    triples = torch.tensor([[0, 0, 4], [1, 1, 5], [2, 2, 6], [3, 0, 7], [4, 1, 5], [5, 2, 6]])
    pairs = torch.tensor([[0, 0, 1], [0, 2, 1], [1, 1, 1], [2, 3, 0], [1, 3, 1]])
    model.bind_training_data(TrainingTensors(pairs, torch.arange(4), triples, 8, seed=3))
    return model


def test_forward_matches_a_loop_reference():
    model = _small_model(init_seed=0)
    model.eval()
    users, items = torch.tensor([0, 1, 1]), torch.tensor([3, 2, 0])
    logits = model(users, items).logits
    for n, (u, i) in enumerate(zip(users.tolist(), items.tolist(), strict=True)):
        v = model.entity_emb.weight[i]
        total = torch.zeros(4)
        for hop in range(2):
            terms, weights = [], []
            for m in range(3):
                h = model.entity_emb.weight[model.memory_heads[u, hop, m]]
                r = model.relation_emb.weight[model.memory_relations[u, hop, m]].view(4, 4)
                t = model.entity_emb.weight[model.memory_tails[u, hop, m]]
                weights.append(torch.dot(v, r @ h))
                terms.append(t)
            p = torch.softmax(torch.stack(weights), 0)
            o = sum(p[m] * terms[m] for m in range(3))
            v = model.transform.weight @ (v + o)
            total = total + o
        assert logits[n].item() == pytest.approx(torch.dot(v, total).item(), abs=1e-5)


def test_training_terms_and_grid_match_a_loop_reference():
    """KGE term, batch L2 and ``score_grid`` against per-memory loops over gathered R_i."""
    model = _small_model(init_seed=1)
    users, items = torch.tensor([0, 1, 1, 0]), torch.tensor([3, 2, 0, 3])
    model.train()
    out = model(users, items)
    emb, rel = model.entity_emb.weight, model.relation_emb.weight
    kge, rows = 0.0, []
    for hop in range(2):
        heads, relations = model.memory_heads[users, hop], model.memory_relations[users, hop]
        tails = model.memory_tails[users, hop]
        h, r, t = emb[heads], rel[relations].view(4, 3, 4, 4), emb[tails]
        plausibility = torch.sigmoid(torch.einsum("nmi,nmij,nmj->nm", h, r, t))
        kge = kge - plausibility.mean()
        rows += [h, t, r]
    assert out.aux["loss_kge"].item() == pytest.approx(model.kge_weight * kge.item(), abs=1e-6)
    expected_l2 = sum(x.pow(2).sum() for x in rows) / 2 + model.transform.weight.pow(2).sum() / 2
    assert out.l2_batch().item() == pytest.approx(expected_l2.item(), rel=1e-5)
    model.eval()
    grid = model.score_grid(torch.arange(3), torch.arange(4))
    all_pairs = model(torch.arange(3).repeat_interleave(4), torch.arange(4).repeat(3)).logits
    torch.testing.assert_close(grid, all_pairs.view(3, 4), atol=1e-6, rtol=0)


def test_grid_keys_sum_tails_and_count_memories_per_distinct_head_and_relation():
    """Hand-set memories: user 0 holds (2, 1) twice and (1, 0) once; user 1 one key."""
    model = RippleNet(n_users=2, n_items=3, n_entities=8, n_relations=3, dim=4, n_hop=1, n_memory=3)
    model.memory_heads[:, 0] = torch.tensor([[2, 1, 2], [5, 5, 5]])
    model.memory_relations[:, 0] = torch.tensor([[1, 0, 1], [2, 2, 2]])
    model.memory_tails[:, 0] = torch.tensor([[6, 3, 7], [4, 4, 0]])
    rh, weights, count = model._grid_keys(torch.tensor([0, 1]), 0)
    assert count.tolist() == [2, 1] and rh.shape == (2, 2, 4) and weights.shape == (2, 5, 2)
    emb = model.entity_emb.weight
    matrices = model.relation_emb.weight.view(3, 4, 4)
    with torch.no_grad():
        # Keys sorted by h * n_relations + r: user 0's (1, 0) = 3, then (2, 1) = 7.
        torch.testing.assert_close(rh[0, 0], matrices[0] @ emb[1])
        torch.testing.assert_close(rh[0, 1], matrices[1] @ emb[2])
        torch.testing.assert_close(weights[0, :4, 0], emb[3])
        torch.testing.assert_close(weights[0, :4, 1], emb[6] + emb[7])
        torch.testing.assert_close(weights[1, :4, 0], 2 * emb[4] + emb[0])
        # User 1's padding slot repeats her only key, weightless.
        torch.testing.assert_close(rh[1, 1], rh[1, 0])
        assert weights[1, :, 1].abs().sum() == 0
    assert weights[:, 4].tolist() == [[1.0, 2.0], [3.0, 0.0]]


@pytest.mark.parametrize("subchunk", [1, 200, 1 << 19])
@pytest.mark.parametrize("scale", [1.0, 40.0])
def test_grid_by_distinct_keys_scores_like_pairs(monkeypatch, subchunk, scale):
    """Repeated keys, users of different key counts (padded sub-chunks), a user without
    memories, and scores large enough that the softmax needs its maximum subtracted."""
    from dglrec.models.kg import ripplenet

    g = torch.Generator().manual_seed(5)
    n_users, n_items, n_entities = 9, 6, 14
    torch.manual_seed(0)
    model = RippleNet(n_users, n_items, n_entities, n_relations=3, dim=4, n_hop=2, n_memory=7)
    heads = torch.randint(0, n_entities, (40,), generator=g)
    triples = torch.stack(
        [
            heads,
            torch.randint(0, 2, (40,), generator=g),
            torch.randint(0, n_entities, (40,), generator=g),
        ],
        1,
    )
    users = torch.arange(n_users - 1).repeat_interleave(2)  # the last user has no positives
    pairs = torch.stack(
        [users, torch.randint(0, n_items, (len(users),), generator=g), torch.ones_like(users)], 1
    )
    model.bind_training_data(
        TrainingTensors(pairs, torch.arange(n_items), triples, n_entities, seed=1)
    )
    with torch.no_grad():
        model.entity_emb.weight.mul_(scale)
    model.eval()
    counts = torch.stack([model._grid_keys(torch.arange(n_users), hop)[2] for hop in range(2)])
    assert counts.min() < 7 and len(torch.unique(counts)) > 2 and not model.has_memory[-1]
    monkeypatch.setattr(ripplenet, "GRID_SUBCHUNK_FLOATS", subchunk)
    with torch.no_grad():
        grid = model.score_grid(torch.arange(n_users), torch.arange(n_items))
        expected = model(
            torch.arange(n_users).repeat_interleave(n_items), torch.arange(n_items).repeat(n_users)
        ).logits.view(n_users, n_items)
    assert torch.isfinite(grid).all()
    torch.testing.assert_close(grid, expected, atol=1e-5 * scale**3, rtol=1e-5)


def test_relation_products_equal_products_with_gathered_matrices():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g)
    matrices = torch.randn(7, 6, 5, generator=g)
    relations = torch.randint(0, 7, (50,), generator=g)
    relations[relations == 3] = 4  # a relation with no row
    expected = (x.unsqueeze(1) @ matrices[relations]).squeeze(1)
    torch.testing.assert_close(relation_products(x, relations, matrices), expected)


def test_kge_term_is_a_training_loss_that_moves_relation_gradients():
    torch.manual_seed(0)
    model = RippleNet(n_users=2, n_items=3, n_entities=6, n_relations=2, dim=4, n_hop=1, n_memory=2)
    triples = torch.tensor([[0, 0, 3], [1, 1, 4], [2, 0, 5]])
    pairs = torch.tensor([[0, 0, 1], [1, 1, 1], [1, 2, 0]])
    model.bind_training_data(TrainingTensors(pairs, torch.arange(3), triples, 6, seed=0))
    model.train()
    out = model(torch.tensor([0, 1]), torch.tensor([2, 0]))
    assert set(out.aux) == {"loss_kge"} and out.aux["loss_kge"].item() < 0
    out.aux["loss_kge"].backward()
    assert model.relation_emb.weight.grad.abs().sum() > 0
    model.eval()
    assert model(torch.tensor([0]), torch.tensor([2])).aux == {}


def test_ripplenet_recipe_fits_end_to_end_on_tiny_kg(tiny_raw, isolated):
    cfg = load_recipe(
        RECIPES / "ripplenet.toml",
        ["data.name=tiny-kg", f"data.raw_dir={tiny_raw}", "train.epochs=2", "train.batch_size=64"],
        seed=5,
    )
    run_id, result = pipeline.fit(cfg, log=lambda _: None)
    assert "train_loss_kge" in result.history[0]
    assert len(result.history) == 2
    assert_evaluate_matches(run_id)
