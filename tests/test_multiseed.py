"""`dglrec fit --seeds`: one parent run, a child per seed, mean and std, failures reported."""

from __future__ import annotations

import statistics

import pytest

from dglrec.errors import ConfigError
from dglrec.runs import tracking
from dglrec.runs.groups import fit_seeds
from dglrec.runs.recipes import load_recipe
from dglrec.runs.seeds import parse_seeds, summarize


def test_parse_seeds():
    assert parse_seeds("3", 42) == [42, 43, 44]
    assert parse_seeds("1,5,9", 42) == [1, 5, 9]
    for bad in ("0", "x", "1,1"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad, 1)


def test_summary_is_mean_and_sample_std():
    out = summarize({1: {"test_auc": 0.7}, 2: {"test_auc": 0.8}, 3: {"test_auc": 0.9}})
    assert out["test_auc_mean"] == pytest.approx(0.8)
    assert out["test_auc_std"] == pytest.approx(statistics.stdev([0.7, 0.8, 0.9]))
    assert out["n_seeds"] == 3


def test_parent_carries_mean_and_std_of_its_children(tiny_recipe, isolated):
    cfg = load_recipe(tiny_recipe, ["train.epochs=1", "tracking.log_model=false"])
    result = fit_seeds(cfg, [3, 4], log=lambda _: None)
    assert sorted(result.runs) == [3, 4] and not result.failed
    aucs = [result.metrics[s]["test_auc"] for s in (3, 4)]
    assert aucs[0] != aucs[1]  # each seed is its own split and init
    _, metrics, tags = tracking.get_run(result.parent_run_id)
    assert metrics["test_auc_mean"] == pytest.approx(statistics.mean(aucs))
    assert metrics["test_auc_std"] == pytest.approx(statistics.stdev(aucs))
    assert tags["seeds"] == "3,4" and "protocol" in tags
    for seed, run_id in result.runs.items():
        child_params, child_metrics, child_tags = tracking.get_run(run_id)
        assert child_tags["mlflow.parentRunId"] == result.parent_run_id
        assert child_params["seed"] == str(seed)
        assert child_metrics["test_auc"] == result.metrics[seed]["test_auc"]


def test_a_failed_seed_is_reported_and_the_others_finish(tiny_recipe, isolated, monkeypatch):
    from dglrec.runs import pipeline

    real_fit = pipeline.fit

    def flaky_fit(cfg, **kwargs):
        if cfg.seed == 4:
            raise RuntimeError("node lost")
        return real_fit(cfg, **kwargs)

    monkeypatch.setattr(pipeline, "fit", flaky_fit)
    cfg = load_recipe(tiny_recipe, ["train.epochs=1", "tracking.log_model=false"])
    result = fit_seeds(cfg, [3, 4, 5], log=lambda _: None)
    assert sorted(result.runs) == [3, 5]
    assert result.failed == {4: "RuntimeError: node lost"}
    _, metrics, tags = tracking.get_run(result.parent_run_id)
    assert tags["failed_seeds"] == "4" and metrics["n_seeds"] == 2
