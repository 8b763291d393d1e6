"""The cold-item slice every CTR fit reports: items with at most 2 training positives."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from dglrec.evaluation.metrics import cold_auc, cold_items
from dglrec.evaluation.ranking import evaluate_ranking
from dglrec.runs import pipeline, tracking
from dglrec.runs.recipes import load_recipe
from tests.test_ranking import positives_by_user


def test_cold_items_by_hand():
    train = torch.tensor(
        [[0, 0, 1], [1, 0, 1], [2, 0, 1], [0, 1, 1], [1, 1, 1], [0, 2, 1], [1, 3, 0], [2, 3, 0]]
    )
    # item 0: 3 positives (warm); 1: 2; 2: 1; 3: negatives only; 4: never seen.
    assert cold_items(train, 5).tolist() == [False, True, True, True, True]
    assert cold_items(train, 5, max_positives=0).tolist() == [False, False, False, True, True]


def test_cold_auc_is_the_auc_of_the_cold_pairs():
    rng = np.random.default_rng(0)
    pairs = torch.tensor([[u, i, int(rng.random() < 0.5)] for u in range(20) for i in range(6)])
    scores = rng.random(len(pairs))
    cold = torch.tensor([False, True, False, True, True, False])
    mask = cold[pairs[:, 1]].numpy()
    out = cold_auc(pairs, scores, cold)
    assert out["cold_pairs"] == mask.sum() == 60
    assert out["cold_auc"] == pytest.approx(roc_auc_score(pairs[:, 2].numpy()[mask], scores[mask]))
    only_positives = pairs.clone()
    only_positives[:, 2] = 1
    assert math.isnan(cold_auc(only_positives, scores, cold)["cold_auc"])


def test_cold_recall_matches_a_per_user_count():
    gen = torch.Generator().manual_seed(3)
    n_users, n_items = 12, 30
    train = torch.stack(
        [
            torch.randint(0, n_users, (90,), generator=gen),
            torch.randint(0, n_items, (90,), generator=gen),
            torch.ones(90, dtype=torch.long),
        ],
        1,
    )
    test = torch.stack(
        [
            torch.randint(0, n_users, (40,), generator=gen),
            torch.randint(0, n_items, (40,), generator=gen),
            torch.ones(40, dtype=torch.long),
        ],
        1,
    )
    table = torch.rand(n_users, n_items, generator=gen)
    cold = cold_items(train, n_items)

    def score_pairs(pairs):
        return table[pairs[:, 0], pairs[:, 1]].numpy()

    out = evaluate_ranking(score_pairs, train, test, n_users, n_items, [5, 20], 5, cold=cold)
    seen = positives_by_user(train, n_users, n_items)
    relevant = positives_by_user(test, n_users, n_items) & ~seen
    recalls = {5: [], 20: []}
    for user in range(n_users):
        wanted = relevant[user] & cold
        if not wanted.any():
            continue
        ranked = sorted(
            (i for i in range(n_items) if not seen[user, i]), key=lambda i: (-table[user, i], i)
        )
        for k in recalls:
            recalls[k].append(sum(bool(wanted[i]) for i in ranked[:k]) / int(wanted.sum()))
    assert out["cold_ranking_users"] == len(recalls[5]) > 0
    for k in recalls:
        assert out[f"cold_recall_at_{k}"] == pytest.approx(np.mean(recalls[k]))
    assert "cold_recall_at_5" not in evaluate_ranking(
        score_pairs, train, test, n_users, n_items, [5], 5
    )


def test_every_ctr_fit_logs_the_cold_slice(tiny_recipe, isolated):
    cfg = load_recipe(tiny_recipe, ["train.epochs=1", "tracking.log_model=false"])
    run_id, result = pipeline.fit(cfg, log=lambda _: None)
    _, metrics, _ = tracking.get_run(run_id)
    for key in ("cold_auc", "cold_pairs", "cold_recall_at_20", "cold_ranking_users"):
        assert metrics[f"test_{key}"] == pytest.approx(result.test[key], nan_ok=True), key
    dataset = pipeline.build(cfg, log=lambda _: None).dataset
    cold = cold_items(dataset.splits["train"], dataset.n_items)
    assert result.test["cold_pairs"] == int(cold[dataset.splits["test"][:, 1]].sum())
