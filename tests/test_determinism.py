"""A seed gives the same run on any number of threads: no gradient is summed in parallel.

``x[index]`` with an integer ``index`` differentiates into ``index_put_(accumulate=True)``.
On CPU, once ``index`` × row size reaches 32,768 elements and more than one thread runs,
PyTorch 2.2 adds the rows with atomic float adds across threads, in an order that
changes from run to run (``at::native::index_put_kernel``). Duplicate indices (many
edges into one node, one user in many pairs) then sum in a different order every time:
two fits of two-hop KGCN, KAISG and KGNN-LS, LightGCN and the GCN edge-regression model
on Last.FM, same seed, 2 threads, differed after one epoch. ``index_select``'s backward
(``index_add_``) adds in index order, so every model gathers differentiable rows with it.

The tests walk the autograd graph of one training loss of every trainable model, as
``train_epoch`` computes it, and fail on an integer-indexed gather (a boolean mask
selects each row once and stays exact).

The other source: DGL 2.1's ``to_block`` and fused neighbour sampling, with more than
one thread, number a block's source nodes in a different order every run, and two hops
down that order is the order of a sum (two-hop KAISG fits differed). dglrec's samplers
build their blocks with ``sampling.blocks.block_in_order``, DGL's one-thread numbering.
"""

from __future__ import annotations

import dgl
import pytest
import torch
from dgl.dataloading import MultiLayerFullNeighborSampler

from dglrec.runs import pipeline
from dglrec.sampling.blocks import (
    FixedAdjacencySampler,
    FixedSizeNeighborSampler,
    FullNeighborSampler,
    block_in_order,
)
from dglrec.training.ctr import TRAIN_DEDUP
from tests.conftest import recipe_on
from tests.test_mkgcn import mkgcn_recipe

CTR_RECIPES = [
    ("kgcn.toml", ()),
    ("kgcn.toml", ("model.n_layers=2",)),
    ("kgcn.toml", ("model.n_layers=2", "model.aggregator=concat")),
    ("kgcn.toml", ("model.n_layers=2", "model.aggregator=neighbor")),
    ("kgcn.toml", ("model.n_layers=2", "sampler.kind=full")),
    ("kaisg.toml", ("model.n_layers=2",)),
    ("mgwa.toml", ("model.n_layers=2",)),
    ("kgnn_ls.toml", ("model.n_layers=2",)),
    ("ripplenet.toml", ()),
    ("lightgcn.toml", ()),
    ("bprmf.toml", ()),
    ("mkr.toml", ()),
    ("mmss_mkr.toml", ()),
]


def integer_gathers(loss: torch.Tensor) -> list[str]:
    """Backward nodes of ``loss`` that undo an integer-indexed ``x[index]``."""
    found, seen, stack = [], set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "IndexBackward0":
            kinds = [i.dtype for i in node._saved_indices if i is not None]
            if any(kind != torch.bool for kind in kinds):
                found.append(f"{type(node).__name__} over {kinds}")
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


def ctr_training_loss(cfg) -> torch.Tensor:
    trainer = pipeline.trainer_for(pipeline.build(cfg, log=lambda _: None), log=lambda _: None)
    trainer.model.train()
    generator = torch.Generator().manual_seed(1)
    pairs = trainer.epoch_pairs(1)
    batch = next(iter(trainer.batches(pairs, 32, generator, dedup=TRAIN_DEDUP)))
    return trainer.batch_loss(batch)[0]


@pytest.mark.parametrize(("recipe", "overrides"), CTR_RECIPES)
def test_ctr_training_gathers_rows_in_a_fixed_order(tiny_raw, isolated, recipe, overrides):
    cfg = recipe_on(recipe, "tiny-kg", tiny_raw, "model.init=random", *overrides)
    assert integer_gathers(ctr_training_loss(cfg)) == []


@pytest.mark.parametrize("n_layers", [1, 2])
def test_mkgcn_training_gathers_rows_in_a_fixed_order(tiny_mm_raw, isolated, n_layers):
    cfg = mkgcn_recipe("mkgcn.toml", tiny_mm_raw, f"model.n_layers={n_layers}")
    assert integer_gathers(ctr_training_loss(cfg)) == []


def test_edge_regression_training_gathers_rows_in_a_fixed_order(tiny_hetrec, isolated):
    cfg = recipe_on("gcn_hetrec.toml", "tiny-hetrec", tiny_hetrec, "train.batch_size=16", seed=3)
    trainer = pipeline.trainer_for(pipeline.build(cfg, log=lambda _: None), log=lambda _: None)
    trainer.model.train()
    output, target = next(trainer._edge_batches(1))
    loss = torch.nn.functional.mse_loss(output.prediction, target) + output.l2
    assert integer_gathers(loss) == []


