"""Grid sweeps: expansion, errors, and a local sweep on the tiny KG."""

import tomllib

import pytest

from dglrec.errors import ConfigError
from dglrec.runs import tracking
from dglrec.runs.groups import run_sweep
from dglrec.runs.recipes import load_recipe, resolve
from dglrec.runs.sweep import expand


def test_grid_expands_in_order_and_round_trips(tmp_path):
    cfg = load_recipe(None, ["sweep.sampler.n_neighbors=[4, 8]", "sweep.model.n_layers=[1, 2]"])
    assert cfg.sweep == {"sampler.n_neighbors": [4, 8], "model.n_layers": [1, 2]}
    trials = expand(cfg)
    assert [(t.cfg.sampler.n_neighbors, t.cfg.model["n_layers"]) for t in trials] == [
        (4, 1),
        (4, 2),
        (8, 1),
        (8, 2),
    ]
    assert all(t.cfg.sweep == {} for t in trials)
    assert resolve(tomllib.loads(cfg.to_toml())) == cfg


def test_bad_sweep_keys_are_named():
    with pytest.raises(ConfigError, match="sampler.n_neighbours"):
        expand(load_recipe(None, ["sweep.sampler.n_neighbours=[4]"]))
    with pytest.raises(ConfigError, match="train.epochs: expected int"):
        expand(load_recipe(None, ["sweep.train.epochs=['many']"]))
    with pytest.raises(ConfigError, match="no \\[sweep\\]"):
        expand(load_recipe(None))


def test_local_sweep_logs_children_and_picks_best_on_eval(tiny_recipe, isolated):
    cfg = load_recipe(
        tiny_recipe,
        ["train.epochs=1", "tracking.log_model=false", "sweep.sampler.n_neighbors=[2, 4, 8]"],
    )
    parent_id, records = run_sweep(cfg, log=lambda _: None)
    assert len(records) == 3
    best = max(records, key=lambda r: r["eval_auc"])
    _, metrics, tags = tracking.get_run(parent_id)
    assert tags["best_run_id"] == best["run_id"] and tags["selected_by"] == "eval_auc"
    assert metrics["best_eval_auc"] == pytest.approx(best["eval_auc"])
    assert metrics["test_auc"] == pytest.approx(best["test_auc"])
    for record in records:
        params, _, child_tags = tracking.get_run(record["run_id"])
        assert child_tags["mlflow.parentRunId"] == parent_id
        assert params["sampler.n_neighbors"] == record["overrides"][0].split("=")[1]
    assert "**best**" in tracking.download_artifact(parent_id, "trials.md").read_text()
