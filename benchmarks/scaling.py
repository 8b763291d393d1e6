"""Scaling curve: s/epoch, ranking s and peak RSS of KG and CF models on synthetic data.

For each ``--scales`` factor, ``synthetic_kg.write_synthetic_kg`` writes a dataset of
that many times Last.FM-KG's size (cached under ``--root``); each (scale, model) then runs
in its own subprocess (peak RSS is its own): build the model's recipe on that data
(``model.init = random``), time the first ``--train-batches`` batches of a training
epoch (s/epoch = their time × batches per epoch / timed batches: the whole epoch
where it has no more batches), and rank a fixed sample of
``--rank-users`` test users (the same at every scale: the first ones with a test
positive) against the whole catalogue as ``CTRTrainer.ranking_metrics`` does (on the
grid where the model declares ``scores_grid``, else through ``score_pairs``), in chunks
of ``eval.ranking_users`` users (``evaluate_ranking`` over the sample only, so its
``users × items`` masks are ``rank_users × n_items``). Writes a JSON file of the rows and,
with ``--plot``, a log–log plot (matplotlib) of both times against the scale.

Usage::

    DGLREC_DATA_DIR=/tmp/scaling-data python benchmarks/scaling.py --scales 1 10 100 \\
        --models kgcn kaisg lightgcn bprmf --root /tmp/scaling --plot docs/scaling.png
    python benchmarks/scaling.py --plot-only a.json b.json --plot docs/images/scaling.png
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_kg import write_synthetic_kg  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class _Enough(Exception):
    """Raised inside the training loop once the timed batches are done."""


def worker(
    raw: str, name: str, model: str, rank_users: int, threads: int, train_batches: int
) -> dict:
    import torch

    torch.set_num_threads(threads)
    from dglrec.evaluation.ranking import evaluate_ranking
    from dglrec.runs import pipeline
    from dglrec.runs.allocator import keep_freed_memory
    from dglrec.runs.recipes import load_recipe

    keep_freed_memory()  # as `dglrec fit` runs

    overrides = [f"data.name={name}", f"data.raw_dir={raw}", "model.init=random"]
    cfg = load_recipe(REPO / "recipes" / f"{model}.toml", overrides, seed=1)
    cfg.sweep = {}
    began = time.perf_counter()
    built = pipeline.build(cfg, log=lambda _: None)
    trainer = pipeline.trainer_for(built, log=lambda _: None)
    out = {"build_s": time.perf_counter() - began}
    # Time the first `train_batches` batches of epoch 1 through the real training loop:
    # its batch generator stops after them.
    n_batches = -(-len(trainer.epoch_pairs(1)) // cfg.train.batch_size)
    all_batches = trainer.batches

    def first_batches(*args, **kwargs):
        for n, batch in enumerate(all_batches(*args, **kwargs)):
            if n == train_batches:
                raise _Enough
            yield batch

    trainer.batches = first_batches
    began = time.perf_counter()
    try:
        trainer.train_epoch(1)
        timed = n_batches
    except _Enough:
        timed = train_batches
    seconds = time.perf_counter() - began
    del trainer.batches
    out["timed_batches"], out["n_batches"] = timed, n_batches
    out["s_per_epoch"] = seconds * n_batches / max(timed, 1)
    splits, n_items = trainer.dataset.splits, trainer.dataset.n_items
    test = splits["test"]
    users = torch.unique(test[test[:, 2] == 1][:, 0])[:rank_users]
    local = torch.full((trainer.dataset.n_users,), -1, dtype=torch.long)
    local[users] = torch.arange(len(users))

    def restrict(pairs):
        kept = pairs[local[pairs[:, 0]] >= 0].clone()
        kept[:, 0] = local[kept[:, 0]]
        return kept

    def score(pairs):
        pairs = pairs.clone()
        pairs[:, 0] = users[pairs[:, 0]]
        return trainer.score_pairs(pairs)

    began = time.perf_counter()
    grid = None
    if trainer.model.capabilities.scores_grid:  # as CTRTrainer.ranking_metrics ranks
        on_grid = trainer.grid_scorer(torch.arange(n_items))

        def grid(sample_users):
            return on_grid(users[sample_users])

    metrics = evaluate_ranking(
        score,
        restrict(splits["train"]),
        restrict(test),
        len(users),
        n_items,
        [20],
        cfg.eval.ranking_users,
        score_grid=grid,
    )
    out["ranking_s"] = time.perf_counter() - began
    out["ranked_users"] = int(metrics["ranking_users"])
    out["recall_at_20"] = metrics["recall_at_20"]
    out["positives"] = int((trainer.dataset.splits["train"][:, 2] == 1).sum())
    out["n_items"] = n_items
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for key, ax, title in (
        ("s_per_epoch", axes[0], "training epoch (s)"),
        ("ranking_s_per_user", axes[1], "ranking, seconds per ranked user"),
    ):
        for model in sorted({r["model"] for r in rows}):
            mine = sorted(
                (r["scale"], r[key] if key in r else r["ranking_s"] / r["ranked_users"])
                for r in rows
                if r["model"] == model and ("s_per_epoch" in r)
            )
            if mine:
                ax.plot(*zip(*mine, strict=True), marker="o", label=model)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("× Last.FM-KG")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scales", type=float, nargs="+", default=[1, 10, 100])
    parser.add_argument("--models", nargs="+", default=["kgcn", "kaisg", "lightgcn", "bprmf"])
    parser.add_argument("--root", type=Path, default=Path("benchmarks/results/scaling"))
    parser.add_argument("--rank-users", type=int, default=2000)
    parser.add_argument(
        "--train-batches",
        type=int,
        default=300,
        help="batches of epoch 1 timed; s/epoch = their time x batches per epoch / this",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scaling.json"))
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--worker", nargs=3, metavar=("RAW", "NAME", "MODEL"))
    parser.add_argument(
        "--plot-only", type=Path, nargs="+", metavar="JSON", help="plot rows of earlier runs"
    )
    args = parser.parse_args()
    if args.plot_only:
        rows = [row for path in args.plot_only for row in json.loads(path.read_text())]
        plot(rows, args.plot or Path("scaling.png"))
        return
    if args.worker:
        raw, name, model = args.worker
        print(
            json.dumps(worker(raw, name, model, args.rank_users, args.threads, args.train_batches))
        )
        return
    rows = []
    for scale in args.scales:
        name = f"synth-{scale:g}x"
        raw = args.root / name
        if not (raw / "kg.txt").is_file():
            print(name, write_synthetic_kg(raw, scale), flush=True)
        for model in args.models:
            cmd = [sys.executable, __file__, "--worker", str(raw), name, model]
            cmd += ["--rank-users", str(args.rank_users), "--threads", str(args.threads)]
            cmd += ["--train-batches", str(args.train_batches)]
            env = dict(os.environ, PYTHONPATH=str(REPO))
            row = {"scale": scale, "model": model}
            try:
                done = subprocess.run(
                    cmd, env=env, capture_output=True, text=True, timeout=args.timeout
                )
                if done.returncode == 0:
                    row |= json.loads(done.stdout.strip().splitlines()[-1])
                else:
                    row["error"] = (done.stderr.strip().splitlines() or ["failed"])[-1]
            except subprocess.TimeoutExpired:
                row["error"] = f"timed out after {args.timeout:g} s"
            rows.append(row)
            print(json.dumps(row), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(rows, indent=1))
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
