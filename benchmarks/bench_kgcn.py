"""Benchmark KGCN on Last.FM-KG: speed, memory and accuracy per neighbour sampler.

For each sampler kind ("uniform": KGCN's fixed-size sample of K neighbours per
node; "full": all neighbours, ``dgl.dataloading.MultiLayerFullNeighborSampler``)
and each seed, the recipe is trained with :class:`dglrec.training.ctr.CTRTrainer` (no
MLflow) in a fresh subprocess, so that peak RSS belongs to that configuration
alone. Measured:

* s/epoch: wall seconds of ``Trainer.train_epoch`` (no evaluation, no checkpoint);
* pairs/s: training pairs per second (``len(train split) / epoch seconds``);
* eval s: wall seconds of one pass of ``Trainer.evaluate("eval")`` (run each epoch);
* peak RSS MiB: ``ru_maxrss`` of the worker process (data loading included);
* test AUC/ACC/F1: after ``Trainer.fit()``, i.e. at the best eval epoch.

With one seed, ``mean ± std`` is over epochs (over eval passes for eval s); with
``--seeds N`` it is over the N seeds (seed, seed+1, ...; the seed also draws the
negatives and the split) of each seed's mean. The processed dataset is built or
loaded once in the parent first, so every worker reads it from the cache.

Usage::

    DGLREC_RAW_DIR=/path/to/raw python benchmarks/bench_kgcn.py \\
        [--recipe recipes/kgcn.toml] [--epochs 10] [--seeds 1] \\
        [--samplers uniform,full] [--set section.key=value ...] \\
        [--out benchmarks/results/kgcn.md]

The Markdown report (environment and one table) goes to stdout and to ``--out``;
progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = [
    "sampler",
    "s/epoch",
    "pairs/s",
    "eval s",
    "peak RSS MiB",
    "test AUC",
    "test ACC",
    "test F1",
]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "kgcn.toml"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=1, help="seeds: recipe seed, +1, ...")
    parser.add_argument("--samplers", default="uniform,full", help="comma-separated sampler kinds")
    parser.add_argument(
        "--set", action="append", default=[], metavar="K=V", help="recipe override (repeatable)"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kgcn.md"))
    # Internal: run one (sampler, seed) configuration and print its results as JSON.
    parser.add_argument("--worker", metavar="KIND", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.seeds < 1:
        parser.error("--epochs and --seeds must be >= 1")
    return args


def recipe(args: argparse.Namespace, kind: str | None = None, seed: int | None = None):
    from dglrec.runs.recipes import load_recipe

    overrides = [*args.set, f"train.epochs={args.epochs}"]
    if kind is not None:
        overrides.append(f"sampler.kind={kind}")
    return load_recipe(args.recipe, overrides, seed)


# ---------------------------------------------------------------------- worker
def run_worker(args: argparse.Namespace) -> dict:
    """Train one configuration; return its measurements."""
    import dgl
    import torch

    from dglrec.runs.pipeline import build
    from dglrec.training.ctr import CTRTrainer

    cfg = recipe(args, args.worker, args.seed)
    experiment = build(cfg, log=log)
    trainer = CTRTrainer(experiment.model, experiment.dataset, experiment.sampler, cfg, log=log)

    epoch_seconds: list[float] = []
    eval_seconds: list[float] = []
    train_epoch, evaluate = trainer.train_epoch, trainer.evaluate

    def timed_train_epoch(epoch: int) -> float:
        began = time.perf_counter()
        loss = train_epoch(epoch)
        epoch_seconds.append(time.perf_counter() - began)
        return loss

    def timed_evaluate(split: str) -> dict:
        began = time.perf_counter()
        metrics = evaluate(split)
        if split == "eval":
            eval_seconds.append(time.perf_counter() - began)
        return metrics

    # Instance attributes shadow the methods that Trainer.fit calls through self.
    trainer.train_epoch = timed_train_epoch
    trainer.evaluate = timed_evaluate
    result = trainer.fit()

    n_train = len(experiment.dataset.splits["train"])
    return {
        "sampler": cfg.sampler.kind,
        "n_neighbors": cfg.sampler.n_neighbors,
        "seed": cfg.seed,
        "epoch_seconds": epoch_seconds,
        "pairs_per_second": [n_train / s for s in epoch_seconds],
        "eval_seconds": eval_seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "best_epoch": result.best_epoch,
        "test_auc": result.test["auc"],
        "test_acc": result.test["acc"],
        "test_f1": result.test["f1"],
        "n_train": n_train,
        "stats": experiment.dataset.meta["stats"],
        "torch": torch.__version__,
        "dgl": dgl.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def worker_main(args: argparse.Namespace) -> None:
    # Keep stdout for the JSON result alone: anything else written to fd 1
    # (library prints, native code) goes to stderr.
    channel = os.fdopen(os.dup(1), "w")
    sys.stdout.flush()
    os.dup2(2, 1)
    result = run_worker(args)
    channel.write(json.dumps(result) + "\n")
    channel.close()


def spawn(args: argparse.Namespace, kind: str, seed: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--seed", str(seed)]
    command += ["--recipe", args.recipe, "--epochs", str(args.epochs)]
    for item in args.set:
        command += ["--set", item]
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker {kind} seed {seed} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- report
def samples(runs: list[dict], key: str) -> list[float]:
    """One run: its per-epoch values; several: each run's mean."""
    values = [run[key] for run in runs]
    if len(runs) == 1:
        return values[0] if isinstance(values[0], list) else values
    return [statistics.fmean(v) if isinstance(v, list) else v for v in values]


