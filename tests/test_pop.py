"""Pop: a parameter-free model that the trainer only evaluates."""

from pathlib import Path

import torch

from dglrec.evaluation.metrics import roc_auc
from dglrec.runs import pipeline, tracking
from dglrec.runs.recipes import load_recipe
from tests.conftest import assert_evaluate_matches


def test_pop_scores_training_popularity_and_evaluates(tiny_raw, isolated):
    cfg = load_recipe(
        Path(__file__).parents[1] / "recipes" / "pop.toml",
        ["data.name=tiny-kg", f"data.raw_dir={tiny_raw}"],
        seed=6,
    )
    run_id, result = pipeline.fit(cfg, log=lambda _: None)
    dataset = pipeline.load_dataset(cfg, log=lambda _: None)
    train, test = dataset.splits["train"], dataset.splits["test"]
    counts = torch.bincount(train[train[:, 2] == 1][:, 1], minlength=dataset.n_items)
    assert result.best_epoch == 0
    assert abs(result.test["auc"] - roc_auc(test[:, 2].numpy(), counts[test[:, 1]].numpy())) < 1e-12
    _, metrics, _ = tracking.get_run(run_id)
    assert metrics["test_auc"] == result.test["auc"]
    assert_evaluate_matches(run_id, tolerance=1e-12)
