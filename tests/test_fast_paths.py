"""The fast paths give the slow paths' numbers.

Pair trees against deduplicated states: every KG model that reads user-conditioned
blocks (KGCN, KAISG, MGWA, KGNN-LS), one and two hops, every sampler (uniform, full,
importance top-K), on the tiny synthetic KG:

* scoring (``CTRTrainer.score_pairs``, what the eval/test metrics call) gives the same
  logits within 1e-5 and the same ranking metrics to 4 decimals;
* the training step on the same batches gives the same loss (data, L2 and auxiliary
  terms) and the same gradients, within 1e-5. (Over a whole epoch float32 rounding
  differences, which Adam rescales, grow past 1e-5; the step is what the paths share.)

Both paths call the same DGL block sampler on the same batches (when scoring, the
uniform sampler's one eval-stream sample per entity; when training, the per-batch
draws from the same generator state). Only the conditioning differs
(``dedup=True``: one state per distinct (user, node); ``dedup=False``: one tree per pair).

Grid scoring against pair scoring: the same models and MKGCN, one and two hops,
samplers uniform, full, importance top-K and uniform with a fixed adjacency: the
users × items logits of ``CTRTrainer.score_grid`` equal those of ``score_pairs`` within
1e-5, and ``evaluate_ranking``'s metrics agree to 4 decimals. Scoring with the uniform
sampler no longer depends on the batch size, and training does not depend on scoring.
"""

import copy
import math

import dgl
import pytest
import torch

from dglrec.evaluation.ranking import evaluate_ranking
from dglrec.runs import pipeline
from dglrec.sampling.blocks import GridTopK, relation_groups, top_k_per_group
from dglrec.seeding import derived_seed, reseed_sampling
from dglrec.training import ctr
from tests.conftest import recipe_on
from tests.test_mkgcn import mkgcn_recipe

MODELS = {
    "kgcn": "kgcn.toml",
    "kaisg": "kaisg.toml",
    "mgwa": "mgwa.toml",
    "kgnn_ls": "kgnn_ls.toml",
}
SAMPLERS = ("uniform", "full", "importance_topk")


def build_trainer(tiny_raw, model: str, n_layers: int, sampler: str, *extra: str):
    """``sampler``: a ``[sampler] kind``, or ``fixed`` for uniform with ``resample = "fixed"``."""
    overrides = [
        f"model.n_layers={n_layers}",
        "sampler.n_neighbors=3",
        "model.dim=8",
        "eval.batch_size=50",  # several eval batches, so batch composition matters
        "train.batch_size=16",
        "model.init=random",
        *extra,
    ]
    if sampler == "fixed":
        overrides += ["sampler.kind=uniform", "sampler.resample=fixed"]
    else:
        overrides.append(f"sampler.kind={sampler}")
    cfg = recipe_on(MODELS.get(model, model), "tiny-kg", tiny_raw, *overrides)
    built = pipeline.build(cfg, log=lambda _: None)
    trainer = pipeline.trainer_for(built, log=lambda _: None)
    with torch.no_grad():  # away from the initialisation, so attention and gates matter
        for p in trainer.model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return trainer


def ranking(trainer, grid: bool = False):
    splits = trainer.dataset.splits
    n_items = trainer.dataset.n_items
    return evaluate_ranking(
        trainer.score_pairs,
        splits["train"],
        splits["test"],
        trainer.dataset.n_users,
        n_items,
        [2, 5],
        chunk_users=7,
        score_grid=trainer.grid_scorer(torch.arange(n_items)) if grid else None,
    )


def all_pairs(trainer) -> torch.Tensor:
    n_users, n_items = trainer.dataset.n_users, trainer.dataset.n_items
    users, items = torch.arange(n_users), torch.arange(n_items)
    return torch.stack(
        [
            users.repeat_interleave(n_items),
            items.repeat(n_users),
            torch.zeros(n_users * n_items, dtype=torch.long),
        ],
        1,
    )


