"""How close a KGCN training epoch is to the floor of eager PyTorch at batch 128.

The floor is KGCN's step (Wang et al., WWW 2019; ``recipes/kgcn.toml``: d 16, K 8,
one hop, sum aggregator, batch 128, Adam at lr 5e-4, L2 1e-4 over whole tables) written
with as few operators as it takes, on dense ``[B, K, d]`` tensors as RecBole and the
paper's TensorFlow code do:

    u, e = U[user], E[item];  n_k, r_k = E[nbr_k], R[rel_k]  (K uniform draws per item)
    π = softmax_k(u · r_k);   v = tanh(W (e + Σ_k π_k n_k) + b);   logit = u · v
    loss = BCE(logit, y) + l2 · ½ (‖U‖² + ‖E‖² + ‖R‖² + ‖W‖²);  backward;  Adam

No DGL blocks, no de-duplication of a batch's items, neighbours drawn with replacement
from a padded table (no without-replacement rule). It does no less arithmetic than
KGCN must and has no bookkeeping to drop, so an eager implementation of this batch
size on this machine cannot go below it by changing code around the model: only
fewer, larger batches, a fused optimiser (PyTorch >= 2.4, which DGL 2.1 does not
support) or a compiler would.

One process, the same epoch's pairs (seed 1, epoch 2, Last.FM-KG) for both, measured
in turn ``--repeats`` times; each figure is the minimum of wall seconds (run it on an
idle machine: with more than one thread, process CPU time counts OpenMP's waiting
threads too):

* ``floor``: the dense step above over the epoch's batches;
* ``floor, no Adam``: the same without ``optimizer.step()``;
* ``dglrec epoch``: ``CTRTrainer.train_epoch`` as a fit runs it;
* ``dglrec batches``: building that epoch's batches (sampling, conditioning, blocks);
* ``dglrec step``: forward, backward and Adam on those batches, built beforehand.

Usage::

    DGLREC_RAW_DIR=../shared/data python benchmarks/eager_floor.py --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def dense_epoch(trainer, pairs, batch_size: int, seed: int):
    """A callable running the floor's epoch (fresh parameters, same shapes and init scale)."""
    import torch
    import torch.nn.functional as F

    model = trainer.model
    torch.manual_seed(seed)
    tables = [
        torch.nn.Parameter(t.detach().clone())
        for t in (model.user_emb.weight, model.entity_emb.weight, model.relation_emb.weight)
    ]
    linear = torch.nn.Linear(tables[0].shape[1], tables[0].shape[1])
    params = [*tables, linear.weight, linear.bias]
    optimizer = torch.optim.Adam(params, lr=trainer.cfg.train.lr, foreach=True)
    l2 = trainer.cfg.train.l2
    k = trainer.cfg.sampler.n_neighbors
    indptr, indices, eids = trainer.kg.adj_tensors("csc")
    rel = trainer.kg.edata["rel"][eids]
    start, degree = indptr[:-1], indptr[1:] - indptr[:-1]
    item_entity = trainer.dataset.item_entity
    users_all, items_all, labels_all = pairs[:, 0], item_entity[pairs[:, 1]], pairs[:, 2].float()

    def run(adam: bool = True) -> None:
        user_t, entity_t, relation_t = tables
        for begin in range(0, len(pairs), batch_size):
            user = users_all[begin : begin + batch_size]
            item = items_all[begin : begin + batch_size]
            label = labels_all[begin : begin + batch_size]
            slot = start[item, None] + (torch.rand(len(item), k) * degree[item, None]).long()
            u, e = user_t[user], entity_t[item]
            n, r = entity_t[indices[slot]], relation_t[rel[slot]]
            weight = torch.softmax((u[:, None, :] * r).sum(-1), dim=1)
            v = torch.tanh(linear(e + (weight[:, :, None] * n).sum(1)))
            logit = (u * v).sum(-1)
            penalty = sum((p * p).sum() for p in (*tables, linear.weight)) / 2
            loss = F.binary_cross_entropy_with_logits(logit, label) + l2 * penalty
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if adam:
                optimizer.step()

    return run


def measure(threads: int, repeats: int) -> dict[str, float]:
    import torch

    from dglrec.runs import pipeline
    from dglrec.runs.allocator import keep_freed_memory
    from dglrec.runs.recipes import load_recipe
    from dglrec.training.ctr import TRAIN_DEDUP

    keep_freed_memory()  # as the command line does
    torch.set_num_threads(threads)
    cfg = load_recipe(Path("recipes/kgcn.toml"), ["model.init=random"], seed=1)
    cfg.sweep = {}
    trainer = pipeline.trainer_for(pipeline.build(cfg, log=lambda _: None), log=lambda _: None)
    trainer.train_epoch(1)  # warm-up: lazy caches, allocator
    pairs, size = trainer.epoch_pairs(2), cfg.train.batch_size
    floor = dense_epoch(trainer, pairs, size, seed=1)
    floor()

    def batches() -> list:
        generator = torch.Generator().manual_seed(2)
        return list(trainer.batches(pairs, size, generator, dedup=TRAIN_DEDUP))

    built = batches()

    def step() -> None:
        for batch in built:  # train_epoch's loop body (KGCN has no KGE steps)
            trainer._step(trainer.optimizer, trainer.batch_loss(batch)[0])

    work = {
        "floor": floor,
        "floor, no Adam": lambda: floor(adam=False),
        "dglrec epoch": lambda: trainer.train_epoch(2),
        "dglrec batches": batches,
        "dglrec step": step,
    }
    seconds: dict[str, list[float]] = {name: [] for name in work}
    for _ in range(repeats):
        for name, run in work.items():
            began = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - began)
    return {"batches": len(built), **{name: min(s) for name, s in seconds.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    result = measure(args.threads, args.repeats)
    batches = result.pop("batches")
    print(f"KGCN, Last.FM-KG, {batches} batches of 128, {args.threads} thread(s), ", end="")
    print(f"min of {args.repeats} wall s per epoch")
    print("| work | s/epoch | × floor |")
    print("| --- | --- | --- |")
    for name, value in result.items():
        print(f"| {name} | {value:.3f} | {value / result['floor']:.2f} |")


if __name__ == "__main__":
    main()
