"""MKR and MMSS_MKR: cross & compress, squashers, KGE scores, the alternation schedule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dglrec.models.kg.mkr import (
    MKR,
    CrossCompressUnit,
    kge_score,
    multiple_prediction,
)
from dglrec.runs import pipeline
from dglrec.runs.recipes import load_recipe
from dglrec.runs.sweep import expand
from dglrec.training.ctr import CTRTrainer
from tests.conftest import CTR_TEST_METRICS, assert_evaluate_matches, recipe_on

RECIPES = Path(__file__).parents[1] / "recipes"


def tiny(recipe: str, raw: Path, *overrides: str, seed: int = 5):
    return recipe_on(recipe, "tiny-kg", raw, *overrides, seed=seed)


def test_cross_compress_matches_hand_computation_on_2d_vectors():
    unit = CrossCompressUnit(2)
    with torch.no_grad():
        unit.w_vv.copy_(torch.tensor([0.5, 1.0]))
        unit.w_ev.copy_(torch.tensor([1.0, -1.0]))
        unit.w_ve.copy_(torch.tensor([2.0, 0.0]))
        unit.w_ee.copy_(torch.tensor([0.0, 1.0]))
        unit.b_v.copy_(torch.tensor([0.1, 0.0]))
        unit.b_e.copy_(torch.tensor([0.0, 0.2]))
    v, e = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]])
    # C = v eᵀ = [[3, -1], [6, -2]];  Cᵀ = [[3, 6], [-1, -2]]
    # v' = C w_vv + Cᵀ w_ev + b_v = [0.5, 1.0] + [-3, 1] + [0.1, 0] = [-2.4, 2.0]
    # e' = C w_ve + Cᵀ w_ee + b_e = [6, 12] + [6, -2] + [0, 0.2] = [12, 10.2]
    v_next, e_next = unit(v, e)
    assert torch.allclose(v_next, torch.tensor([[-2.4, 2.0]]))
    assert torch.allclose(e_next, torch.tensor([[12.0, 10.2]]))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


FORMULA = {"sigmoid": sigmoid, "tanh": math.tanh, "softsign": lambda x: x / (1 + abs(x))}
COMBINATIONS = [
    ["sigmoid"],
    ["tanh"],
    ["softsign"],
    ["sigmoid", "tanh"],
    ["sigmoid", "softsign"],
    ["tanh", "softsign"],
    ["sigmoid", "tanh", "softsign"],
]


@pytest.mark.parametrize("squashers", COMBINATIONS)
def test_every_squasher_combination_gives_the_formula(squashers):
    for s in (-2.5, -0.3, 0.0, 0.7, 4.0):
        expected = sigmoid(sum(FORMULA[f](s) for f in squashers) / len(squashers))
        got = torch.sigmoid(multiple_prediction(torch.tensor([s], dtype=torch.float64), squashers))
        assert got.item() == pytest.approx(expected, abs=1e-12)
    # MKR (no squashers): ŷ = σ(s).
    assert torch.sigmoid(multiple_prediction(torch.tensor([0.7]), [])).item() == pytest.approx(
        sigmoid(0.7), abs=1e-7
    )


def test_multiple_calculation_score_is_the_mean_of_four_functions():
    for x in (-3.0, -0.5, 0.0, 1.2):
        four = (sigmoid(x) + math.tanh(x) + x / (1 + abs(x)) + math.log1p(math.exp(x))) / 4
        value = torch.tensor([x], dtype=torch.float64)
        assert kge_score(value, True).item() == pytest.approx(four, abs=1e-12)
        assert kge_score(value, False).item() == pytest.approx(sigmoid(x), abs=1e-12)


def test_improved_loss_contrasts_true_and_corrupted_triples():
    torch.manual_seed(0)
    args = dict(n_users=3, n_items=4, n_entities=6, n_relations=2, dim=4)
    items, heads = torch.tensor([0, 1, 3]), torch.tensor([0, 1, 3])
    relations, tails, corrupted = (
        torch.tensor([0, 1, 1]),
        torch.tensor([4, 5, 2]),
        torch.tensor([5, 2, 0]),
    )
    plain = MKR(**args)
    improved = MKR(**args, improved_loss=True, multi_calculation=True, kge_weight=0.5)
    improved.load_state_dict(plain.state_dict())
    out = plain.kge_loss(items, heads, relations, tails, corrupted)
    assert out.loss.item() == pytest.approx(
        -plain.triple_scores(items, heads, relations, tails).sum().item()
    )
    out = improved.kge_loss(items, heads, relations, tails, corrupted)
    true = improved.triple_scores(items, heads, relations, tails).sum()
    false = improved.triple_scores(items, heads, relations, corrupted).sum()
    assert out.loss.item() == pytest.approx(-0.5 * (true - false).item())


class ScheduleSpy:
    """Wraps a model's two objectives to record the order of steps."""

    def __init__(self, model):
        self.events: list[str] = []
        forward, kge_loss = model.forward, model.kge_loss

        def spy_forward(*args, **kwargs):
            if model.training:
                self.events.append("rs")
            return forward(*args, **kwargs)

        def spy_kge(*args, **kwargs):
            self.events.append("kge")
            return kge_loss(*args, **kwargs)

        model.forward, model.kge_loss = spy_forward, spy_kge


