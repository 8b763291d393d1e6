"""GCN edge regression on HetRec: liking scores, leak-free splits and blocks, the variants."""

from __future__ import annotations

import math
from pathlib import Path

import dgl
import numpy as np
import pytest
import torch

from data_prep.hetrec import EdgeProtocol, build, liking_scores, split_codes
from dglrec.models.edge.gcn_edge import EdgeWeightedConv
from dglrec.runs import pipeline
from dglrec.training.edge import EdgeRegressionTrainer
from tests.conftest import assert_evaluate_matches, recipe_on

RECIPES = Path(__file__).parents[1] / "recipes"
HETREC_RECIPES = sorted(p.name for p in RECIPES.glob("*.toml") if "hetrec" in p.name)


def tiny(recipe: str, raw: Path, *overrides: str, seed: int = 3):
    return recipe_on(recipe, "tiny-hetrec", raw, *overrides, seed=seed)


def test_liking_score_is_the_formula_including_the_max_count_one_user():
    users = np.array([0, 0, 0, 1, 1, 2])
    counts = np.array([100, 10, 1, 1, 1, 7])
    scores = liking_scores(users, counts)
    expected = [1.0, math.log(10) / math.log(100), 0.0, 1.0, 1.0, 1.0]
    assert scores == pytest.approx(expected)
    assert not np.isnan(scores).any()


def test_clean_split_keeps_both_directions_together_and_paper_split_does_not():
    clean = split_codes(1000, EdgeProtocol(seed=1))
    assert (clean[:1000] == clean[1000:]).all()
    assert np.bincount(clean[:1000]).tolist() == [800, 100, 100]
    paper = split_codes(1000, EdgeProtocol(seed=1, paper_protocol=True))
    assert (paper[:1000] != paper[1000:]).any()


def test_build_reads_the_hetrec_layout(tiny_hetrec):
    data = build(EdgeProtocol(dataset="tiny-hetrec"), tiny_hetrec, {})
    stats = data.meta["stats"]
    assert stats["users"] == 26 and stats["artists"] == 40 and stats["users_max_count_1"] == 1
    assert torch.isfinite(data.weight).all() and data.weight.min() >= 0 and data.weight.max() <= 1
    # Edge i and edge i + n are the two directions of one pair, with one score.
    n = data.n_pairs
    assert torch.equal(data.src[:n], data.dst[n:]) and torch.equal(data.weight[:n], data.weight[n:])
    assert data.meta["artist_names"][0] == "Artist 10"
    assert data.meta["tag_names"]["2"] == "música"
    assert data.friends.tolist() == [[0, 1], [1, 0]]


def test_held_out_edges_never_reach_a_training_block(tiny_hetrec, isolated):
    cfg = tiny("gcn_hetrec_edge_weight.toml", tiny_hetrec, "train.batch_size=16")
    built = pipeline.build(cfg, log=lambda _: None)
    dataset = built.dataset
    trainer = EdgeRegressionTrainer(built.model, dataset, cfg, log=lambda _: None)
    graph_eid = trainer.graph.edata["eid"]
    assert (dataset.split[graph_eid] == 0).all()  # the message graph: training edges only
    reverse = dataset.reverse_eids()
    n_batches = 0
    for _, pair_graph, blocks in trainer.training_loader():
        seeds = graph_eid[pair_graph.edata[dgl.EID]]
        forbidden = torch.cat([seeds, reverse[seeds]])
        for block in blocks:
            used = graph_eid[block.edata[dgl.EID]]
            assert (dataset.split[used] == 0).all()
            assert not torch.isin(used, forbidden).any()
        n_batches += 1
    assert n_batches > 1


def test_paper_protocol_keeps_held_out_edges_in_the_message_graph(tiny_hetrec, isolated):
    cfg = tiny("gcn_hetrec_edge_weight_paper.toml", tiny_hetrec)
    built = pipeline.build(cfg, log=lambda _: None)
    trainer = EdgeRegressionTrainer(built.model, built.dataset, cfg, log=lambda _: None)
    assert (built.dataset.split[trainer.graph.edata["eid"]] > 0).any()


def test_attention_weights_sum_to_one_over_each_nodes_in_edges():
    torch.manual_seed(0)
    graph = dgl.graph((torch.tensor([0, 1, 2, 3, 0, 2]), torch.tensor([1, 0, 0, 0, 3, 3])))
    layer = EdgeWeightedConv(4, 4, attention=True, activation=True)
    a = layer.attention_weights(graph, torch.randn(4, 4))
    totals = torch.zeros(4).index_add_(0, graph.edges()[1], a)
    assert totals[graph.in_degrees() > 0].tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert (a > 0).all()


