"""The fast paths give today's numbers: pair-tree blocks against deduplicated states.

Every KG model that reads user-conditioned blocks (KGCN, KAISG, MGWA, KGNN-LS), one and
two hops, every sampler (uniform, full, importance top-K), on the tiny synthetic KG:

* scoring (``CTRTrainer.score_pairs``, what the eval/test metrics and the full ranking
  call) gives the same logits within 1e-5 and the same ranking metrics to 4 decimals;
* the training step on the same batches gives the same loss (data, L2 and auxiliary
  terms) and the same gradients, within 1e-5. (Over a whole epoch float32 rounding
  differences, which Adam rescales, grow past 1e-5; the step is what the paths share.)

Both paths call the same DGL block sampler on the same batches, so the uniform sampler
consumes torch's generator identically and draws the same neighbours: the comparison
needs no fixed neighbourhood. Only the conditioning differs (``dedup=True``: one state
per distinct (user, node), today's path; ``dedup=False``: one tree per pair).
"""

import copy

import pytest
import torch

from dglrec.evaluation.ranking import evaluate_ranking
from dglrec.runs import pipeline
from dglrec.seeding import derived_seed, reseed_sampling
from tests.conftest import recipe_on

MODELS = {
    "kgcn": "kgcn.toml",
    "kaisg": "kaisg.toml",
    "mgwa": "mgwa.toml",
    "kgnn_ls": "kgnn_ls.toml",
}
SAMPLERS = ("uniform", "full", "importance_topk")


def build_trainer(tiny_raw, model: str, n_layers: int, sampler: str):
    overrides = [
        f"model.n_layers={n_layers}",
        f"sampler.kind={sampler}",
        "sampler.n_neighbors=3",
        "model.dim=8",
        "eval.batch_size=50",  # several eval batches, so batch composition matters
        "train.batch_size=16",
    ]
    overrides.append("model.init=random")
    cfg = recipe_on(MODELS[model], "tiny-kg", tiny_raw, *overrides)
    built = pipeline.build(cfg, log=lambda _: None)
    trainer = pipeline.trainer_for(built, log=lambda _: None)
    with torch.no_grad():  # away from the initialisation, so attention and gates matter
        for p in trainer.model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return trainer


def ranking(trainer):
    splits = trainer.dataset.splits
    return evaluate_ranking(
        trainer.score_pairs,
        splits["train"],
        splits["test"],
        trainer.dataset.n_users,
        trainer.dataset.n_items,
        [2, 5],
        chunk_users=7,
    )


def training_steps(trainer, dedup: bool, n_batches: int = 3):
    """Losses and summed gradients of the first training batches of epoch 1 (no update)."""
    trainer.model.train()
    reseed_sampling(derived_seed(trainer.cfg.seed, 1))
    generator = torch.Generator().manual_seed(derived_seed(trainer.cfg.seed, 1))
    trainer.model.zero_grad()
    losses = []
    batches = trainer.batches(
        trainer.train_pairs, trainer.cfg.train.batch_size, generator, dedup=dedup
    )
    for _, batch in zip(range(n_batches), batches, strict=False):
        data_loss, penalty, aux = trainer._bce_terms(batch)
        loss = data_loss + sum(aux.values()) + trainer.cfg.train.l2 * penalty
        loss.backward()
        losses.append(torch.stack([data_loss, penalty, *aux.values()]).detach())
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return torch.cat(losses), grads


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("model", list(MODELS))
def test_pair_trees_score_and_train_like_deduplicated_states(
    tiny_raw, isolated, model, n_layers, sampler
):
    trainer = build_trainer(tiny_raw, model, n_layers, sampler)
    # The recipe's sampler takes pair trees for one block, deduplicated states from two
    # (KGNN-LS samples max(n_layers, label_hops) blocks).
    assert trainer.sampler.dedup is (trainer.model.n_blocks > 1)
    splits = trainer.dataset.splits
    pairs = torch.cat([splits["test"], splits["eval"]])
    start = copy.deepcopy(trainer.model.state_dict())

    results = {}
    for dedup in (True, False):
        trainer.sampler.dedup = dedup
        trainer.model.load_state_dict(start)
        trainer._init_optimizers()
        logits = trainer.score_pairs(pairs)
        metrics = ranking(trainer)
        results[dedup] = logits, metrics, *training_steps(trainer, dedup)

    old, new = results[True], results[False]
    torch.testing.assert_close(
        torch.from_numpy(new[0]), torch.from_numpy(old[0]), atol=1e-5, rtol=0
    )
    assert old[1].keys() == new[1].keys()
    for name in old[1]:
        assert round(new[1][name], 4) == round(old[1][name], 4), name
    torch.testing.assert_close(new[2], old[2], atol=1e-5, rtol=0)
    for name, value in old[3].items():
        torch.testing.assert_close(new[3][name], value, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model", ["bprmf.toml", "lightgcn.toml", "ripplenet.toml", "mkr.toml"])
def test_id_models_score_alike_in_large_batches(tiny_raw, isolated, model):
    """Models that read ids score in batches of SCORING_BATCH pairs: the same logits."""
    cfg = recipe_on(model, "tiny-kg", tiny_raw, "eval.batch_size=50")
    built = pipeline.build(cfg, log=lambda _: None)
    trainer = pipeline.trainer_for(built, log=lambda _: None)
    trainer.train_epoch(1)
    assert trainer.sampler.scoring_batch_size(50) > 50
    pairs = torch.cat([trainer.dataset.splits["test"], trainer.dataset.splits["eval"]])
    new = trainer.score_pairs(pairs)
    trainer.sampler.dedup = True  # today's batching
    assert trainer.sampler.scoring_batch_size(50) == 50
    old = trainer.score_pairs(pairs)
    torch.testing.assert_close(torch.from_numpy(new), torch.from_numpy(old), atol=1e-5, rtol=0)


def test_ripplenet_scores_per_distinct_user_like_per_pair(tiny_raw, isolated):
    """RippleNet's scoring computes R_i h_i once per user: the training path's logits."""
    cfg = recipe_on("ripplenet.toml", "tiny-kg", tiny_raw)
    built = pipeline.build(cfg, log=lambda _: None)
    model = built.model
    pairs = built.dataset.splits["test"]
    users, items = pairs[:, 0], pairs[:, 1]
    model.train()
    per_pair = model(users, items).logits.detach()
    model.eval()
    with torch.no_grad():
        per_user = model(users, items).logits
    torch.testing.assert_close(per_user, per_pair, atol=1e-5, rtol=0)