def test_the_walk_finds_an_integer_gather_and_passes_a_mask():
    table = torch.randn(5, 3, requires_grad=True)
    index = torch.tensor([0, 2, 2, 4])
    assert integer_gathers(table[index].sum()) == ["IndexBackward0 over [torch.int64]"]
    assert integer_gathers(table[table[:, 0] > 0].sum()) == []
    assert integer_gathers(table.index_select(0, index).sum()) == []


def test_index_select_backward_is_the_same_with_two_threads():
    """The replacement is exact where ``x[index]``'s backward is not: 2 threads, 10 runs."""
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(50, 64, generator=generator, requires_grad=True)
    index = torch.randint(0, 50, (4096,), generator=generator)  # 262k elements, duplicates
    upstream = torch.randn(4096, 64, generator=generator)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(10):
            (grad,) = torch.autograd.grad(table.index_select(0, index), table, upstream)
            grads.append(grad)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], grad) for grad in grads)
    expected = torch.zeros(50, 64, dtype=torch.float64).index_add_(0, index, upstream.double())
    torch.testing.assert_close(grads[0].double(), expected, atol=1e-4, rtol=0)


def random_graph(n_nodes: int = 5000, n_edges: int = 20000) -> dgl.DGLGraph:
    generator = torch.Generator().manual_seed(0)
    src = torch.randint(0, n_nodes, (n_edges,), generator=generator)
    dst = torch.randint(0, n_nodes, (n_edges,), generator=generator)
    graph = dgl.graph((src, dst), num_nodes=n_nodes)
    graph.edata["rel"] = torch.randint(0, 7, (n_edges,), generator=generator)
    return graph


def block_signature(blocks) -> list[torch.Tensor]:
    return [
        torch.cat(
            [
                *block.edges(),
                block.srcdata[dgl.NID],
                block.dstdata[dgl.NID],
                block.edata[dgl.EID],
                block.edata["rel"],
            ]
        )
        for block in blocks
    ]


def with_threads(threads: int, work):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return work()
    finally:
        torch.set_num_threads(before)


def test_block_in_order_is_dgls_one_thread_to_block():
    graph = random_graph()
    eids = torch.randperm(graph.num_edges(), generator=torch.Generator().manual_seed(1))[:6000]
    src, dst = graph.find_edges(eids)
    seeds = torch.unique(dst)[torch.randperm(len(torch.unique(dst)))]  # any order of seeds
    frontier = dgl.graph((src, dst), num_nodes=graph.num_nodes())
    frontier.edata["rel"] = graph.edata["rel"][eids]

    def reference():
        block = dgl.to_block(frontier, seeds)
        block.edata[dgl.EID] = eids[block.edata[dgl.EID]]
        return block

    expected = block_signature([with_threads(1, reference)])
    for _ in range(3):
        assert torch.equal(
            block_signature([with_threads(2, lambda: block_in_order(graph, eids, seeds))])[0],
            expected[0],
        )


@pytest.mark.parametrize(
    "make_sampler",
    [
        lambda: FullNeighborSampler(2),
        lambda: FixedSizeNeighborSampler(3, 2),
        lambda: FixedAdjacencySampler(3, 2, seed=4),
    ],
    ids=["full", "uniform", "fixed"],
)
def test_sampled_blocks_are_numbered_alike_on_any_number_of_threads(make_sampler):
    """With 2 threads, every sampler's blocks equal its one-thread blocks, every time
    (DGL's ``to_block`` inside them would number the sources differently run to run)."""
    graph, seeds = random_graph(), torch.arange(0, 5000, 7)

    def sample():
        torch.manual_seed(3)  # the uniform sampler's draws
        return block_signature(make_sampler().sample(graph, seeds)[2])

    one_thread = with_threads(1, sample)
    for _ in range(5):
        for mine, reference in zip(with_threads(2, sample), one_thread, strict=True):
            assert torch.equal(mine, reference)


def test_full_sampler_takes_the_edges_dgls_takes():
    graph, seeds = random_graph(), torch.arange(0, 5000, 7)
    mine = FullNeighborSampler(2).sample(graph, seeds)[2]
    theirs = with_threads(1, lambda: MultiLayerFullNeighborSampler(2).sample(graph, seeds)[2])
    assert torch.equal(mine[-1].dstdata[dgl.NID], seeds)
    for block, reference in zip(mine, theirs, strict=True):  # the same sets, in CSC order
        assert torch.equal(
            torch.sort(block.dstdata[dgl.NID]).values,
            torch.sort(reference.dstdata[dgl.NID]).values,
        )
        assert torch.equal(
            torch.sort(block.edata[dgl.EID]).values, torch.sort(reference.edata[dgl.EID]).values
        )
        assert torch.equal(
            torch.sort(block.srcdata[dgl.NID]).values,
            torch.sort(reference.srcdata[dgl.NID]).values,
        )
