"""Protocol switches: resampled training negatives, negative pools, LEAKY selection,
per-batch AUC and fixed adjacency (the equal-footing issue)."""

from __future__ import annotations

from collections import Counter

import dgl
import numpy as np
import pytest
import torch

from dglrec.errors import ConfigError, ProtocolError
from dglrec.evaluation.metrics import batch_mean_auc, ctr_metrics, roc_auc
from dglrec.runs import pipeline, tracking
from dglrec.runs.recipes import load_recipe
from dglrec.sampling.blocks import FixedAdjacencySampler, build_sampler
from dglrec.training.ctr import CTRTrainer
from tests.conftest import REPO, recipe_on


def _trainer(tiny_raw, *overrides: str, seed: int = 5) -> CTRTrainer:
    cfg = recipe_on("kgcn.toml", "tiny-kg", tiny_raw, *overrides, seed=seed)
    setup = pipeline.build(cfg, log=lambda _: None)
    return CTRTrainer(setup.model, setup.dataset, setup.sampler, cfg, log=lambda _: None)


def _known_positives(dataset) -> set[tuple[int, int]]:
    return {
        (u, i) for pairs in dataset.splits.values() for u, i, label in pairs.tolist() if label == 1
    }


# ------------------------------------------------------------------ train_negatives
def test_resampled_negatives_are_fresh_valid_and_keep_each_users_count(tiny_raw, isolated):
    trainer = _trainer(tiny_raw)
    assert trainer.cfg.data.train_negatives == "resample"  # the default for BCE models
    train = trainer.dataset.splits["train"]
    known = _known_positives(trainer.dataset)
    epochs = {e: trainer.epoch_pairs(e) for e in (1, 2, 3)}
    for pairs in epochs.values():
        assert torch.equal(pairs[pairs[:, 2] == 1], train[train[:, 2] == 1])  # positives kept
        negatives = pairs[pairs[:, 2] == 0]
        assert not {(u, i) for u, i, _ in negatives.tolist()} & known  # never a positive
        assert Counter(negatives[:, 0].tolist()) == Counter(train[train[:, 2] == 0][:, 0].tolist())
    assert not torch.equal(epochs[1], epochs[2]) and not torch.equal(epochs[2], epochs[3])
    # The fixed protocol (the reference codes) trains on the split's own negatives.
    fixed = _trainer(tiny_raw, 'data.train_negatives="fixed"')
    assert torch.equal(fixed.epoch_pairs(1), train) and torch.equal(fixed.epoch_pairs(2), train)


def test_resampled_negatives_depend_only_on_seed_and_epoch(tiny_raw, isolated):
    """What makes a resumed run draw what the uninterrupted run drew."""
    first, second = _trainer(tiny_raw), _trainer(tiny_raw)
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(first.epoch_pairs(2), second.epoch_pairs(2))
    other_seed = _trainer(tiny_raw, "data.split_seed=5", seed=6)  # same split, other run seed
    assert not torch.equal(first.epoch_pairs(2), other_seed.epoch_pairs(2))


