"""Where a CTR training epoch goes: sampling and conditioning vs the model's own step.

For each recipe (real data, ``model.init = random``, one thread), times, over the same
epoch of batches (seed 1, epoch 2's pairs and order):

* ``epoch``: ``CTRTrainer.train_epoch`` as a fit runs it;
* ``batches``: building the epoch's batches only (sampling, conditioning, DGL blocks);
* ``step``: forward, backward and Adam on those batches, built beforehand: the floor
  an epoch at this batch size cannot go below without changing the model's arithmetic
  or the framework's per-operator cost.

Each is the minimum over ``--repeats`` of process CPU seconds (``time.process_time``),
so another process on the machine inflates them less than wall time. Usage::

    DGLREC_RAW_DIR=../shared/data python benchmarks/epoch_breakdown.py kgcn kgnn_ls kaisg
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def breakdown(recipe: str, repeats: int) -> dict[str, float]:
    import torch

    from dglrec.runs import pipeline
    from dglrec.runs.recipes import load_recipe
    from dglrec.training.ctr import TRAIN_DEDUP

    torch.set_num_threads(1)
    cfg = load_recipe(Path("recipes") / f"{recipe}.toml", ["model.init=random"], seed=1)
    cfg.sweep = {}
    trainer = pipeline.trainer_for(pipeline.build(cfg, log=lambda _: None), log=lambda _: None)
    trainer.train_epoch(1)  # warm-up: lazy caches, allocator
    pairs, size = trainer.epoch_pairs(2), cfg.train.batch_size

    def epoch() -> None:
        trainer.train_epoch(2)

    def batches() -> list:
        generator = torch.Generator().manual_seed(2)
        return list(trainer.batches(pairs, size, generator, dedup=TRAIN_DEDUP))

    built = batches()

    def step() -> None:
        for batch in built:  # as train_epoch's loop, without the KGE steps some models add
            trainer._step(trainer.optimizer, trainer.batch_loss(batch)[0])

    out = {"batches_per_epoch": len(built)}
    for name, work in (("epoch", epoch), ("batches", batches), ("step", step)):
        seconds = []
        for _ in range(repeats):
            began = time.process_time()
            work()
            seconds.append(time.process_time() - began)
        out[name] = min(seconds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| recipe | batches | epoch CPU s | building batches s | model step s | step share |")
    print("| --- | --- | --- | --- | --- | --- |")
    for recipe in args.recipes:
        r = breakdown(recipe, args.repeats)
        print(
            f"| {recipe} | {r['batches_per_epoch']} | {r['epoch']:.2f} | {r['batches']:.2f} "
            f"| {r['step']:.2f} | {r['step'] / r['epoch']:.0%} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