def assert_grid_equals_pairs(trainer, monkeypatch) -> None:
    """Every user × every item: grid logits = pair logits; grid ranking = pair ranking."""
    n_users, n_items = trainer.dataset.n_users, trainer.dataset.n_items
    pair = torch.from_numpy(trainer.score_pairs(all_pairs(trainer))).view(n_users, n_items)
    grid = trainer.score_grid(torch.arange(n_users), torch.arange(n_items))
    torch.testing.assert_close(grid, pair, atol=1e-5, rtol=0)
    by_pairs = ranking(trainer)
    monkeypatch.setattr(ctr, "GRID_FLOATS", 1)  # one user per pass within each chunk
    by_grid = ranking(trainer, grid=True)
    assert by_grid.keys() == by_pairs.keys()
    for name, value in by_pairs.items():
        assert round(by_grid[name], 4) == round(value, 4), name


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


@pytest.mark.parametrize(
    "model", ["bprmf.toml", "lightgcn.toml", "ripplenet.toml", "mkr.toml", "mmss_mkr.toml"]
)
def test_id_model_grid_scores_like_pairs(tiny_raw, isolated, monkeypatch, model):
    """Id models' ``score_grid`` (one product per hop) gives ``score_pairs``' logits and ranking."""
    cfg = recipe_on(model, "tiny-kg", tiny_raw, "eval.batch_size=50", "eval.ranking_ks=[2, 5]")
    built = pipeline.build(cfg, log=lambda _: None)
    trainer = pipeline.trainer_for(built, log=lambda _: None)
    trainer.train_epoch(1)
    assert trainer.model.capabilities.scores_grid
    monkeypatch.setattr(ctr, "GRID_FLOATS", 1)  # one user per pass
    assert_grid_equals_pairs(trainer, monkeypatch)


def test_lightgcn_ranking_propagates_once(tiny_raw, isolated, monkeypatch):
    """A full ranking in many passes propagates LightGCN's graph once, not once per pass."""
    cfg = recipe_on("lightgcn.toml", "tiny-kg", tiny_raw, "eval.ranking_ks=[2, 5]")
    built = pipeline.build(cfg, log=lambda _: None)
    trainer = pipeline.trainer_for(built, log=lambda _: None)
    trainer.train_epoch(1)
    calls = []
    propagate = trainer.model.propagate
    monkeypatch.setattr(trainer.model, "propagate", lambda g: calls.append(1) or propagate(g))
    monkeypatch.setattr(ctr, "GRID_FLOATS", 1)  # one user per pass
    n_users, n_items = trainer.dataset.n_users, trainer.dataset.n_items
    grid = trainer.score_grid(torch.arange(n_users), torch.arange(n_items))
    assert len(calls) == 1 and grid.shape == (n_users, n_items)
    pair = torch.from_numpy(trainer.score_pairs(all_pairs(trainer))).view(n_users, n_items)
    torch.testing.assert_close(grid, pair, atol=1e-5, rtol=0)


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


@pytest.mark.parametrize("sampler", [*SAMPLERS, "fixed"])
@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("model", list(MODELS))
def test_grid_scores_like_pairs(tiny_raw, isolated, monkeypatch, model, n_layers, sampler):
    trainer = build_trainer(tiny_raw, model, n_layers, sampler)
    assert trainer.model.capabilities.scores_grid
    if sampler == "importance_topk":  # the masks prune: K = 3 is below some degrees
        n_items = trainer.dataset.n_items
        _, _, blocks = trainer.sampler.block_sampler.sample(
            trainer.kg, torch.unique(trainer.dataset.item_entity[torch.arange(n_items)])
        )
        keep = trainer.scoring_sampler().grid_edge_filter(trainer.model)(
            blocks[-1], torch.arange(5)
        )
        assert not keep.all() and keep.any()
    assert_grid_equals_pairs(trainer, monkeypatch)