@pytest.mark.parametrize("interval", [1, 3, 7])
def test_kge_step_runs_exactly_every_kge_interval_rs_steps(interval, tiny_raw, isolated):
    cfg = tiny("mkr.toml", tiny_raw, f"train.kge_interval={interval}", "train.epochs=3")
    built = pipeline.build(cfg, log=lambda _: None)
    spy = ScheduleSpy(built.model)
    trainer = CTRTrainer(built.model, built.dataset, built.sampler, cfg, log=lambda _: None)
    trainer.fit()
    n_train = len(built.dataset.splits["train"])
    n_batches = -(-n_train // cfg.train.batch_size)
    assert n_batches % 7 != 0  # the schedule must cross epoch boundaries for interval 7
    rs_step, kge_after = 0, []
    for event in spy.events:
        if event == "rs":
            rs_step += 1
        else:
            kge_after.append(rs_step)
    assert rs_step == 3 * n_batches
    assert kge_after == list(range(interval, rs_step + 1, interval))


def test_objectives_are_logged_separately_and_the_run_resumes(tiny_raw, isolated):
    from dglrec.runs import tracking

    cfg = tiny("mmss_mkr.toml", tiny_raw, "model.dim=8", "train.kge_interval=2", "train.lr=0.01")
    cfg.tracking.log_model = True
    run_id, result = pipeline.fit(cfg, log=lambda _: None)
    assert {"train_loss", "train_loss_kge"} <= set(result.history[0])
    for key in ("train_loss", "train_loss_kge"):
        assert [step for step, _ in tracking.metric_history(run_id, key)] == [1, 2]
    assert_evaluate_matches(run_id)
    # Both optimizers' states are checkpointed: resuming after epoch 1 equals the full run.
    cfg3 = tiny("mmss_mkr.toml", tiny_raw, "model.dim=8", "train.kge_interval=2", "train.lr=0.01")
    cfg3.train.epochs = 1
    first_id, _ = pipeline.fit(cfg3, log=lambda _: None)
    cfg_resumed, state = pipeline.resume_point(first_id, ["train.epochs=2"])
    assert state["kge_optimizer"] is not None
    _, resumed = pipeline.fit(
        cfg_resumed, resume_run_id=first_id, resume_state=state, log=lambda _: None
    )
    assert resumed.test == pytest.approx(result.test, abs=1e-6)


@pytest.mark.parametrize(
    "recipe",
    ["mkr.toml", "mmss_mkr.toml", "sm_mkr.toml", "ms_mkr.toml", "ss_mkr.toml", "mkr_table4.toml"],
)
def test_mkr_family_recipes_fit_end_to_end_on_tiny_kg(recipe, tiny_raw, isolated):
    cfg = tiny(recipe, tiny_raw, "model.dim=8")
    _, result = pipeline.fit(cfg, log=lambda _: None)
    assert CTR_TEST_METRICS <= set(result.test)
    assert len(result.history) == 2


def test_ablation_recipes_switch_exactly_one_part_on():
    switches = {}
    for name in ("mmss_mkr", "sm_mkr", "ms_mkr", "ss_mkr", "mkr_table4"):
        model = load_recipe(RECIPES / f"{name}.toml").model
        switches[name] = (
            bool(model["squashers"]),
            model["multi_calculation"],
            model["improved_loss"],
        )
    assert switches == {
        "mmss_mkr": (True, True, True),
        "sm_mkr": (True, False, False),
        "ms_mkr": (False, True, False),
        "ss_mkr": (False, False, True),
        "mkr_table4": (False, False, False),
    }


def test_table7_and_table8_sweeps_expand_to_the_papers_grids(tiny_raw, isolated):
    table7 = expand(load_recipe(RECIPES / "mmss_mkr_table7.toml"))
    assert [t.cfg.model["squashers"] for t in table7] == COMBINATIONS
    table8 = expand(load_recipe(RECIPES / "mmss_mkr_table8.toml"))
    assert [t.cfg.model["high_layers"] for t in table8] == [1, 2, 3, 4, 5]
    # Each trial's recipe fits on the tiny KG (one epoch, the deepest H).
    cfg = tiny(
        "mmss_mkr_table8.toml", tiny_raw, "model.dim=8", "model.high_layers=5", "train.epochs=1"
    )
    cfg.sweep = {}
    _, result = pipeline.fit(cfg, log=lambda _: None)
    assert 0 <= result.test["auc"] <= 1


def test_table7_sweep_runs_end_to_end_on_tiny_kg(tiny_raw, isolated):
    """`dglrec sweep recipes/mmss_mkr_table7.toml`, shrunk to two squasher sets and one epoch."""
    from dglrec.runs.groups import run_sweep

    cfg = tiny("mmss_mkr_table7.toml", tiny_raw, "model.dim=8", "train.epochs=1")
    cfg.sweep = {"model.squashers": [["sigmoid"], ["tanh", "softsign"]]}
    _, records = run_sweep(cfg, log=lambda _: None)
    assert [r["overrides"] for r in records] == [
        ['model.squashers=["sigmoid"]'],
        ['model.squashers=["tanh", "softsign"]'],
    ]
    assert all(0 <= r["test_auc"] <= 1 for r in records)
