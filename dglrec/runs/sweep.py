"""Sweeps over recipe keys: grid or random search, each trial a child run of one parent run.

A recipe's ``[sweep]`` table maps ``"section.key"`` to a list of values::

    [sweep]
    "sampler.n_neighbors" = [4, 8, 16]
    "model.n_layers" = [1, 2]

and fits every combination (``method = "grid"``, the default). Random search
draws ``n_trials`` settings, each key from its list or from a range::

    [sweep]
    method = "random"
    n_trials = 20
    "train.lr" = {min = 1e-4, max = 1e-2, log = true}
    "model.dim" = [8, 16, 32]
    "sampler.n_neighbors" = {min = 2, max = 16, int = true}

The draws are fixed by the recipe's seed. ``dglrec sweep RECIPE`` fits the
trials (``--workers N`` in N processes, ``--cluster slurm`` as a job array). The
parent run records every trial's eval and test metrics and names the best trial
by the *eval* metric of ``[eval] select_metric``; test metrics are reported,
never used to choose.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import numpy as np

from dglrec.config import SWEEP_OPTIONS, RecipeConfig, apply_overrides, toml_value
from dglrec.errors import ConfigError
from dglrec.evaluation.metrics import HIGHER_IS_BETTER
from dglrec.runs.recipes import resolve
from dglrec.seeding import SWEEP_STREAM


@dataclass
class Trial:
    overrides: list[str]
    cfg: RecipeConfig


def search_space(cfg: RecipeConfig) -> dict:
    """The ``[sweep]`` keys that vary (``method`` and ``n_trials`` left out)."""
    return {k: v for k, v in cfg.sweep.items() if k not in SWEEP_OPTIONS}


def sample_points(cfg: RecipeConfig) -> list[tuple]:
    """The trials' values, one tuple per trial in the order of :func:`search_space`."""
    space = search_space(cfg)
    if cfg.sweep.get("method", "grid") == "grid":
        return list(itertools.product(*space.values()))
    rng = np.random.default_rng([cfg.seed, SWEEP_STREAM])
    points = []
    for _ in range(cfg.sweep["n_trials"]):
        point = []
        for spec in space.values():
            if isinstance(spec, list):
                point.append(spec[int(rng.integers(len(spec)))])
                continue
            low, high = float(spec["min"]), float(spec["max"])
            if spec.get("log"):
                value = float(np.exp(rng.uniform(np.log(low), np.log(high))))
            else:
                value = float(rng.uniform(low, high))
            point.append(int(round(value)) if spec.get("int") else value)
        points.append(tuple(point))
    return points


def expand(cfg: RecipeConfig) -> list[Trial]:
    """One :class:`Trial` per grid point or random draw of the ``[sweep]`` table."""
    if not search_space(cfg):
        raise ConfigError('sweep: the recipe has no [sweep] table of "section.key" = [values]')
    base = cfg.to_dict()
    base["sweep"] = {}
    keys = list(search_space(cfg))
    trials = []
    for values in sample_points(cfg):
        overrides = [f"{k}={toml_value(v)}" for k, v in zip(keys, values, strict=True)]
        try:
            trial_cfg = resolve(apply_overrides(copy.deepcopy(base), overrides))
        except ConfigError as exc:
            raise ConfigError(f"sweep: {exc}") from None
        trials.append(Trial(overrides, trial_cfg))
    return trials


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
