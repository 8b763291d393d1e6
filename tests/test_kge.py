"""TransE and link-prediction metrics."""

import torch

from dglrec.models.kg.transe import TransE
from dglrec.runs import pipeline
from dglrec.runs.recipes import load_recipe
from dglrec.training.kge import KGETrainer, corrupt, link_prediction_metrics


def chain_kg(n=20):
    """Two relations: r0 links i -> i+1, r1 links i -> i+2 (a translation-friendly KG)."""
    heads = torch.arange(n - 2)
    return torch.cat(
        [
            torch.stack([heads, torch.zeros_like(heads), heads + 1], 1),
            torch.stack([heads, torch.ones_like(heads), heads + 2], 1),
        ]
    )


def brute_force_ranks(model, triples, known):
    known_set = {tuple(t) for t in known.tolist()}
    n = model.entity_emb.num_embeddings
    ranks = []
    for h, r, t in triples.tolist():
        for predict in ("tail", "head"):
            d_true = float(model.distance(torch.tensor([h]), torch.tensor([r]), torch.tensor([t])))
            better = 0
            for e in range(n):
                cand = (h, r, e) if predict == "tail" else (e, r, t)
                if cand == (h, r, t) or cand in known_set:
                    continue
                d = float(model.distance(*(torch.tensor([x]) for x in cand)))
                better += d < d_true - 1e-6
            ranks.append(1 + better)
    return torch.tensor(ranks, dtype=torch.float64)


def test_filtered_metrics_match_brute_force():
    torch.manual_seed(0)
    known = chain_kg(12)
    model = TransE(12, 2, dim=3, p_norm=2)
    metrics = link_prediction_metrics(model, known[:7], known, batch_size=3)
    ranks = brute_force_ranks(model, known[:7], known)
    assert abs(metrics["mrr"] - float((1 / ranks).mean())) < 1e-9
    assert abs(metrics["mr"] - float(ranks.mean())) < 1e-9
    assert abs(metrics["hits3"] - float((ranks <= 3).double().mean())) < 1e-9


def test_corruption_changes_exactly_one_end():
    triples = chain_kg()
    corrupted = corrupt(triples, 20, torch.Generator().manual_seed(1))
    same_head = corrupted[:, 0] == triples[:, 0]
    same_tail = corrupted[:, 2] == triples[:, 2]
    assert torch.equal(corrupted[:, 1], triples[:, 1])
    assert bool((same_head | same_tail).all())
    assert 0.3 < float((~same_tail).double().mean()) < 0.7


def test_transe_ranks_true_triples_above_corrupted_after_training():
    torch.manual_seed(0)
    triples = chain_kg()
    model = TransE(20, 2, dim=8, p_norm=1, margin=1.0)
    before = link_prediction_metrics(model, triples, triples)
    empty = triples[:0]
    KGETrainer(
        model,
        {"train": triples, "eval": empty, "test": empty},
        triples,
        epochs=150,
        batch_size=16,
        lr=0.02,
        seed=0,
        log=lambda _: None,
    ).fit()
    after = link_prediction_metrics(model, triples, triples)
    assert after["mrr"] > 0.45 and after["mrr"] > 2 * before["mrr"], (before, after)
    corrupted = corrupt(triples, 20, torch.Generator().manual_seed(3))
    d_true = model.distance(*triples.unbind(1))
    d_false = model.distance(*corrupted.unbind(1))
    # Random vectors would order about half; a corruption can also hit a true triple.
    assert float((d_true < d_false).double().mean()) > 0.8
    # Entity vectors stay on the unit sphere.
    torch.testing.assert_close(model.entity_emb.weight.norm(dim=1), torch.ones(20))


def test_transe_recipe_logs_link_prediction(tiny_raw, isolated):
    from pathlib import Path

    from dglrec.runs import tracking

    recipe = Path(__file__).parents[1] / "recipes" / "transe.toml"
    cfg = load_recipe(recipe, ["data.name=tiny-kg", f"data.raw_dir={tiny_raw}", "train.epochs=5"])
    run_id, result = pipeline.fit(cfg, log=lambda _: None)
    _, metrics, tags = tracking.get_run(run_id)
    assert {"test_mrr", "test_hits10", "eval_mrr"} <= set(metrics)
    assert 0 < metrics["test_mrr"] <= 1 and tags["model"] == "transe"
    assert sorted(s for s, _ in tracking.metric_history(run_id, "eval_mrr")) == [1, 2, 3, 4, 5]
