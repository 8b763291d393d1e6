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

import statistics

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