@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("aggregator", ["concat", "neighbor"])
def test_grid_scores_like_pairs_with_every_aggregator(
    tiny_raw, isolated, monkeypatch, aggregator, n_layers
):
    """The grid splits each aggregator's linear map (own part, neighbourhood part)."""
    trainer = build_trainer(tiny_raw, "kgcn", n_layers, "uniform", f"model.aggregator={aggregator}")
    assert_grid_equals_pairs(trainer, monkeypatch)


@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("model", ["kgcn", "mgwa"])
def test_grid_scores_like_pairs_in_small_chunks(tiny_raw, isolated, monkeypatch, model, n_layers):
    """The first layer by relation, finished a few destinations at a time (MGWA: a gate)."""
    from dglrec.models.kg import kgcn

    monkeypatch.setattr(kgcn, "BY_RELATION_CHUNK_FLOATS", 64)
    trainer = build_trainer(tiny_raw, model, n_layers, "full")
    assert_grid_equals_pairs(trainer, monkeypatch)


def test_destinations_split_by_relation_count():
    """One relation (or none) at a destination: scored once for all users; two or more: per user."""
    from dglrec.models.kg import kgcn

    # dst 0 <- (src 0, rel 1), (src 1, rel 1); dst 1 <- (src 2, rel 0), (src 3, rel 1);
    # dst 2 <- nothing; dst 3 <- (src 4, rel 0), (src 1, rel 1)
    block = dgl.create_block(
        (torch.tensor([0, 2, 1, 3, 4, 1]), torch.tensor([0, 1, 0, 1, 3, 3])),
        num_src_nodes=5,
        num_dst_nodes=4,
    )
    block.srcdata[dgl.NID] = torch.tensor([10, 11, 12, 13, 14])
    block.edata["rel"] = torch.tensor([1, 0, 1, 1, 0, 1])
    (alike, alike_block), (varied, varied_block), (pruned, _) = kgcn._destination_classes(
        block, 2, None
    )
    assert alike.tolist() == [0, 2] and varied.tolist() == [1, 3] and pruned.tolist() == []
    assert alike_block.num_dst_nodes() == 2 and varied_block.num_dst_nodes() == 2
    assert [t.tolist() for t in alike_block.edges()] == [[0, 1], [0, 0]]
    assert [t.tolist() for t in varied_block.edges()] == [[2, 3, 4, 1], [0, 0, 1, 1]]
    assert varied_block.edata["rel"].tolist() == [0, 1, 0, 1]
    # A filter that may prune destinations 0 and 3: 0 has one relation (alike all the same).
    may_prune = torch.tensor([True, False, False, True])
    (alike, _), (unpruned, _), (pruned, pruned_block) = kgcn._destination_classes(
        block, 2, may_prune
    )
    assert alike.tolist() == [0, 2] and unpruned.tolist() == [1] and pruned.tolist() == [3]
    assert [t.tolist() for t in pruned_block.edges()] == [[4, 1], [0, 0]]
    assert torch.equal(pruned_block.srcdata[dgl.NID], block.srcdata[dgl.NID])


@pytest.mark.parametrize("n_layers", [1, 2])
def test_grid_importance_masks_with_tied_relations(tiny_raw, isolated, monkeypatch, n_layers):
    """Two relations of equal importance: ties go to the smaller source entity across them."""
    trainer = build_trainer(tiny_raw, "kaisg", n_layers, "importance_topk")
    with torch.no_grad():
        trainer.model.relation_emb.weight[1] = trainer.model.relation_emb.weight[0]
    assert_grid_equals_pairs(trainer, monkeypatch)


