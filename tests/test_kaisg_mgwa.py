"""KAISG and MGWA layers against hand computations, and their fits on the tiny KG."""

import pytest
import torch
from dgl.dataloading import MultiLayerFullNeighborSampler

from dglrec.models.kg.kaisg import KAISG
from dglrec.models.kg.mgwa import MGWA, GatedAggregator
from dglrec.runs import pipeline
from dglrec.runs.recipes import load_recipe
from dglrec.sampling.blocks import make_pair_batch
from tests.conftest import CTR_TEST_METRICS, assert_evaluate_matches
from tests.test_kgcn import random_kg


def test_gate_equals_hand_computed_glu():
    gate = GatedAggregator(dim=2)
    with torch.no_grad():
        gate.linear.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 2.0, -1.0, 0.0]]))
        gate.linear.bias.copy_(torch.tensor([0.5, 0.0]))
        gate.gate.weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]))
        gate.gate.bias.copy_(torch.tensor([0.0, -1.0]))
    h_v, h_n = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]])
    # x = [1, 2, 3, -1]; xW + b = [1 - 1 + 0.5, 4 - 3] = [0.5, 1]; xV + c = [0, 5 - 1]
    expected = torch.tensor([[0.5 * 0.5, 1.0 * torch.sigmoid(torch.tensor(4.0))]])
    torch.testing.assert_close(gate(h_v, h_n), expected)


def reference_logit(model, g, user, entity):
    """One-layer KAISG/MGWA by hand: softmax of sigmoid scores over all neighbours."""
    e = model.entity_emb.weight
    src, _, eid = g.in_edges(entity, form="all")
    rel = model.relation_emb.weight[g.edata["rel"][eid]]
    weights = torch.softmax(torch.sigmoid(rel @ model.user_emb.weight[user]), 0)
    neighborhood = (weights[:, None] * e[src]).sum(0)
    h = model.aggregators[0](e[entity][None], neighborhood[None])[0]
    return model.user_emb.weight[user] @ h


@pytest.mark.parametrize("cls", [KAISG, MGWA])
def test_sigmoid_softmax_weighting_matches_reference(cls):
    torch.manual_seed(0)
    g = random_kg()
    model = cls(n_users=3, n_entities=12, n_relations=3, dim=4, n_layers=1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    pairs = torch.tensor([[0, 1, 1], [2, 3, 0], [1, 1, 1]])
    batch = make_pair_batch(g, MultiLayerFullNeighborSampler(1), pairs, torch.arange(12))
    out = model(batch.blocks, batch.pair_index)
    expected = torch.stack([reference_logit(model, g, int(u), int(i)) for u, i, _ in pairs])
    torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-5)


def test_mgwa_sum_ablation_uses_kaisg_aggregator():
    model = MGWA(n_users=2, n_entities=5, n_relations=2, aggregator="sum")
    assert not isinstance(model.aggregators[0], GatedAggregator)
    with pytest.raises(ValueError):
        MGWA(n_users=2, n_entities=5, n_relations=2, aggregator="max")


@pytest.mark.parametrize(
    "recipe, overrides",
    [
        ("kaisg.toml", []),
        ("mgwa.toml", []),
        ("kaisg_no_transe.toml", []),
        ("kaisg_uniform.toml", []),
        ("mgwa_sum.toml", []),
        ("kaisg_transe_unscaled.toml", []),
        ("kaisg.toml", ["model.n_layers=2", "sampler.n_neighbors=4"]),
    ],
)
def test_recipes_fit_end_to_end_on_tiny_kg(recipe, overrides, tiny_raw, isolated):
    from pathlib import Path

    path = Path(__file__).parents[1] / "recipes" / recipe
    cfg = load_recipe(
        path,
        [
            "data.name=tiny-kg",
            f"data.raw_dir={tiny_raw}",
            "train.epochs=2",
            "train.batch_size=64",
            "pretrain.epochs=3",
            "tracking.log_model=false",
            *overrides,
        ],
        seed=5,
    )
    logs = []
    run_id, result = pipeline.fit(cfg, log=logs.append)
    assert CTR_TEST_METRICS <= set(result.test)
    assert len(result.history) == 2
    if cfg.model["init"] == "transe":
        assert any("pretraining TransE" in line for line in logs)
        # The second fit with the same data, settings and seed reuses the tables.
        logs.clear()
        pipeline.fit(cfg, log=logs.append)
        assert any("using cached TransE" in line for line in logs)


def test_evaluate_rescores_an_importance_topk_run(tiny_raw, isolated):
    """`dglrec evaluate` rebuilds the top-K sampler around the reloaded model."""
    from pathlib import Path

    cfg = load_recipe(
        Path(__file__).parents[1] / "recipes" / "kaisg.toml",
        ["data.name=tiny-kg", f"data.raw_dir={tiny_raw}", "train.epochs=1", "pretrain.epochs=2"],
        seed=4,
    )
    run_id, _ = pipeline.fit(cfg, log=lambda _: None)
    assert_evaluate_matches(run_id)
