"""Seconds per training epoch and peak memory of each recipe's model, one process per recipe.

Each recipe is built on the real data, trained for ``--epochs`` timed epochs after
one warm-up epoch (no MLflow), and its eval split is scored once. Every recipe runs
in a fresh subprocess so that peak RSS is its own. Run it on an idle machine: the
numbers are wall-clock.

Usage::

    DGLREC_RAW_DIR=../shared/data python benchmarks/epoch_times.py recipes/*.toml --epochs 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def measure(recipe: str, epochs: int, seed: int) -> dict:
    from dglrec.runs import pipeline
    from dglrec.runs.recipes import load_recipe

    cfg = load_recipe(recipe, seed=seed)
    cfg.sweep = {}
    built = pipeline.build(cfg, log=lambda _: None)
    trainer = pipeline.trainer_for(built, log=lambda _: None)  # CTR or edge regression
    if trainer.optimizer is None:  # nothing to train (Pop)
        seconds = []
    else:
        trainer.train_epoch(1)  # warm-up: first-call allocations, lazy imports
        seconds = []
        for epoch in range(2, epochs + 2):
            began = time.perf_counter()
            trainer.train_epoch(epoch)
            seconds.append(time.perf_counter() - began)
    began = time.perf_counter()
    trainer.evaluate("eval")
    eval_seconds = time.perf_counter() - began
    return {
        "recipe": Path(recipe).stem,
        "s_per_epoch": statistics.mean(seconds) if seconds else 0.0,
        "s_per_epoch_std": statistics.stdev(seconds) if len(seconds) > 1 else 0.0,
        "eval_s": eval_seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.recipes[0], args.epochs, args.seed)))
        return
    rows = []
    for recipe in args.recipes:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                recipe,
                "--child",
                "--epochs",
                str(args.epochs),
                "--seed",
                str(args.seed),
            ],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            sys.exit(f"{recipe} failed:\n{out.stderr[-2000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        row = rows[-1]
        print(
            f"{row['recipe']:<24} {row['s_per_epoch']:7.2f} ± {row['s_per_epoch_std']:.2f} s/epoch"
            f"  eval {row['eval_s']:.2f} s  peak RSS {row['peak_rss_mib']:.0f} MiB",
            file=sys.stderr,
        )
    print("| recipe | s/epoch | eval s | peak RSS MiB |\n|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['recipe']} | {row['s_per_epoch']:.2f} ± {row['s_per_epoch_std']:.2f} "
            f"| {row['eval_s']:.2f} | {row['peak_rss_mib']:.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