def test_relation_groups_are_built_once_per_ranking(monkeypatch):
    """The grid's (destination, relation) groups: hand-counted, built once per ranking cache."""
    from dglrec.models.kg import kgcn

    # dst 0 <- (src 0, rel 1), (src 1, rel 1), (src 2, rel 0); dst 1 <- (src 3, rel 1)
    block = dgl.create_block(
        (torch.tensor([0, 1, 2, 3]), torch.tensor([0, 0, 0, 1])), num_src_nodes=4, num_dst_nodes=2
    )
    block.edata["rel"] = torch.tensor([1, 1, 0, 1])
    block.srcdata[dgl.NID] = torch.tensor([5, 3, 9, 1])  # edge 1's source ranks before edge 0's
    src, groups, group_block = kgcn._relation_groups(block)
    assert groups.size.tolist() == [1, 2, 1] and groups.rel.tolist() == [0, 1, 1]
    assert groups.dst.tolist() == [0, 0, 1] and group_block.edges()[1].tolist() == [0, 0, 1]
    assert groups.group.tolist() == [1, 1, 0, 2]
    assert groups.ranked.tolist() == [2, 1, 0, 3] and groups.position.tolist() == [1, 0, 0, 0]
    # Prefix sums of each group's sources in rank order, after a zero row per group.
    h = torch.tensor([[1.0], [10.0], [100.0], [1000.0]])
    table, zero_row = kgcn._group_prefix_sums(h, src, groups)
    assert zero_row.tolist() == [0, 2, 5]
    assert table[:, 0].tolist() == [0, 100, 0, 10, 11, 0, 1000]
    built = []
    build = kgcn._relation_groups
    monkeypatch.setattr(kgcn, "_relation_groups", lambda *a: built.append(1) or build(*a))
    attention, affinity = kgcn.UserRelationAttention(), torch.randn(2, 3)
    h_src, cache = torch.randn(4, 5, 1), {}
    first = attention.grid(block, h_src, affinity, cache=cache)
    again = attention.grid(block, h_src, affinity, cache=cache)
    assert len(built) == 1 and torch.equal(first, again)
    attention.grid(block, h_src, affinity)  # no cache: built for the call
    assert len(built) == 2


@pytest.mark.parametrize("attention", ["kgcn", "kaisg"])
@pytest.mark.parametrize("offset", [0.0, 100.0])
@pytest.mark.parametrize("chunk_floats", [1 << 20, 60])
def test_grid_by_relation_sums_like_pooled_edges(monkeypatch, attention, offset, chunk_floats):
    """One product over relations = the per-group softmax, every edge kept, for any users;
    softmax inputs near 100 (e^100 overflows float32) need the user's maximum out.
    In one chunk, and in chunks of two destinations (60 floats, width 5, 6 users)."""
    from dglrec.models.kg import kgcn
    from dglrec.models.kg.kaisg import ImportanceAttention

    monkeypatch.setattr(kgcn, "BY_RELATION_CHUNK_FLOATS", chunk_floats)

    g = torch.Generator().manual_seed(3)
    n_src, n_dst, n_rel, n_users, n_edges = 12, 7, 5, 6, 30
    dst = torch.randint(0, n_dst - 1, (n_edges,), generator=g)  # the last destination: none
    block = dgl.create_block(
        (torch.randint(0, n_src, (n_edges,), generator=g), dst),
        num_src_nodes=n_src,
        num_dst_nodes=n_dst,
    )
    block.srcdata[dgl.NID] = torch.randperm(n_src, generator=g)
    block.edata["rel"] = torch.randint(1, n_rel, (n_edges,), generator=g)  # relation 0: none
    module = kgcn.UserRelationAttention() if attention == "kgcn" else ImportanceAttention()
    h_src = torch.randn(n_src, 4, 1, generator=g)
    affinity = offset + 3 * torch.randn(n_rel, n_users, generator=g)
    cache = {"attended": h_src}
    chunks = [
        (start, stop, part.clone())
        for start, stop, part in module.grid_by_relation(block, h_src, affinity, cache)
    ]
    size = n_dst if chunk_floats > 1000 else 2
    expected_bounds = [(start, min(n_dst, start + size)) for start in range(0, n_dst, size)]
    assert [(start, stop) for start, stop, _ in chunks] == expected_bounds
    by_relation = torch.cat([part for _, _, part in chunks])
    assert by_relation.shape == (n_dst, 4, n_users)
    expected = module.grid_pooled(block, h_src, affinity, cache=cache)
    torch.testing.assert_close(by_relation, expected, atol=1e-6, rtol=1e-5)
    assert by_relation[-1].abs().sum() == 0  # no edges: an empty sum
    # Into a result: each chunk is its slice of it, and together they fill it.
    out = torch.full((n_dst, 4, n_users), math.nan)
    for start, stop, part in module.grid_by_relation(block, h_src, affinity, cache, out):
        assert part.data_ptr() == out[start:stop].data_ptr()
    assert torch.equal(out, by_relation)
    # Inputs spread too far for one shared maximum (KGCN's are unbounded): None, pooled instead.
    spread = affinity.clone()
    spread[1] -= 60
    declined = module.grid_by_relation(block, h_src, spread, cache) is None
    assert declined == (attention == "kgcn")
    with pytest.raises(ValueError, match="shared first-layer sources"):
        module.grid_by_relation(block, h_src.clone(), affinity, cache)
    empty = dgl.create_block(
        (torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long)),
        num_src_nodes=n_src,
        num_dst_nodes=n_dst,
    )
    empty.srcdata[dgl.NID] = block.srcdata[dgl.NID]
    empty.edata["rel"] = torch.tensor([], dtype=torch.long)
    assert module.grid_by_relation(empty, h_src, affinity, cache) is None  # pooled: zeros


