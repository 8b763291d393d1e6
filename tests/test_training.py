"""The trainer on the tiny KG: determinism, early stopping, best-epoch restore."""

from __future__ import annotations

import torch

from dglrec.runs.pipeline import build
from dglrec.runs.recipes import load_recipe
from dglrec.training.ctr import CTRTrainer


class RecordingTracker:
    run_id = None

    def __init__(self):
        self.metrics: list[tuple[int | None, dict]] = []
        self.checkpoints: dict[str, list[dict]] = {}

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def log_artifact(self, path, artifact_path=None):
        self.checkpoints.setdefault(path.name, []).append(torch.load(path))


def fit(recipe, overrides=(), resume=None):
    cfg = load_recipe(recipe, list(overrides))
    experiment = build(cfg, log=lambda _: None)
    tracker = RecordingTracker()
    trainer = CTRTrainer(
        experiment.model, experiment.dataset, experiment.sampler, cfg, tracker, log=lambda _: None
    )
    return trainer, trainer.fit(resume=resume), tracker


def test_same_seed_same_run_and_other_seed_differs(tiny_recipe):
    _, first, _ = fit(tiny_recipe)
    _, second, _ = fit(tiny_recipe)
    _, other, _ = fit(tiny_recipe, ["seed=4"])

    def timeless(history):
        return [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in history]

    assert timeless(first.history) == timeless(second.history)
    assert first.test == second.test
    assert [h["train_loss"] for h in first.history] != [h["train_loss"] for h in other.history]


def test_best_epoch_is_restored_before_test(tiny_recipe):
    trainer, result, tracker = fit(tiny_recipe, ["train.epochs=4"])
    eval_aucs = [h["eval_auc"] for h in result.history]
    assert result.best_epoch == 1 + max(range(4), key=eval_aucs.__getitem__)
    best = tracker.checkpoints["best.pt"][-1]
    assert best["epoch"] == result.best_epoch
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, best["model"][name]), name
    ctr = trainer.evaluate("test")
    assert ctr == {k: result.test[k] for k in ctr}  # result.test adds the top-K metrics
    assert [c["epoch"] for c in tracker.checkpoints["last.pt"]] == [1, 2, 3, 4]


def test_early_stopping_waits_patience_epochs(tiny_recipe):
    # With lr 0 nothing changes, so eval never improves after epoch 1.
    _, result, _ = fit(tiny_recipe, ["train.epochs=10", "train.patience=2", "train.lr=0"])
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.best_epoch == 1


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(tiny_recipe):
    _, full, tracker = fit(tiny_recipe, ["train.epochs=4"])
    after_two = tracker.checkpoints["last.pt"][1]
    assert after_two["epoch"] == 2
    _, resumed, _ = fit(tiny_recipe, ["train.epochs=4"], resume=after_two)
    assert resumed.test == full.test
    assert [h["eval_auc"] for h in resumed.history] == [h["eval_auc"] for h in full.history]


def test_l2_weight_changes_training(tiny_recipe):
    _, without, _ = fit(tiny_recipe, ["train.l2=0", "train.epochs=2"])
    _, heavy, _ = fit(tiny_recipe, ["train.l2=1.0", "train.epochs=2"])
    assert without.history[-1]["train_loss"] != heavy.history[-1]["train_loss"]
