"""Write ``recipes/<model>_tuned.toml`` from the newest finished sweep of ``<model>_search``.

The equal-footing tables (``benchmarks/equal_footing.py``) fit each KG model at the
settings its random search chose on eval (never on test). This script turns the sweep's
parent run (tags ``best_run_id``, ``best_overrides``; metric ``best_eval_<metric>``) into
that recipe: ``recipes/<model>_search.toml`` without its ``[sweep]`` table, the winning
values in place (each commented with the search recipe's value, the paper's), and a
header naming the sweep run, the search space and the winner's eval score.

    DGLREC_RAW_DIR=../shared/data python benchmarks/tuned_recipe.py kaisg [--sweep-run ID]
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
# Keys of a search recipe that only the search needs: trials skip the full ranking
# (selection is on eval AUC); the tuned fits report it.
SEARCH_ONLY = ("eval.ranking_ks",)


def describe_space(space: dict) -> str:
    """``train.lr in [1e-4, 1e-2] (log), model.dim in {16, 32, 64}``."""
    parts = []
    for key, spec in space.items():
        name = key.split(".", 1)[1]
        if isinstance(spec, dict):
            scale = " (log)" if spec.get("log") else ""
            parts.append(f"{name} in [{spec['min']:g}, {spec['max']:g}]{scale}")
        else:
            parts.append(f"{name} in {{{', '.join(str(v) for v in spec)}}}")
    return ", ".join(parts)


def tuned_text(search_text: str, overrides: dict[str, str], header: list[str]) -> str:
    """``search_text`` with ``overrides`` (``section.key -> value``) set, no ``[sweep]``.

    Also without :data:`SEARCH_ONLY` keys, so the tuned fits rank as every table row does.
    """
    lines = search_text.splitlines()
    body_start = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    out, section = [], ""
    for line in lines[body_start:]:
        match = re.match(r"\[(\w+)\]", line)
        if match:
            section = match.group(1)
        if section == "sweep":
            continue
        key = re.match(r"(\w+)\s*=\s*([^#]*?)\s*(#.*)?$", line)
        if key and f"{section}.{key.group(1)}" in SEARCH_ONLY:
            continue
        if key and f"{section}.{key.group(1)}" in overrides:
            value = overrides[f"{section}.{key.group(1)}"]
            line = f"{key.group(1)} = {value}  # tuned (paper: {key.group(2)})"
        out.append(line)
    while out and not out[-1].strip():
        out.pop()
    return "\n".join(["# " + h if h else "#" for h in header] + out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="recipe stem: recipes/<model>_search.toml")
    parser.add_argument("--sweep-run", help="the sweep's parent run id (default: newest)")
    args = parser.parse_args()

    from mlflow import MlflowClient

    from dglrec.config import SWEEP_OPTIONS
    from dglrec.runs import tracking

    tracking.configure()
    client = MlflowClient()
    search = RECIPES / f"{args.model}_search.toml"
    if args.sweep_run:
        parent = client.get_run(args.sweep_run)
    else:
        runs = tracking.find_runs(
            f"tags.kind = 'sweep' and tags.recipe = '{args.model}_search' "
            "and attributes.status = 'FINISHED'"
        )
        if not runs:
            raise SystemExit(f"no finished sweep of {search}: run `dglrec sweep {search}` first")
        parent = runs[0]
    tags, metrics = parent.data.tags, parent.data.metrics
    selected = tags.get("selected_by", "eval_auc")
    best = client.get_run(tags["best_run_id"])
    overrides = dict(o.split("=", 1) for o in tags["best_overrides"].split())
    recipe = tomllib.loads(search.read_text())
    sweep = recipe["sweep"]
    space = {k: v for k, v in sweep.items() if k not in SWEEP_OPTIONS}
    train = recipe["train"]
    header = [
        f"{args.model} tuned on equal footing with BPR-MF and LightGCN (does the KG help?).",
        f"Chosen by `dglrec sweep recipes/{search.name}` (seed {recipe.get('seed', 1)},",
        f"sweep run {parent.info.run_id}):",
        f"{sweep.get('n_trials', '')} {sweep.get('method', 'grid')} trials over "
        f"{describe_space(space)},",
        f"each up to {train['epochs']} epochs, early stopping on {selected.replace('_', ' ')}"
        f" (patience {train.get('patience')});",
        f"best {selected.replace('_', ' ')} {metrics[f'best_{selected}']:.4f} "
        f"(trial {int(metrics['best_trial'])}, best epoch {int(best.data.metrics['best_epoch'])}).",
        f"Chosen on eval, never on test. Everything else as recipes/{search.name}",
        "(the paper's settings, with the tuning budget's epochs and patience).",
        f"  dglrec fit recipes/{args.model}_tuned.toml --seeds 1,2,3,4,5",
        "",
    ]
    out = RECIPES / f"{args.model}_tuned.toml"
    text = tuned_text(search.read_text(), overrides, header)
    tomllib.loads(text)  # a recipe that parses, or no file
    tmp = out.with_suffix(".toml.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(f"wrote {out}: {tags['best_overrides']}")


if __name__ == "__main__":
    main()