def test_kept_counts_pool_like_keep_masks():
    """Per-group kept counts on shared sources give the keep-mask grid's neighbourhoods.

    Random block and counts (a prefix of each group in rank order, none kept for some
    (group, user)); checked against :meth:`UserRelationAttention.grid` with the masks
    those counts mean, for KGCN's and KAISG's logits.
    """
    from dglrec.models.kg import kgcn
    from dglrec.models.kg.kaisg import ImportanceAttention

    g = torch.Generator().manual_seed(1)
    n_src, n_dst, n_edges, n_rel, n_users = 15, 6, 50, 3, 4
    block = dgl.create_block(
        (
            torch.randint(0, n_src, (n_edges,), generator=g),
            torch.arange(n_edges) % n_dst,
        ),
        num_src_nodes=n_src,
        num_dst_nodes=n_dst,
    )
    block.edata["rel"] = torch.randint(0, n_rel, (n_edges,), generator=g)
    block.srcdata[dgl.NID] = torch.randperm(n_src, generator=g)
    _, groups, _ = kgcn._relation_groups(block)
    kept = (torch.rand(len(groups.size), n_users, generator=g) * (groups.size[:, None] + 1)).long()
    kept[groups.dst == 0] = groups.size[groups.dst == 0, None]  # keep all at one destination
    keep = groups.position[:, None] < kept[groups.group]  # [E, U]
    assert (keep.sum(0) < n_edges).all() and (kept == 0).any()
    for attention in (kgcn.UserRelationAttention(), ImportanceAttention()):
        h_src, affinity = torch.randn(n_src, 4, 1, generator=g), torch.randn(n_rel, n_users)
        cache = {"attended": h_src}
        got = attention.grid_pooled(block, h_src, affinity, kept, cache)
        expected = attention.grid(block, h_src.expand(-1, -1, n_users), affinity, keep)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match="shared first-layer sources"):
            attention.grid_pooled(block, h_src.clone(), affinity, kept, cache)