def fmt(values: list[float], digits: int) -> str:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def row(runs: list[dict]) -> list[str]:
    first = runs[0]
    name = first["sampler"]
    if name == "uniform":
        name += f" (K={first['n_neighbors']})"
    return [
        name,
        fmt(samples(runs, "epoch_seconds"), 2),
        fmt(samples(runs, "pairs_per_second"), 0),
        fmt(samples(runs, "eval_seconds"), 2),
        fmt(samples(runs, "peak_rss_mib"), 0),
        fmt(samples(runs, "test_auc"), 4),
        fmt(samples(runs, "test_acc"), 4),
        fmt(samples(runs, "test_f1"), 4),
    ]


def report(args: argparse.Namespace, cfg, results: dict[str, list[dict]], wall: float) -> str:
    runs = next(iter(results.values()))
    first = runs[0]
    seeds = ", ".join(str(run["seed"]) for run in runs)
    stats = ", ".join(f"{k} {v}" for k, v in first["stats"].items())
    spread = "over epochs" if args.seeds == 1 else f"over {args.seeds} seeds"
    lines = [
        f"# KGCN on {cfg.data.name}",
        "",
        f"- recipe: `{args.recipe}`; overrides: `{' '.join(args.set) or 'none'}`",
        f"- model: `{json.dumps(cfg.model)}`; batch {cfg.train.batch_size}; "
        f"epochs {args.epochs}; seeds {seeds}; device {cfg.train.device}",
        f"- data: {stats}; train pairs {first['n_train']}",
        f"- torch {first['torch']}, dgl {first['dgl']}, Python {platform.python_version()}; "
        f"os.cpu_count() {first['cpu_count']}, torch threads {first['torch_threads']}",
        f"- mean ± std {spread}; test metrics at the best epoch by eval "
        f"{cfg.eval.select_metric}; total wall {wall:.0f} s",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(row(runs)) + " |" for runs in results.values()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return

    from dglrec.errors import ConfigError
    from dglrec.runs.pipeline import load_dataset

    began = time.perf_counter()
    kinds = [k.strip() for k in args.samplers.split(",") if k.strip()]
    try:
        cfg = recipe(args)
        seeds = [cfg.seed + i for i in range(args.seeds)]
        for kind in kinds:  # fail on a bad sampler or override before any training
            recipe(args, kind)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    for seed in seeds:  # build the processed data once, outside the measured workers
        load_dataset(recipe(args, seed=seed), log=log)

    results: dict[str, list[dict]] = {}
    for kind in kinds:
        for seed in seeds:
            log(f"== {kind}, seed {seed}")
            results.setdefault(kind, []).append(spawn(args, kind, seed))

    text = report(args, cfg, results, time.perf_counter() - began)
    print(text, end="")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
