"""BPR-MF and the trainer's BPR objective."""

from pathlib import Path

import torch
import torch.nn.functional as F

from dglrec.runs import pipeline
from dglrec.runs.recipes import load_recipe
from dglrec.sampling.negatives import UnseenItemSampler
from dglrec.training.ctr import CTRTrainer
from tests.conftest import CTR_TEST_METRICS, assert_evaluate_matches

RECIPES = Path(__file__).parents[1] / "recipes"


def test_unseen_items_are_never_positives_and_uniform():
    torch.manual_seed(0)
    positives = torch.tensor([[0, 0], [0, 1], [0, 2], [0, 3], [0, 4], [1, 5], [2, 1], [2, 3]])
    sampler = UnseenItemSampler(positives, n_items=6)
    users = torch.tensor([0] * 300 + [1] * 3000 + [2] * 4000)
    items = sampler(users)
    assert bool((items[:300] == 5).all())  # user 0's only unseen item
    counts_1 = torch.bincount(items[300:3300], minlength=6)
    counts_2 = torch.bincount(items[3300:], minlength=6)
    assert counts_1[5] == 0 and counts_2[1] == 0 and counts_2[3] == 0
    # Uniform over the unseen items: 600 ± 4 sd for user 1, 1000 ± 4 sd for user 2.
    assert bool(((counts_1[:5] - 600).abs() < 4 * (3000 * 0.2 * 0.8) ** 0.5).all()), counts_1
    assert bool(((counts_2[[0, 2, 4, 5]] - 1000).abs() < 4 * (4000 * 0.25 * 0.75) ** 0.5).all())


def test_unseen_items_on_real_sized_random_data():
    gen = torch.Generator().manual_seed(1)
    positives = torch.stack(
        [
            torch.randint(0, 50, (2000,), generator=gen),
            torch.randint(0, 80, (2000,), generator=gen),
        ],
        1,
    )
    sampler = UnseenItemSampler(positives, n_items=80)
    users = torch.randint(0, 50, (5000,), generator=gen)
    items = sampler(users)
    seen = set(map(tuple, positives.tolist()))
    assert not any((u, i) in seen for u, i in zip(users.tolist(), items.tolist(), strict=True))
    assert int(items.min()) >= 0 and int(items.max()) < 80


def tiny_cfg(tiny_raw, *extra):
    return load_recipe(
        RECIPES / "bprmf.toml",
        [
            "data.name=tiny-kg",
            f"data.raw_dir={tiny_raw}",
            "train.epochs=3",
            "train.batch_size=64",
            "train.patience=0",
            *extra,
        ],
        seed=2,
    )


def test_bpr_loss_equals_formula(tiny_raw, isolated):
    cfg = tiny_cfg(tiny_raw, "train.l2=0")
    exp = pipeline.build(cfg, log=lambda _: None)
    trainer = CTRTrainer(exp.model, exp.dataset, exp.sampler, cfg, log=lambda _: None)
    train = exp.dataset.splits["train"]
    batch = exp.sampler.sample(trainer.kg, train[train[:, 2] == 1][:10], exp.dataset.item_entity)
    torch.manual_seed(9)
    loss, _, _ = trainer._bpr_terms(batch)
    torch.manual_seed(9)
    negatives = trainer._unseen(batch.users)
    user = exp.model.user_emb(batch.users)
    expected = -F.logsigmoid(
        (user * exp.model.item_emb(batch.items)).sum(-1)
        - (user * exp.model.item_emb(negatives)).sum(-1)
    ).mean()
    torch.testing.assert_close(loss, expected)
    # Negatives are never training positives of their user.
    positive_pairs = set(map(tuple, train[train[:, 2] == 1][:, :2].tolist()))
    assert not any(
        (u, i) in positive_pairs
        for u, i in zip(batch.users.tolist(), negatives.tolist(), strict=True)
    )


def test_bprmf_fits_logs_and_evaluates(tiny_raw, isolated):
    run_id, result = pipeline.fit(tiny_cfg(tiny_raw), log=lambda _: None)
    assert len(result.history) == 3 and CTR_TEST_METRICS <= set(result.test)
    assert_evaluate_matches(run_id)