def test_deeper_layer_grids_match_the_masked_edge_softmax(monkeypatch):
    """Per-user sources (a deeper layer, ``[N, d, U]``): pooled groups and keep masks.

    ``grid`` without masks pools each (destination, relation) group (sparse sums, in
    chunks of destinations: one chunk, and chunks of one or two destinations); with the
    ``k`` edges a top-K keeps per (destination, user), a masked per-edge softmax. Both
    against the per-edge softmax of masked logits, computed here from the definition.
    """
    from dglrec.models.kg import kgcn
    from dglrec.models.kg.kaisg import ImportanceAttention

    g = torch.Generator().manual_seed(5)
    n_src, n_dst, n_rel, n_users, k = 14, 5, 4, 3, 2
    dst = torch.randperm(30, generator=g) % n_dst  # 6 edges per destination, mixed order
    block = dgl.create_block(
        (torch.randint(0, n_src, (30,), generator=g), dst), num_src_nodes=n_src, num_dst_nodes=n_dst
    )
    block.srcdata[dgl.NID] = torch.arange(n_src)
    block.edata["rel"] = torch.randint(0, n_rel, (30,), generator=g)
    src = block.edges(order="eid")[0]
    # k edges kept per (destination, user), picked at random.
    noise = torch.rand(30, n_users, generator=g)
    keep = torch.zeros(30, n_users, dtype=torch.bool)
    for v in range(n_dst):
        at = torch.nonzero(dst == v)[:, 0]
        keep[at[noise[at].argsort(0)[:k]], torch.arange(n_users)] = True
    for attention in (kgcn.UserRelationAttention(), ImportanceAttention()):
        h_src = torch.randn(n_src, 4, n_users, generator=g)  # [N, d, U]: users last
        affinity = 2 * torch.randn(n_rel, n_users, generator=g)
        logits = attention.logit(affinity[block.edata["rel"]])  # [E, U]
        for mask in (torch.ones_like(keep), keep):
            expected = torch.zeros(n_dst, 4, n_users)
            for v in range(n_dst):
                for u in range(n_users):
                    edges = torch.nonzero((dst == v) & mask[:, u])[:, 0]
                    weight = torch.softmax(logits[edges, u], 0)
                    expected[v, :, u] = weight @ h_src[src[edges], :, u]
            got = attention.grid(block, h_src, affinity, None if mask is not keep else keep, {})
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
            if mask is not keep:  # chunks of about two groups (4 × 3 floats each)
                monkeypatch.setattr(kgcn, "BY_RELATION_CHUNK_FLOATS", 24)
                cache = {}
                chunked = attention.grid(block, h_src, affinity, cache=cache)
                monkeypatch.undo()
                torch.testing.assert_close(chunked, expected, rtol=1e-5, atol=1e-6)
                bounds = [chunk[:2] for chunk in cache[("group_chunks", block, 2)]]
                assert len(bounds) > 2 and bounds[0][0] == 0 and bounds[-1][1] == n_dst
                ends, starts = [stop for _, stop in bounds[:-1]], [start for start, _ in bounds[1:]]
                assert ends == starts  # consecutive, every destination once
        # Destinations without in-edges only (a sub-block of them): empty sums, no groups.
        empty = dgl.create_block(
            (torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long)),
            num_src_nodes=n_src,
            num_dst_nodes=2,
        )
        empty.srcdata[dgl.NID] = block.srcdata[dgl.NID]
        empty.edata["rel"] = torch.tensor([], dtype=torch.long)
        assert not attention.grid(empty, h_src, affinity, cache={}).any()


def test_grid_tanh_matches_torch_tanh():
    """The grid's in-place tanh (2 sigmoid(2x) - 1) against torch.tanh, saturation included."""
    from dglrec.models.kg.kgcn import tanh_

    x = torch.cat([torch.linspace(-60, 60, 100_001), torch.randn(10_000), torch.zeros(1)])
    torch.testing.assert_close(tanh_(x.clone()), torch.tanh(x), atol=3e-7, rtol=0)
    assert tanh_(torch.tensor([-1e4, 1e4])).tolist() == [-1.0, 1.0]