def test_a_killed_and_resumed_fit_draws_the_same_negatives(tiny_recipe, isolated, monkeypatch):
    cfg = load_recipe(tiny_recipe, ["train.epochs=3", "tracking.log_model=false"])
    assert cfg.data.train_negatives == "resample"
    _, whole = pipeline.fit(cfg, log=lambda _: None)
    real = CTRTrainer.train_epoch

    def stop_in_epoch_3(self, epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        return real(self, epoch)

    monkeypatch.setattr(CTRTrainer, "train_epoch", stop_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        pipeline.fit(cfg, log=lambda _: None)
    monkeypatch.setattr(CTRTrainer, "train_epoch", real)
    (killed,) = [r for r in tracking.find_runs("attributes.status = 'KILLED'")]
    resumed_cfg, state = pipeline.resume_point(killed.info.run_id)
    assert state["epoch"] == 2 and resumed_cfg.data.train_negatives == "resample"
    _, resumed = pipeline.fit(
        resumed_cfg, resume_run_id=killed.info.run_id, resume_state=state, log=lambda _: None
    )
    assert resumed.test == whole.test
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]


def test_train_negatives_is_an_error_for_bpr_models(tiny_raw, isolated):
    with pytest.raises(ConfigError, match="data.train_negatives: bprmf is trained by BPR"):
        recipe_on("bprmf.toml", "tiny-kg", tiny_raw, 'data.train_negatives="resample"')
    assert recipe_on("bprmf.toml", "tiny-kg", tiny_raw).data.train_negatives is None


# ------------------------------------------------------------------ negative pools
def test_the_all_entities_pool_holds_non_item_entities(tiny_raw, isolated):
    items = pipeline.build(recipe_on("pop.toml", "tiny-kg", tiny_raw), log=lambda _: None)
    cfg = recipe_on("pop.toml", "tiny-kg", tiny_raw, 'data.negative_pool="all_entities"')
    pooled = pipeline.build(cfg, log=lambda _: None).dataset
    n_items = items.dataset.n_items
    assert pooled.n_items == pooled.n_entities > n_items  # every entity is rankable
    assert torch.equal(pooled.item_entity[:n_items], items.dataset.item_entity)
    negatives = torch.cat([p[p[:, 2] == 0] for p in pooled.splits.values()])
    assert (negatives[:, 1] >= n_items).any()  # genres, countries... as "items"
    positives = torch.cat([p[p[:, 2] == 1] for p in pooled.splits.values()])
    assert (positives[:, 1] < n_items).all()  # only real items were ever listened to
    assert "unrated KG entities" in pooled.meta["protocol"]
    assert cfg.protocol_departures() == ["negative_pool=all_entities"]


def test_the_inverse_popularity_pool_does_not_exclude_positives(tiny_raw, isolated):
    cfg = recipe_on("pop.toml", "tiny-kg", tiny_raw, 'data.negative_pool="inverse_popularity"')
    assert cfg.data.train_negatives == "fixed"  # resampling is uniform: not this lineage
    dataset = pipeline.build(cfg, log=lambda _: None).dataset
    negatives = torch.cat([p[p[:, 2] == 0] for p in dataset.splits.values()])
    positives = _known_positives(dataset)
    assert {(u, i) for u, i, _ in negatives.tolist()} & positives  # some "negatives" were played
    with pytest.raises(ConfigError, match="data.train_negatives: 'resample'"):
        recipe_on(
            "kgcn.toml",
            "tiny-kg",
            tiny_raw,
            'data.negative_pool="inverse_popularity"',
            'data.train_negatives="resample"',
        )


def test_the_all_entities_pool_needs_entities_besides_the_items(tiny_raw, tmp_path, isolated):
    raw = tmp_path / "items-only"
    raw.mkdir()
    for name in ("user_artists.dat", "item_index2entity_id.txt"):
        (raw / name).write_text((tiny_raw / name).read_text())
    entity_of = dict(
        line.split("\t") for line in (raw / "item_index2entity_id.txt").read_text().splitlines()
    )
    entities = list(entity_of.values())
    (raw / "kg.txt").write_text(f"{entities[0]}\tr\t{entities[1]}\n")  # items only
    cfg = recipe_on("pop.toml", "items-only", raw, 'data.negative_pool="all_entities"')
    with pytest.raises(ProtocolError, match="'all_entities' needs a KG with entities besides"):
        pipeline.build(cfg, log=lambda _: None)


@pytest.mark.e2e
def test_popularity_scores_higher_when_negatives_include_attributes(lastfm_raw, isolated):
    """MODELS.md's trap: under the all-entities pool, Pop alone looks like a strong model."""
    auc = {}
    for pool in ("items", "all_entities"):
        cfg = load_recipe(
            None,
            [
                "model.name=pop",
                f"data.raw_dir={lastfm_raw}",
                f'data.negative_pool="{pool}"',
                "eval.ranking_ks=[]",
                "tracking.log_model=false",
            ],
            seed=1,
        )
        _, result = pipeline.fit(cfg, log=lambda _: None)
        auc[pool] = result.test["auc"]
    assert auc["all_entities"] > auc["items"] + 0.05, auc


# ------------------------------------------------------------------ selection and AUC
def test_batch_mean_auc_by_hand():
    labels = np.array([1, 0, 1, 0, 1, 1, 0, 0, 1])
    scores = np.array([0.9, 0.1, 0.2, 0.95, 0.7, 0.6, 0.65, 0.3, 0.5])
    # Batches of 4: [1,0,1,0] with [.9,.1,.2,.95]: (pos, neg) pairs won 2 of 4 -> 0.5;
    # [1,1,0,0] with [.7,.6,.65,.3]: won 3 of 4 -> 0.75; [1] alone has no AUC.
    assert batch_mean_auc(labels, scores, 4) == pytest.approx((0.5 + 0.75) / 2)
    assert batch_mean_auc(labels, scores, 9) == pytest.approx(roc_auc(labels, scores))
    metrics = ctr_metrics(labels, scores, 0.5, auc="batch_mean", batch_size=4)
    assert metrics["auc"] == pytest.approx(0.625)


def test_select_on_test_is_labelled_leaky_and_allows_an_80_20_split(tiny_raw, isolated):
    with pytest.raises(ConfigError, match="data.split: the eval fraction is 0"):
        recipe_on("kgcn.toml", "tiny-kg", tiny_raw, "data.split=[0.8, 0.0, 0.2]")
    cfg = recipe_on(
        "kgcn.toml", "tiny-kg", tiny_raw, "data.split=[0.8, 0.0, 0.2]", 'eval.select_on="test"'
    )
    run_id, result = pipeline.fit(cfg, log=lambda _: None)
    _, metrics, tags = tracking.get_run(run_id)
    assert "LEAKY" in tags["mlflow.runName"] and "TEST auc (LEAKY)" in tags["protocol"]
    assert tags["protocol_departures"] == "select_on=test (LEAKY)"
    # The epoch was chosen on test: the best epoch's per-epoch metric is the test AUC.
    assert result.best_eval["auc"] == pytest.approx(result.test["auc"])


# ------------------------------------------------------------------ fixed adjacency
def test_fixed_adjacency_is_the_same_in_every_batch():
    gen = torch.Generator().manual_seed(0)
    kg = dgl.graph(
        (torch.randint(0, 40, (300,), generator=gen), torch.randint(0, 40, (300,), generator=gen)),
        num_nodes=40,
    )
    kg.edata["rel"] = torch.randint(0, 6, (300,), generator=gen)
    sampler = FixedAdjacencySampler(n_neighbors=3, n_layers=1, seed=11)

    def neighbours(seeds: torch.Tensor) -> dict[int, list[int]]:
        _, _, (block,) = sampler.sample_blocks(kg, seeds)
        src, dst = block.edges()
        ids = block.srcdata[dgl.NID]
        eids = block.edata[dgl.EID]
        assert torch.equal(block.edata["rel"], kg.edata["rel"][eids])  # the KG's own edges
        return {int(ids[d]): sorted(eids[dst == d].tolist()) for d in range(block.num_dst_nodes())}

    first = neighbours(torch.arange(0, 40, 2))
    torch.manual_seed(7)  # other batches, another global RNG state: same adjacency
    again = neighbours(torch.tensor([4, 0, 38, 2]))
    assert all(again[node] == first[node] for node in again)
    degree = kg.in_degrees()
    assert all(len(first[n]) == (3 if degree[n] > 0 else 0) for n in first)
    other = FixedAdjacencySampler(n_neighbors=3, n_layers=1, seed=12)
    _, _, (block,) = other.sample_blocks(kg, torch.arange(0, 40, 2))
    assert sorted(block.edata[dgl.EID].tolist()) != sorted(
        e for edges in first.values() for e in edges
    )
    assert isinstance(
        build_sampler("uniform", 1, 3, resample="fixed", seed=1).block_sampler,
        FixedAdjacencySampler,
    )


def test_fixed_adjacency_needs_the_uniform_sampler(tiny_raw, isolated):
    with pytest.raises(ConfigError, match="sampler.resample: 'fixed'"):
        recipe_on("kaisg.toml", "tiny-kg", tiny_raw, 'sampler.resample="fixed"')
    cfg = recipe_on("kgcn.toml", "tiny-kg", tiny_raw, 'sampler.resample="fixed"')
    assert cfg.protocol_departures() == ["adjacency=fixed"]


def test_ctr_switches_are_errors_for_edge_regression(tiny_hetrec, isolated):
    with pytest.raises(ConfigError, match="data.negative_pool: 'all_entities' is a CTR"):
        recipe_on(
            "gcn_hetrec_naive.toml", "tiny-hetrec", tiny_hetrec, 'data.negative_pool="all_entities"'
        )


@pytest.mark.parametrize(
    ("recipe", "overrides", "tagged"),
    [
        ("kgcn.toml", [], True),
        ("kgcn.toml", ["sampler.resample=fixed"], False),  # said otherwise: drawn once per run
        ("kgcn.toml", ["sampler.kind=full"], False),
        ("bprmf.toml", [], False),  # reads no KG blocks
        ("gcn_hetrec.toml", [], False),  # edge regression
    ],
)
def test_protocol_tag_says_how_uniform_samplers_score(recipe, overrides, tagged):
    """Uniform-sampled KG models score on one eval-stream sample per entity; the tag says so."""

    class Dataset:
        meta = {"protocol": "data"}

    cfg = load_recipe(REPO / "recipes" / recipe, overrides, seed=1)
    phrase = "scored on one neighbour sample per entity (eval stream)"
    assert (phrase in pipeline.protocol_of(cfg, Dataset)) is tagged
