"""Fit recipes over several seeds and print mean ± std of test metrics (CTR or edge regression).

Every fit is a normal tracked run (MLflow store of the current directory, or
``$MLFLOW_TRACKING_URI``). Paired differences against a baseline recipe use the
same seeds, hence the same splits and negatives, and a paired t-test.
Epochs are always selected on the eval split; test is read once per run.

Usage::

    DGLREC_RAW_DIR=../shared/data python benchmarks/ctr_table.py \\
        recipes/kgcn.toml recipes/kaisg.toml recipes/mgwa.toml \\
        --seeds 1 2 3 4 5 --baseline recipes/kgcn.toml [--set K=V ...] [--out table.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from scipy import stats

from dglrec.runs import pipeline
from dglrec.runs.recipes import load_recipe


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipes", nargs="+", type=Path)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--baseline", type=Path, help="recipe to pair the others against")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    parser.add_argument("--json", type=Path, help="write every run's metrics here")
    args = parser.parse_args()

    results: dict[str, dict[int, dict]] = {}
    for recipe in args.recipes:
        for seed in args.seeds:
            cfg = load_recipe(recipe, args.overrides + ["tracking.log_model=false"], seed=seed)
            began = time.perf_counter()
            run_id, result = pipeline.fit(cfg, log=lambda m: print(m, file=sys.stderr))
            results.setdefault(recipe.stem, {})[seed] = {
                "run_id": run_id,
                "best_epoch": result.best_epoch,
                "wall_s": time.perf_counter() - began,
                "s_per_epoch": statistics.mean(h.get("epoch_seconds", 0.0) for h in result.history),
                **{f"eval_{k}": v for k, v in result.best_eval.items()},
                **{f"test_{k}": v for k, v in result.test.items()},
            }
            print(f"{recipe.stem} seed {seed}: {results[recipe.stem][seed]}", file=sys.stderr)

    # CTR recipes report auc/acc/f1, edge regression mse/mae; the first selects epochs.
    first = next(iter(next(iter(results.values())).values()))
    headline = ("auc", "acc", "f1", "mse", "mae", "recall_at_10", "ndcg_at_10")
    metrics = [m for m in headline if f"test_{m}" in first]
    main_metric = metrics[0]
    lines = [
        f"seeds {args.seeds}; overrides {args.overrides or 'none'}; "
        f"test metrics at the best eval-{main_metric} epoch",
        "",
        "| recipe | "
        + " | ".join(f"test {m.upper()}" for m in metrics)
        + f" | eval {main_metric.upper()} | best epoch | s/epoch | wall s/fit |",
        "|---|" + "---|" * (len(metrics) + 4),
    ]
    for name, runs in results.items():
        columns = {key: [r[key] for r in runs.values()] for key in next(iter(runs.values()))}
        lines.append(
            f"| {name} | "
            + " | ".join(mean_std(columns[f"test_{m}"]) for m in metrics)
            + f" | {mean_std(columns[f'eval_{main_metric}'])}"
            + f" | {statistics.mean(columns['best_epoch']):.1f}"
            + f" | {statistics.mean(columns['s_per_epoch']):.2f}"
            + f" | {statistics.mean(columns['wall_s']):.0f} |"
        )
    if args.baseline and args.baseline.stem in results and len(args.seeds) > 1:
        base = results[args.baseline.stem]
        lines += [
            "",
            f"Paired differences vs {args.baseline.stem} (same seeds), test {main_metric}:",
            "",
            "| recipe | mean diff | std | t | p (paired t-test) |",
            "|---|---|---|---|---|",
        ]
        for name, runs in results.items():
            if name == args.baseline.stem:
                continue
            key = f"test_{main_metric}"
            diffs = [runs[s][key] - base[s][key] for s in args.seeds]
            test = stats.ttest_rel(
                [runs[s][key] for s in args.seeds], [base[s][key] for s in args.seeds]
            )
            lines.append(
                f"| {name} | {statistics.mean(diffs):+.4f} | {statistics.stdev(diffs):.4f} | "
                f"{test.statistic:.2f} | {test.pvalue:.4f} |"
            )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