def test_grid_top_k_matches_per_group_top_k():
    """GridTopK against top_k_per_group on one block: every (user, destination), K = 1..4."""
    g = torch.Generator().manual_seed(0)
    n_src, n_dst, n_edges, n_rel = 12, 5, 40, 3
    block = dgl.create_block(
        (
            torch.randint(0, n_src, (n_edges,), generator=g),
            torch.randint(0, n_dst, (n_edges,), generator=g),
        ),
        num_src_nodes=n_src,
        num_dst_nodes=n_dst,
    )
    block.edata["rel"] = torch.randint(0, n_rel, (n_edges,), generator=g)
    block.srcdata[dgl.NID] = torch.randperm(n_src, generator=g) + 100
    table = torch.rand(4, n_rel, generator=g)
    table[3, 2] = table[3, 0]  # user 3: a tie across relations

    class Model:
        def importance_scores(self, users, relations):
            return table[users, relations]

    users = torch.arange(4)
    for k in (1, 2, 3, 4):
        keep = GridTopK(k, Model())(block, users)
        src, dst = block.edges(order="eid")
        for u in users.tolist():
            expected = top_k_per_group(
                dst, table[u, block.edata["rel"]], block.srcdata[dgl.NID][src], k
            )
            assert torch.equal(keep[:, u], expected), (k, u)
        # The counts behind the masks: each group's kept edges, a prefix in rank order.
        kept = GridTopK(k, Model()).kept_counts(block, users)
        groups = relation_groups(block)
        assert torch.equal(kept, torch.zeros_like(kept).index_add_(0, groups.group, keep.long()))


@pytest.mark.parametrize(
    "overrides",
    [
        ("model.n_layers=1",),
        ("model.n_layers=2",),
        ("model.n_layers=2", "sampler.kind=full", "model.user_aggregator=table"),
        ("model.n_layers=1", "sampler.kind=full", "model.fusion=concat"),
    ],
)
def test_mkgcn_grid_scores_like_pairs(tiny_mm_raw, isolated, monkeypatch, overrides):
    cfg = mkgcn_recipe("mkgcn.toml", tiny_mm_raw, "sampler.n_neighbors=3", *overrides)
    built = pipeline.build(cfg, log=lambda _: None)
    trainer = pipeline.trainer_for(built, log=lambda _: None)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    assert_grid_equals_pairs(trainer, monkeypatch)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_uniform_scores_do_not_depend_on_the_batch_size(tiny_raw, isolated, n_layers):
    """The uniform sampler scores on one eval-stream sample per entity, whatever the batching."""
    trainer = build_trainer(tiny_raw, "kgcn", n_layers, "uniform")
    assert not trainer.sampler.deterministic  # training still draws per batch
    assert trainer.scoring_sampler().deterministic
    trainer.sampler.dedup = True  # conditioned per batch: batches of exactly eval.batch_size
    pairs = torch.cat([trainer.dataset.splits["test"], trainer.dataset.splits["eval"]])
    scores = {}
    for batch_size in (7, 4096):
        trainer.cfg.eval.batch_size = batch_size
        scores[batch_size] = trainer.score_pairs(pairs)
    torch.testing.assert_close(
        torch.from_numpy(scores[7]), torch.from_numpy(scores[4096]), atol=0, rtol=0
    )
    # Every pass scores on the same sample; a different run seed draws another one.
    torch.testing.assert_close(
        torch.from_numpy(trainer.score_pairs(pairs)), torch.from_numpy(scores[4096]), atol=0, rtol=0
    )


@pytest.mark.parametrize("model", ["kgcn", "kgnn_ls"])
def test_training_does_not_depend_on_scoring(tiny_raw, isolated, model):
    """Per-batch uniform training draws: the same losses with or without scoring in between."""
    losses, start = {}, None
    for scoring in (False, True):
        trainer = build_trainer(tiny_raw, model, 1, "uniform", "eval.ranking_ks=[5]")
        if start is None:
            start = copy.deepcopy(trainer.model.state_dict())
        trainer.model.load_state_dict(start)
        out = []
        for epoch in (1, 2, 3):
            out.append(trainer.train_epoch(epoch))
            if scoring:
                trainer.evaluate("eval")
                trainer.final_test()
        losses[scoring] = out
    assert losses[True] == losses[False]