@pytest.mark.parametrize("recipe", ["gcn_hetrec_attention.toml", "gcn_hetrec_naive.toml"])
def test_without_augmentation_two_runs_with_one_seed_are_identical(recipe, tiny_hetrec, isolated):
    cfg = tiny(recipe, tiny_hetrec)
    _, first = pipeline.fit(cfg, log=lambda _: None)
    _, second = pipeline.fit(tiny(recipe, tiny_hetrec), log=lambda _: None)
    assert first.history[-1]["train_loss"] == second.history[-1]["train_loss"]
    assert first.test == second.test


def test_augmentation_noise_is_training_only():
    from dglrec.models.edge.gcn_edge import GCNEdgeRegressor

    model = GCNEdgeRegressor(2, 2, hidden=4, edge_weight=True, augmentation_std=0.1)
    graph = dgl.graph((torch.tensor([0, 2]), torch.tensor([2, 0])), num_nodes=4)
    graph.edata["w"] = torch.tensor([0.5, 0.5])
    model.eval()
    assert torch.equal(model.message_coefficients(graph), graph.edata["w"])
    model.train()
    assert not torch.equal(model.message_coefficients(graph), graph.edata["w"])


def test_user_mean_and_global_mean_are_the_training_means(tiny_hetrec, isolated):
    cfg = tiny("hetrec_user_mean.toml", tiny_hetrec)
    built = pipeline.build(cfg, log=lambda _: None)
    dataset = built.dataset
    train = dataset.edges_of("train")
    users, _ = dataset.user_item(train)
    for user in users.unique()[:5].tolist():
        expected = dataset.weight[train][users == user].mean()
        assert built.model.user_mean[user].item() == pytest.approx(expected.item())
    glob = pipeline.build(tiny("hetrec_global_mean.toml", tiny_hetrec), log=lambda _: None)
    assert glob.model.mean.item() == pytest.approx(dataset.weight[train].mean().item())


@pytest.mark.parametrize("recipe", HETREC_RECIPES)
def test_every_hetrec_recipe_fits_end_to_end_on_a_tiny_graph(recipe, tiny_hetrec, isolated):
    cfg = tiny(recipe, tiny_hetrec)
    cfg.sweep = {}
    run_id, result = pipeline.fit(cfg, log=lambda _: None)
    assert set(result.test) == {"mse", "mae"}
    assert 0 <= result.test["mae"] < 1


def test_evaluate_rescores_a_logged_gcn(tiny_hetrec, isolated):
    cfg = tiny("gcn_hetrec.toml", tiny_hetrec, "tracking.log_model=true")
    cfg.sweep = {}
    run_id, _ = pipeline.fit(cfg, log=lambda _: None)
    assert_evaluate_matches(run_id, tolerance=1e-6)


def test_metrics_are_over_all_test_edges(tiny_hetrec, isolated):
    cfg = tiny("hetrec_global_mean.toml", tiny_hetrec)
    built = pipeline.build(cfg, log=lambda _: None)
    trainer = EdgeRegressionTrainer(built.model, built.dataset, cfg, log=lambda _: None)
    test = built.dataset.edges_of("test")
    error = built.dataset.weight[test].double() - built.model.mean.double()
    got = trainer.evaluate("test")
    assert got["mse"] == pytest.approx(error.pow(2).mean().item(), rel=1e-6)
    assert got["mae"] == pytest.approx(error.abs().mean().item(), rel=1e-6)


def test_task_and_model_must_agree(tiny_hetrec, isolated):
    from dglrec.errors import ConfigError

    with pytest.raises(ConfigError, match="task.kind"):
        pipeline.build(
            tiny("gcn_hetrec.toml", tiny_hetrec, "task.kind=ctr", "eval.select_metric=auc")
        )
    with pytest.raises(ConfigError, match="select_metric"):
        tiny("gcn_hetrec.toml", tiny_hetrec, "eval.select_metric=auc")


def test_a_sweep_picks_the_lowest_eval_mse(tiny_hetrec, isolated):
    from dglrec.runs.groups import run_sweep

    cfg = tiny("gcn_hetrec.toml", tiny_hetrec, "train.epochs=1")
    cfg.sweep = {"train.lr": [1e-4, 0.05]}
    _, records = run_sweep(cfg, log=lambda _: None)
    best = min(records, key=lambda r: r["eval_mse"])
    from dglrec.runs import tracking

    parent = tracking.get_run(records[0]["run_id"])[2]["mlflow.parentRunId"]
    assert tracking.get_run(parent)[2]["best_run_id"] == best["run_id"]


def test_a_zero_play_count_is_named_with_its_file(tiny_hetrec, tmp_path):
    import shutil

    from dglrec.errors import DataFormatError

    raw = tmp_path / "bad"
    shutil.copytree(tiny_hetrec, raw)
    with open(raw / "user_artists.dat", "a") as f:
        f.write("9999\t10\t0\n")
    last_line = len((raw / "user_artists.dat").read_text().splitlines())
    with pytest.raises(
        DataFormatError, match=rf"user_artists.dat:{last_line}: play count 0 for user 9999"
    ):
        build(EdgeProtocol(dataset="tiny-hetrec"), raw, {})
