"""Multi-seed runs: one parent MLflow run, one nested child run per seed.

``dglrec fit RECIPE --seeds 5`` fits the recipe with seeds ``seed, seed+1, ...,
seed+4`` (``--seeds 1,2,3`` names them). Each seed is an ordinary run (its own
split, negatives, init and sampling) nested under the parent. The parent carries
the recipe, the protocol tags, and for every final metric (``test_*`` and
``best_eval_*``) its mean, std (sample, ddof 1) and the number of seeds. A child
that fails is reported (tag ``failed_seeds`` and the log) and the others still
run; Ctrl-C stops the whole run.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from dglrec import tracking
from dglrec.config import RecipeConfig
from dglrec.errors import ConfigError


def parse_seeds(text: str, base: int) -> list[int]:
    """``"5"`` -> five seeds from ``base``; ``"1,2,3"`` -> those seeds."""
    try:
        if "," in text:
            seeds = [int(part) for part in text.split(",") if part.strip()]
        else:
            seeds = list(range(base, base + int(text)))
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected a count (5) or a list (1,2,3)") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: expected at least one seed, none repeated")
    return seeds


@dataclass
class MultiSeedResult:
    parent_run_id: str
    runs: dict[int, str] = field(default_factory=dict)  # seed -> child run id
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)  # seed -> error
    summary: dict[str, float] = field(default_factory=dict)


def summarize(per_seed: dict[int, dict[str, float]]) -> dict[str, float]:
    """``{metric}_mean``, ``{metric}_std`` (0 for one seed) over seeds, and ``n_seeds``."""
    out: dict[str, float] = {"n_seeds": float(len(per_seed))}
    if not per_seed:
        return out
    common = set.intersection(*(set(m) for m in per_seed.values()))
    keys = [k for k in next(iter(per_seed.values())) if k in common]  # the model's order
    for key in keys:
        values = [m[key] for m in per_seed.values()]
        out[f"{key}_mean"] = statistics.mean(values)
        out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


def fit_seeds(
    cfg: RecipeConfig, seeds: list[int], log: Callable[[str], None] = print
) -> MultiSeedResult:
    from dglrec import experiment

    with tracking.MlflowRun(
        cfg.tracking.experiment or cfg.data.name,
        run_name=cfg.tracking.run_name or f"{cfg.model_name}-seeds{len(seeds)}",
    ) as parent:
        result = MultiSeedResult(parent.run_id)
        params = cfg.flat()
        params["seed"] = ",".join(map(str, seeds))
        parent.log_params(params)
        parent.set_tags(
            {
                "kind": "multi_seed",
                "model": cfg.model_name,
                "dataset": cfg.data.name,
                "seeds": ",".join(map(str, seeds)),
                "selected_by": f"eval_{cfg.eval.select_metric}",
                "git_commit": tracking.git_commit(),
            }
        )
        parent.log_text(cfg.to_toml(), "recipe.toml")
        parent_tags: dict[str, str] = {}
        for number, seed in enumerate(seeds, start=1):
            child = copy.deepcopy(cfg)
            child.seed = seed
            child.tracking.run_name = f"{cfg.model_name}-s{seed}"
            log(f"seed {seed} ({number}/{len(seeds)})")
            try:
                run_id, fitted = experiment.fit(child, log=log, parent_run_id=parent.run_id)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 (one failed seed must not stop the others)
                result.failed[seed] = f"{type(exc).__name__}: {exc}"
                log(f"seed {seed} failed: {result.failed[seed]}")
                continue
            result.runs[seed] = run_id
            result.metrics[seed] = {
                **{f"test_{k}": v for k, v in fitted.test.items()},
                **{f"best_eval_{k}": v for k, v in fitted.best_eval.items()},
            }
            if "protocol" not in parent_tags:  # the same for every seed but the seed itself
                parent_tags["protocol"] = tracking.get_run(run_id)[2]["protocol"]
                parent.set_tags({"protocol": parent_tags["protocol"]})
        result.summary = summarize(result.metrics)
        parent.log_metrics(result.summary)
        if result.failed:
            parent.set_tags({"failed_seeds": ",".join(map(str, result.failed))})
        return result
