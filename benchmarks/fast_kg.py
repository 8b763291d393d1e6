"""Before/after table of issue 14: s/epoch, full-ranking s and peak RSS per model, two code trees.

Each (tree, recipe) cell runs in its own subprocess with ``PYTHONPATH`` set to that
tree (e.g. a ``git archive`` of the commit before the change, and this checkout), so
both are measured in one run on the same machine, interleaved: repeat ``r`` runs every
cell once before repeat ``r + 1``. A worker builds the recipe on the real data
(``model.init = random``: TransE pretraining does not change speed), trains one
warm-up epoch and ``--epochs`` timed ones, then ranks every test user (or the first
``--rank-users`` of them) against every item exactly as ``CTRTrainer.final_test``
does (``CTRTrainer.ranking_metrics``: on the grid for the KGCN family; trees without
it: ``evaluate_ranking`` over ``trainer.score_pairs``, chunks of
``eval.ranking_users``). Reported: the median over
repeats of each worker's median epoch, its ranking seconds and its peak RSS
(``ru_maxrss``), and the ranking metrics of the first repeat (old and new must agree).
With ``--rankings N`` each worker ranks N times and the table adds the median of the
fastest of them: warm caches, less noise when the trees differ by little. Workers of
both trees run with the allocator settings ``dglrec`` gives itself
(``dglrec.runs.allocator``, as environment variables; ``--malloc default`` for glibc's).

Usage::

    git archive d40d2c0 | tar -x -C /tmp/old
    DGLREC_RAW_DIR=../shared/data python benchmarks/fast_kg.py --old /tmp/old --new . \\
        --repeats 3 --threads 1 kgcn kaisg mgwa kgnn_ls kgcn:model.n_layers=2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(
    root: str, spec: str, epochs: int, threads: int, rank: bool, rank_users: int, rankings: int = 1
) -> dict:
    import torch

    torch.set_num_threads(threads)
    from dglrec.evaluation.ranking import evaluate_ranking
    from dglrec.runs import pipeline
    from dglrec.runs.recipes import load_recipe

    recipe, *overrides = spec.split(":")
    cfg = load_recipe(
        Path(root) / "recipes" / f"{recipe}.toml", [*overrides, "model.init=random"], seed=1
    )
    cfg.sweep = {}
    built = pipeline.build(cfg, log=lambda _: None)
    trainer = pipeline.trainer_for(built, log=lambda _: None)
    trainer.train_epoch(1)
    seconds = []
    for epoch in range(2, epochs + 2):
        began = time.perf_counter()
        trainer.train_epoch(epoch)
        seconds.append(time.perf_counter() - began)
    out = {"s_per_epoch": statistics.median(seconds)}
    if rank:
        splits = trainer.dataset.splits
        test = splits["test"]
        if rank_users:  # the first rank_users users with a test positive (the same in both trees)
            users = torch.unique(test[test[:, 2] == 1][:, 0])[:rank_users]
            test = test[torch.isin(test[:, 0], users)]
        ranking_seconds = []
        for _ in range(rankings):
            began = time.perf_counter()
            if hasattr(trainer, "ranking_metrics"):  # trees that rank on the grid (KGCN family)
                metrics = trainer.ranking_metrics(test)
            else:
                metrics = evaluate_ranking(
                    trainer.score_pairs,
                    splits["train"],
                    test,
                    trainer.dataset.n_users,
                    trainer.dataset.n_items,
                    cfg.eval.ranking_ks or [20],
                    cfg.eval.ranking_users,
                )
            ranking_seconds.append(time.perf_counter() - began)
        out["ranking_s"] = ranking_seconds[0]  # what a fit's one final ranking costs
        if rankings > 1:  # the same ranking again, caches warm: less noise to compare trees by
            out["ranking_fastest_s"] = min(ranking_seconds)
        out["metrics"] = {k: round(v, 4) for k, v in metrics.items()}
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_cell(root: str, spec: str, args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(root).resolve()), OMP_NUM_THREADS=str(args.threads))
    if args.malloc == "kept":
        # What `dglrec` sets for itself, as environment variables, so that a tree without
        # dglrec.runs.allocator runs under the same allocator.
        from dglrec.runs.allocator import ENVIRONMENT

        env.update(ENVIRONMENT)
    cmd = [sys.executable, __file__, "--worker", root, spec, "--epochs", str(args.epochs)]
    cmd += ["--threads", str(args.threads), "--rank-users", str(args.rank_users)]
    cmd += ["--rankings", str(args.rankings)]
    cmd += ["--no-rank"] if args.no_rank else []
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("specs", nargs="*", help="recipe stem, optionally :override:override")
    parser.add_argument("--old")
    parser.add_argument("--new", default=".")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-rank", action="store_true")
    parser.add_argument(
        "--rank-users", type=int, default=0, help="rank only the first N test users (0: all)"
    )
    parser.add_argument(
        "--rankings",
        type=int,
        default=1,
        help="rank N times per worker; N > 1 adds the fastest of them beside the first",
    )
    parser.add_argument(
        "--malloc",
        choices=("kept", "default"),
        default="kept",
        help="kept: both trees' workers keep freed memory for reuse, as `dglrec` does "
        "(dglrec.runs.allocator); default: glibc's own thresholds",
    )
    parser.add_argument("--worker", nargs=2, metavar=("ROOT", "SPEC"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.worker:
        root, spec = args.worker
        result = worker(
            root, spec, args.epochs, args.threads, not args.no_rank, args.rank_users, args.rankings
        )
        print(json.dumps(result))
        return
    cells: dict[tuple[str, str], list[dict]] = {}
    for repeat in range(args.repeats):
        for spec in args.specs:
            for tree, root in (("old", args.old), ("new", args.new)):
                result = run_cell(root, spec, args)
                cells.setdefault((spec, tree), []).append(result)
                print(f"repeat {repeat} {spec} {tree}: {json.dumps(result)}", flush=True)
    fastest = args.rankings > 1
    lines = [
        "| model | s/epoch old | s/epoch new | ranking s old | ranking s new "
        + (f"| fastest of {args.rankings} old | new " if fastest else "")
        + "| peak RSS MiB old | new | ranking metrics equal |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- | --- |" if fastest else ""),
    ]

    def med(spec, tree, key):
        values = [c[key] for c in cells[(spec, tree)] if key in c]
        return f"{statistics.median(values):.3g}" if values else "–"

    for spec in args.specs:
        old, new = cells[(spec, "old")][0], cells[(spec, "new")][0]
        same = old.get("metrics") == new.get("metrics") if "metrics" in old else "–"
        lines.append(
            f"| {spec} | {med(spec, 'old', 's_per_epoch')} | {med(spec, 'new', 's_per_epoch')} "
            f"| {med(spec, 'old', 'ranking_s')} | {med(spec, 'new', 'ranking_s')} "
            + (
                f"| {med(spec, 'old', 'ranking_fastest_s')} "
                f"| {med(spec, 'new', 'ranking_fastest_s')} "
                if fastest
                else ""
            )
            + f"| {med(spec, 'old', 'peak_rss_mib')} | {med(spec, 'new', 'peak_rss_mib')} "
            + f"| {same} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            table + "\n\n" + json.dumps({f"{s}|{t}": v for (s, t), v in cells.items()})
        )


if __name__ == "__main__":
    main()
