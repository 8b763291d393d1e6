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
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dglrec.config import RecipeConfig, apply_overrides, resolve, toml_value
from dglrec.errors import ConfigError
from dglrec.metrics import HIGHER_IS_BETTER


@dataclass
class Trial:
    overrides: list[str]
    cfg: RecipeConfig


SWEEP_OPTIONS = ("method", "n_trials")
RANGE_KEYS = {"min", "max", "log", "int"}


def validate_sweep(table: dict) -> dict:
    """Check a ``[sweep]`` table; errors name the offending ``sweep.*`` key."""
    method = table.get("method", "grid")
    if method not in ("grid", "random"):
        raise ConfigError(f'sweep.method: expected "grid" or "random", got {method!r}')
    if method == "random":
        n_trials = table.get("n_trials")
        if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
            raise ConfigError("sweep.n_trials: random search needs a positive number of trials")
    elif "n_trials" in table:
        raise ConfigError('sweep.n_trials: only for method = "random" (a grid fits every point)')
    for path, values in table.items():
        if path in SWEEP_OPTIONS:
            continue
        if len(path.split(".")) != 2:
            raise ConfigError(f"sweep: {path!r} is not a section.key")
        if isinstance(values, dict):
            if method != "random":
                raise ConfigError(f'sweep.{path}: a {{min, max}} range needs method = "random"')
            unknown = set(values) - RANGE_KEYS
            low, high = values.get("min"), values.get("max")
            if unknown or not all(isinstance(v, int | float) for v in (low, high)) or low >= high:
                raise ConfigError(f"sweep.{path}: expected {{min = a, max = b}} with a < b")
            if values.get("log") and low <= 0:
                raise ConfigError(f"sweep.{path}: a log range needs min > 0")
        elif not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.{path}: expected a non-empty list of values")
    return table


def search_space(cfg: RecipeConfig) -> dict:
    """The ``[sweep]`` keys that vary (``method`` and ``n_trials`` left out)."""
    return {k: v for k, v in cfg.sweep.items() if k not in SWEEP_OPTIONS}


def sample_points(cfg: RecipeConfig) -> list[tuple]:
    """The trials' values, one tuple per trial in the order of :func:`search_space`."""
    space = search_space(cfg)
    if cfg.sweep.get("method", "grid") == "grid":
        return list(itertools.product(*space.values()))
    rng = np.random.default_rng([cfg.seed, 0x5EE9])
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


def run_sweep(
    cfg: RecipeConfig, log: Callable[[str], None] = print, workers: int = 1
) -> tuple[str, list[dict]]:
    """Fit every trial here (``workers`` processes at a time); the parent run id and records."""
    from dglrec import batch

    trials = batch.create(cfg, "sweep")
    out = batch.run_local(trials, workers, log)
    if not out["records"]:
        raise ConfigError(f"sweep {trials.id}: no trial finished (logs: {trials.path / 'logs'})")
    return trials.parent_run_id, out["records"]


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
