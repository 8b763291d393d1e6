"""KGCN training epochs in RecBole 1.2.1 and in dglrec, on the same machine and data.

Issue 14 set its training targets against RecBole's KGCN (0.50 s/epoch on the machine
it was measured on). This script measures RecBole here, beside dglrec, so the ratio does
not depend on how fast another machine was. Two steps, two Python environments (RecBole
is not a dglrec dependency; its own pins clash with dglrec's, so it gets a side venv
that reuses dglrec's torch):

1. ``export DIR`` (dglrec's environment): writes Last.FM-KG as RecBole atomic files,
   ``DIR/lastfm/lastfm.{inter,kg,link}``: every positive (user, item) of dglrec's
   processed dataset, the KG triples, the item -> entity links.
2. ``recbole DIR`` (RecBole's environment): RecBole's ``KGCN`` with the paper's music
   settings (d 16, K 8, one hop, sum aggregator, lr 5e-4, L2 1e-4), RecBole's own
   random 60/20/20 split by user and one uniform negative per positive; times
   ``KGTrainer._train_epoch`` for ``--epochs`` epochs at ``--batch`` positives per
   batch. RecBole's ``train_batch_size`` counts positives: a batch of 128 scores 256
   pairs. ``--batch 64`` gives dglrec's 128 pairs per step.
3. ``dglrec`` (dglrec's environment): ``CTRTrainer.train_epoch`` of ``recipes/kgcn.toml``
   (``model.init = random``) for ``--epochs`` epochs, with the allocator settings the
   command line gives itself.

Each prints one line: wall seconds of every epoch. Usage::

    python -m venv /tmp/rbvenv
    echo "$PWD/.venv/lib/python3.11/site-packages" \\
        > /tmp/rbvenv/lib/python3.11/site-packages/dglrec_venv.pth
    /tmp/rbvenv/bin/pip install --no-deps recbole==1.2.1
    /tmp/rbvenv/bin/pip install colorlog==4.7.2 colorama==0.4.4 texttable thop tabulate \\
        tensorboard pyyaml pandas scipy "numpy<2"
    DGLREC_RAW_DIR=../shared/data python benchmarks/recbole_kgcn.py export /tmp/rb
    /tmp/rbvenv/bin/python benchmarks/recbole_kgcn.py recbole /tmp/rb --batch 128 --threads 2
    DGLREC_RAW_DIR=../shared/data python benchmarks/recbole_kgcn.py dglrec --threads 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def export(directory: Path) -> None:
    import torch

    from dglrec.runs import pipeline
    from dglrec.runs.recipes import load_recipe

    cfg = load_recipe(Path("recipes/kgcn.toml"), ["model.init=random"], seed=1)
    dataset = pipeline.build(cfg, log=lambda _: None).dataset
    out = directory / "lastfm"
    out.mkdir(parents=True, exist_ok=True)
    splits = [dataset.splits[name] for name in ("train", "eval", "test")]
    positives = torch.cat([pairs[pairs[:, 2] == 1] for pairs in splits])
    lines = ["user_id:token\titem_id:token"] + [f"{u}\t{i}" for u, i, _ in positives.tolist()]
    (out / "lastfm.inter").write_text("\n".join(lines) + "\n")
    lines = ["head_id:token\trelation_id:token\ttail_id:token"] + [
        f"e{h}\tr{r}\te{t}" for h, r, t in dataset.kg_triples().tolist()
    ]
    (out / "lastfm.kg").write_text("\n".join(lines) + "\n")
    lines = ["item_id:token\tentity_id:token"] + [
        f"{item}\te{entity}" for item, entity in enumerate(dataset.item_entity.tolist())
    ]
    (out / "lastfm.link").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(positives)} positives, {len(dataset.kg_triples())} triples to {out}")


def time_recbole(directory: Path, batch: int, threads: int, epochs: int) -> None:
    import logging
    import os

    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.knowledge_aware_recommender import KGCN
    from recbole.utils import get_trainer, init_seed

    settings = {
        "data_path": str(directory),
        "embedding_size": 16,
        "n_iter": 1,
        "aggregator": "sum",
        "neighbor_sample_size": 8,
        "reg_weight": 1e-4,
        "learning_rate": 5e-4,
        "train_batch_size": batch,
        "device": "cpu",
        "use_gpu": False,
        "eval_args": {"split": {"RS": [0.6, 0.2, 0.2]}, "order": "RO", "group_by": "user"},
        "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1},
        "load_col": {
            "inter": ["user_id", "item_id"],
            "kg": ["head_id", "relation_id", "tail_id"],
            "link": ["item_id", "entity_id"],
        },
        "show_progress": False,
        "seed": 1,
        "reproducibility": True,
        "checkpoint_dir": str(directory / "saved"),
    }
    os.chdir(directory)  # RecBole writes log_tensorboard/ and log/ under the working directory
    config = Config(model="KGCN", dataset="lastfm", config_dict=settings)
    logging.disable(logging.CRITICAL)
    init_seed(config["seed"], config["reproducibility"])
    torch.set_num_threads(threads)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = KGCN(config, train_data._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    seconds = []
    for epoch in range(epochs):
        began = time.perf_counter()
        trainer._train_epoch(train_data, epoch, show_progress=False)
        seconds.append(time.perf_counter() - began)
    print(
        f"RecBole KGCN: {threads} thread(s), {len(train_data._dataset)} training positives, "
        f"{len(train_data)} batches of {batch} positives + {batch} negatives; "
        f"s/epoch {[round(s, 3) for s in seconds]}"
    )


def time_dglrec(threads: int, epochs: int) -> None:
    import torch

    from dglrec.runs import pipeline
    from dglrec.runs.allocator import keep_freed_memory
    from dglrec.runs.recipes import load_recipe

    keep_freed_memory()
    torch.set_num_threads(threads)
    cfg = load_recipe(Path("recipes/kgcn.toml"), ["model.init=random"], seed=1)
    cfg.sweep = {}
    trainer = pipeline.trainer_for(pipeline.build(cfg, log=lambda _: None), log=lambda _: None)
    seconds = []
    for epoch in range(1, epochs + 1):
        began = time.perf_counter()
        trainer.train_epoch(epoch)
        seconds.append(time.perf_counter() - began)
    pairs = len(trainer.epoch_pairs(1))
    print(
        f"dglrec KGCN: {threads} thread(s), {pairs} training pairs (positives + negatives), "
        f"{-(-pairs // cfg.train.batch_size)} batches of {cfg.train.batch_size} pairs; "
        f"s/epoch {[round(s, 3) for s in seconds]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["export", "recbole", "dglrec"])
    parser.add_argument("directory", type=Path, nargs="?", default=Path("/tmp/rb"))
    parser.add_argument("--batch", type=int, default=128, help="RecBole's positives per batch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    if args.what == "export":
        export(args.directory)
    elif args.what == "recbole":
        time_recbole(args.directory, args.batch, args.threads, args.epochs)
    else:
        time_dglrec(args.threads, args.epochs)


if __name__ == "__main__":
    main()
