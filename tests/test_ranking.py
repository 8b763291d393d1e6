"""Full-ranking top-K metrics against a per-user brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dglrec.evaluation.ranking import (
    UserItemSets,
    evaluate_ranking,
    rank_metrics,
)
from dglrec.runs import pipeline
from dglrec.training.ctr import CTRTrainer
from tests.conftest import recipe_on


def positives_by_user(pairs: torch.Tensor, n_users: int, n_items: int) -> torch.Tensor:
    """Reference: the dense ``[n_users, n_items]`` mask of the positive pairs in ``pairs``."""
    mask = torch.zeros(n_users, n_items, dtype=torch.bool)
    positive = pairs[pairs[:, 2] == 1]
    mask[positive[:, 0], positive[:, 1]] = True
    return mask


def brute_force(scores, exclude, relevant, k):
    """Recall@k and NDCG@k of one user, with loops, ties to the smaller item id."""
    candidates = [i for i in range(len(scores)) if not exclude[i]]
    ranked = sorted(candidates, key=lambda i: (-scores[i], i))[:k]
    positives = [i for i in range(len(scores)) if relevant[i]]
    hits = [1 if i in positives else 0 for i in ranked]
    dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
    idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(positives))))
    return sum(hits) / len(positives), dcg / idcg, ranked


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 8), st.integers(0, 1)), max_size=40),
    st.lists(st.integers(0, 5), min_size=1, max_size=6),
)
def test_user_item_sets_rows_equal_the_dense_mask(pairs, users):
    """The chunked rows and membership test equal the full ``n_users × n_items`` mask."""
    pairs = torch.tensor(pairs, dtype=torch.long).reshape(-1, 3)
    dense = positives_by_user(pairs, 6, 9)
    sets = UserItemSets.positives(pairs, 6, 9)
    users = torch.tensor(users)
    assert torch.equal(sets.rows(users), dense[users])
    assert torch.equal(sets.sizes(), dense.sum(1))
    u, i = torch.meshgrid(torch.arange(6), torch.arange(9), indexing="ij")
    assert torch.equal(sets.contains(u.reshape(-1), i.reshape(-1)), dense.reshape(-1))


def test_rank_metrics_match_brute_force_with_ties():
    rng = np.random.default_rng(0)
    n_users, n_items, ks = 7, 30, [1, 5, 10, 50]
    # Rounded scores create ties, broken towards the smaller item id.
    scores = torch.tensor(np.round(rng.random((n_users, n_items)), 1), dtype=torch.float32)
    exclude = torch.tensor(rng.random((n_users, n_items)) < 0.3)
    relevant = torch.tensor(rng.random((n_users, n_items)) < 0.2) & ~exclude
    relevant[:, 0] |= ~relevant.any(1) & ~exclude[:, 0]
    exclude[:, 0] &= ~relevant[:, 0]
    out, top = rank_metrics(scores, exclude, relevant, ks)
    for u in range(n_users):
        for k in ks:
            recall, ndcg, ranked = brute_force(
                scores[u].tolist(), exclude[u].tolist(), relevant[u].tolist(), k
            )
            assert out[f"recall_at_{k}"][u].item() == pytest.approx(recall)
            assert out[f"ndcg_at_{k}"][u].item() == pytest.approx(ndcg)
            assert top[u, : len(ranked)].tolist() == ranked


def test_evaluate_ranking_on_a_fitted_model_matches_brute_force(tiny_raw, isolated):
    cfg = recipe_on("bprmf.toml", "tiny-kg", tiny_raw, "train.epochs=3", "eval.ranking_ks=[3, 10]")
    built = pipeline.build(cfg, log=lambda _: None)
    trainer = CTRTrainer(built.model, built.dataset, built.sampler, cfg, log=lambda _: None)
    trainer.fit()
    dataset = built.dataset
    n_users, n_items = dataset.n_users, dataset.n_items
    splits = dataset.splits
    got = evaluate_ranking(
        trainer.score_pairs, splits["train"], splits["test"], n_users, n_items, [3, 10], 4
    )
    seen = positives_by_user(dataset.splits["train"], n_users, n_items)
    relevant = positives_by_user(dataset.splits["test"], n_users, n_items) & ~seen
    popularity = seen.sum(0).double()
    recalls, ndcgs, lists = [], [], []
    for user in range(n_users):
        if not relevant[user].any():
            continue
        pairs = torch.stack(
            [
                torch.full((n_items,), user),
                torch.arange(n_items),
                torch.zeros(n_items, dtype=torch.long),
            ],
            1,
        )
        scores = trainer.score_pairs(pairs).tolist()
        recall, ndcg, ranked = brute_force(scores, seen[user].tolist(), relevant[user].tolist(), 10)
        recalls.append(recall)
        ndcgs.append(ndcg)
        lists.append(ranked)
    assert got["ranking_users"] == len(recalls)
    assert got["recall_at_10"] == pytest.approx(np.mean(recalls))
    assert got["ndcg_at_10"] == pytest.approx(np.mean(ndcgs))
    assert got["coverage_at_10"] == pytest.approx(len({i for r in lists for i in r}) / n_items)
    mean_pop = float(popularity[[i for r in lists for i in r]].mean()) / float(popularity.mean())
    assert got["popularity_at_10"] == pytest.approx(mean_pop)


def test_fit_logs_ranking_metrics_for_a_kg_model(tiny_recipe, isolated):
    from dglrec.runs import tracking
    from dglrec.runs.recipes import load_recipe

    cfg = load_recipe(tiny_recipe, ["train.epochs=1", "tracking.log_model=false"])
    run_id, result = pipeline.fit(cfg, log=lambda _: None)
    for k in (5, 10, 20, 50):
        assert 0 <= result.test[f"recall_at_{k}"] <= 1
    _, metrics, _ = tracking.get_run(run_id)
    assert metrics["test_ndcg_at_10"] == result.test["ndcg_at_10"]
    assert metrics["test_recall_at_50"] >= metrics["test_recall_at_5"]
