"""LightGCN against a dense-matrix computation, and its fit on the tiny KG."""

from pathlib import Path

import torch

from data_prep.kg_dataset import KGRecDataset
from dglrec.models.cf.lightgcn import LightGCN
from dglrec.runs import pipeline
from dglrec.runs.recipes import load_recipe
from tests.conftest import assert_evaluate_matches


def tiny_dataset() -> KGRecDataset:
    import dgl

    # users 0..2, items 0..3; train positives (0,0) (0,1) (1,1) (2,3); one eval pair.
    train = torch.tensor([[0, 0, 1], [0, 1, 1], [1, 1, 1], [2, 3, 1], [1, 2, 0]])
    graph = dgl.heterograph(
        {("user", "interacts", "entity"): ([], []), ("entity", "kg", "entity"): ([], [])},
        num_nodes_dict={"user": 3, "entity": 4},
    )
    splits = {"train": train, "eval": train[:0], "test": train[:0]}
    return KGRecDataset(graph, splits, torch.arange(4), {"stats": {"relations": 0}})


def test_interaction_graph_uses_train_positives_only():
    graph = tiny_dataset().interaction_graph()
    src, dst = graph.edges()
    pairs = set(zip(src.tolist(), dst.tolist(), strict=True))
    # user u is node u, item i is node 3 + i; the negative (1, 2) is absent.
    assert pairs == {(0, 3), (3, 0), (0, 4), (4, 0), (1, 4), (4, 1), (2, 6), (6, 2)}
    degree = graph.in_degrees().float()
    torch.testing.assert_close(graph.edata["norm"], (degree[src] * degree[dst]).rsqrt())


def test_propagation_equals_dense_normalised_adjacency():
    torch.manual_seed(0)
    graph = tiny_dataset().interaction_graph()
    model = LightGCN(n_users=3, n_items=4, dim=5, n_layers=3)
    adjacency = torch.zeros(7, 7)
    src, dst = graph.edges()
    adjacency[dst, src] = graph.edata["norm"]
    e = model.embedding.weight.detach()
    layers = [e]
    for _ in range(3):
        layers.append(adjacency @ layers[-1])
    expected = torch.stack(layers).mean(0)
    torch.testing.assert_close(model.propagate(graph).detach(), expected)
    out = model(torch.tensor([0, 2]), torch.tensor([1, 0]), graph)
    torch.testing.assert_close(
        out.logits.detach(), torch.stack([expected[0] @ expected[4], expected[2] @ expected[3]])
    )


def test_lightgcn_fits_and_evaluates(tiny_raw, isolated):
    cfg = load_recipe(
        Path(__file__).parents[1] / "recipes" / "lightgcn.toml",
        ["data.name=tiny-kg", f"data.raw_dir={tiny_raw}", "train.epochs=3", "train.patience=0"],
        seed=2,
    )
    run_id, result = pipeline.fit(cfg, log=lambda _: None)
    assert len(result.history) == 3
    assert_evaluate_matches(run_id)
