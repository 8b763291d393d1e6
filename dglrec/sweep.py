"""Grid sweeps over recipe keys, run locally as child runs of one parent run.

A recipe's ``[sweep]`` table maps ``"section.key"`` to a list of values::

    [sweep]
    "sampler.n_neighbors" = [4, 8, 16]
    "model.n_layers" = [1, 2]

``dglrec sweep RECIPE`` fits every combination (a trial) as a nested MLflow run
under a parent run. The parent records, for every trial, its eval and test
metrics, and names the best trial by the *eval* metric of ``[eval]
select_metric``; test metrics are reported, never used to choose.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass

from dglrec import tracking
from dglrec.config import RecipeConfig, apply_overrides, resolve, toml_value
from dglrec.errors import ConfigError
from dglrec.metrics import HIGHER_IS_BETTER


@dataclass
class Trial:
    overrides: list[str]
    cfg: RecipeConfig


def expand(cfg: RecipeConfig) -> list[Trial]:
    """One :class:`Trial` per combination of the ``[sweep]`` values, in grid order."""
    if not cfg.sweep:
        raise ConfigError('sweep: the recipe has no [sweep] table of "section.key" = [values]')
    base = cfg.to_dict()
    base["sweep"] = {}
    keys = list(cfg.sweep)
    trials = []
    for values in itertools.product(*(cfg.sweep[k] for k in keys)):
        overrides = [f"{k}={toml_value(v)}" for k, v in zip(keys, values, strict=True)]
        try:
            trial_cfg = resolve(apply_overrides(copy.deepcopy(base), overrides))
        except ConfigError as exc:
            raise ConfigError(f"sweep: {exc}") from None
        trials.append(Trial(overrides, trial_cfg))
    return trials


def run_sweep(cfg: RecipeConfig, log: Callable[[str], None] = print) -> tuple[str, list[dict]]:
    """Fit every trial; return the parent run id and one record per trial."""
    from dglrec import experiment

    trials = expand(cfg)
    metric = cfg.eval.select_metric
    records = []
    with tracking.MlflowRun(
        cfg.tracking.experiment or cfg.data.name,
        run_name=cfg.tracking.run_name or f"{cfg.model_name}-sweep-s{cfg.seed}",
    ) as parent:
        parent.log_params({f"sweep.{k}": str(v) for k, v in cfg.sweep.items()})
        parent.set_tags(
            {
                "kind": "sweep",
                "model": cfg.model_name,
                "dataset": cfg.data.name,
                "selected_by": f"eval_{metric}",
                "git_commit": tracking.git_commit(),
            }
        )
        parent.log_text(cfg.to_toml(), "recipe.toml")
        for number, trial in enumerate(trials):
            log(f"trial {number + 1}/{len(trials)}: {' '.join(trial.overrides)}")
            trial.cfg.tracking.run_name = f"{cfg.model_name}-t{number}-s{cfg.seed}"
            run_id, result = experiment.fit(trial.cfg, log=log, parent_run_id=parent.run_id)
            records.append(
                {
                    "trial": number,
                    "overrides": trial.overrides,
                    "run_id": run_id,
                    "best_epoch": result.best_epoch,
                    **{f"eval_{k}": v for k, v in result.best_eval.items()},
                    **{f"test_{k}": v for k, v in result.test.items()},
                }
            )
        best = best_record(records, metric)
        parent.log_metrics(
            {f"best_eval_{metric}": best[f"eval_{metric}"], "best_trial": best["trial"]}
        )
        parent.log_metrics({k: v for k, v in best.items() if k.startswith("test_")})
        parent.set_tags(
            {"best_run_id": best["run_id"], "best_overrides": " ".join(best["overrides"])}
        )
        parent.log_text(format_table(records, metric), "trials.md")
        return parent.run_id, records


def best_record(records: list[dict], metric: str) -> dict:
    """The trial with the best *eval* ``metric`` (largest AUC, smallest MSE)."""
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    return max(records, key=lambda r: sign * r[f"eval_{metric}"])


def format_table(records: list[dict], metric: str) -> str:
    best = best_record(records, metric)
    tests = [k for k in records[0] if k.startswith("test_")]
    lines = [
        f"| trial | overrides | eval {metric} | "
        + " | ".join(k.replace("_", " ") for k in tests)
        + " |",
        "|---|---|---|" + "---|" * len(tests),
    ]
    for r in records:
        mark = " **best**" if r is best else ""
        lines.append(
            f"| {r['trial']}{mark} | {' '.join(r['overrides'])} | {r[f'eval_{metric}']:.4f} | "
            + " | ".join(f"{r[k]:.4f}" for k in tests)
            + " |"
        )
    return "\n".join(lines) + "\n"
