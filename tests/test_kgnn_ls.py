"""KGNN-LS: label smoothness matches a hand computation and measurably acts."""

from __future__ import annotations

import math
from pathlib import Path

import dgl
import pytest
import torch
from dgl.dataloading import MultiLayerFullNeighborSampler

from dglrec.models.base import TrainingTensors
from dglrec.models.kg.kgnn_ls import KGNNLS
from dglrec.runs import pipeline
from dglrec.runs.recipes import load_recipe
from dglrec.sampling.blocks import make_pair_batch
from tests.conftest import assert_evaluate_matches

RECIPES = Path(__file__).parents[1] / "recipes"

# Items are entities 0, 1, 2, 5; attributes 3 (reached by relation 0) and 4 (relation 1).
TRIPLES = torch.tensor([[0, 0, 3], [1, 0, 3], [2, 0, 3], [0, 1, 4], [5, 1, 4]])
ITEM_ENTITY = torch.tensor([0, 1, 2, 5])
# User 0's training labels: item 0 (the target) 1, item 1 1, item 3 (entity 5) 0.
TRAIN = torch.tensor([[0, 0, 1], [0, 1, 1], [0, 3, 0], [1, 2, 1]])


def undirected_kg() -> dgl.DGLGraph:
    h, r, t = TRIPLES.unbind(1)
    kg = dgl.graph((torch.cat([h, t]), torch.cat([t, h])), num_nodes=6)
    kg.edata["rel"] = torch.cat([r, r])
    return kg


def model_and_batch(label_hops: int, ls_weight: float = 1.0, seed: int = 0):
    torch.manual_seed(seed)
    model = KGNNLS(2, 4, 6, 2, dim=4, n_layers=1, ls_weight=ls_weight, label_hops=label_hops)
    model.bind_training_data(TrainingTensors(TRAIN, ITEM_ENTITY, TRIPLES, 6, seed=0))
    sampler = MultiLayerFullNeighborSampler(model.n_blocks)
    batch = make_pair_batch(undirected_kg(), sampler, torch.tensor([[0, 0, 1]]), ITEM_ENTITY)
    return model, batch


def test_label_smoothness_equals_the_hand_computation():
    model, batch = model_and_batch(label_hops=2)
    # Attribute 3's neighbours: item 0 (the target, held out: ½), item 1 (1), item 2 (unknown: ½);
    # one relation, so equal weights: l(3) = 2/3. Attribute 4: item 0 (½), entity 5 (0): ¼.
    # Item 0: softmax over (e_u·e_r0, e_u·e_r1) of (2/3, ¼); its label is 1: R = -log l(0).
    user, relations = model.user_emb.weight[0], model.relation_emb.weight
    w = torch.softmax(relations @ user, 0)
    expected = -math.log(w[0].item() * 2 / 3 + w[1].item() * 0.25)
    assert model.label_smoothness(batch.blocks, batch.pair_index).item() == pytest.approx(
        expected, rel=1e-5
    )


def test_label_smoothness_changes_and_moves_the_gradients():
    model, batch = model_and_batch(label_hops=2)
    model.train()
    output = model(batch.blocks, batch.pair_index)
    ls = output.aux["loss_ls"]
    ls.backward()
    # The regulariser reaches the user and relation vectors that weight the edges.
    assert model.user_emb.weight.grad[0].abs().sum() > 0
    assert model.relation_emb.weight.grad.abs().sum() > 0
    # A step on it changes its value.
    with torch.no_grad():
        model.user_emb.weight -= 1.0 * model.user_emb.weight.grad
    after = model(batch.blocks, batch.pair_index).aux["loss_ls"]
    assert after.item() < ls.item()
    # The training loss's gradient differs from KGCN's (same init, ls_weight 0).
    grads = []
    for weight in (1.0, 0.0):
        fresh, _ = model_and_batch(label_hops=2, ls_weight=weight)
        fresh.train()
        out = fresh(batch.blocks, batch.pair_index)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, batch.labels)
        (bce + sum(out.aux.values())).backward()
        grads.append(fresh.relation_emb.weight.grad.clone())
        assert ("loss_ls" in out.aux) == (weight > 0)
    assert not torch.allclose(grads[0], grads[1])


def test_one_hop_label_propagation_is_the_constant_trap():
    """With H = 1 an item's neighbours are unlabelled attributes: R is log 2 with no gradient."""
    model, batch = model_and_batch(label_hops=1)
    model.train()
    ls = model(batch.blocks, batch.pair_index).aux["loss_ls"]
    assert ls.item() == pytest.approx(math.log(2), abs=1e-6)
    ls.backward()
    assert model.user_emb.weight.grad is None or model.user_emb.weight.grad.abs().sum() == 0


def test_labels_come_from_the_training_split_only(tiny_raw, isolated):
    cfg = load_recipe(
        RECIPES / "kgnn_ls.toml", ["data.name=tiny-kg", f"data.raw_dir={tiny_raw}"], seed=3
    )
    built = pipeline.build(cfg, log=lambda _: None)
    train = built.dataset.splits["train"]
    assert len(built.model.label_keys) == len(train)
    held_out = torch.cat([built.dataset.splits["eval"], built.dataset.splits["test"]])
    keys = held_out[:, 0] * built.dataset.n_entities + built.dataset.item_entity[held_out[:, 1]]
    assert not torch.isin(keys, built.model.label_keys).any()


def test_kgnn_ls_recipe_fits_logs_ls_and_evaluates(tiny_raw, isolated):
    cfg = load_recipe(
        RECIPES / "kgnn_ls.toml",
        ["data.name=tiny-kg", f"data.raw_dir={tiny_raw}", "train.epochs=2", "train.batch_size=64"],
        seed=5,
    )
    run_id, result = pipeline.fit(cfg, log=lambda _: None)
    losses = [h["train_loss_ls"] for h in result.history]
    assert losses[0] != losses[1] and all(v > 0 for v in losses)
    assert_evaluate_matches(run_id)
