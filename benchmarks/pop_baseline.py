"""Popularity ranking on the CTR protocol: the floor every KG model must clear.

Scores each test pair by its item's number of training positives (no learning) and
reports the test AUC over the whole split, per seed and as mean ± std. The seed draws
negatives and split exactly as `dglrec fit --seed S` does, so the numbers pair with
those runs. (A first-class `pop` recipe comes with the baselines issue.)

Usage::

    DGLREC_RAW_DIR=/path/to/raw python benchmarks/pop_baseline.py --seeds 1 2 3 4 5
"""

from __future__ import annotations

import argparse
import statistics

import torch

from dglrec.evaluation.metrics import roc_auc
from dglrec.runs.pipeline import load_dataset
from dglrec.runs.recipes import load_recipe


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--recipe", default="recipes/kgcn.toml", help="recipe whose [data] section to use"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    args = parser.parse_args()
    aucs = []
    for seed in args.seeds:
        dataset = load_dataset(load_recipe(args.recipe, seed=seed), log=lambda _: None)
        train, test = dataset.splits["train"], dataset.splits["test"]
        positives = train[train[:, 2] == 1]
        popularity = torch.bincount(positives[:, 1], minlength=dataset.n_items).double()
        score = popularity[test[:, 1]].numpy()
        aucs.append(roc_auc(test[:, 2].numpy(), score))
        # ACC/F1 need a threshold on a probability; popularity has none, so only AUC.
        print(f"seed {seed}: test AUC {aucs[-1]:.4f}")
    spread = f" ± {statistics.stdev(aucs):.4f}" if len(aucs) > 1 else ""
    print(f"Pop test AUC {statistics.mean(aucs):.4f}{spread} over seeds {args.seeds}")


if __name__ == "__main__":
    main()
