"""``dglrec compare``: runs grouped by recipe, metrics as mean ± std, paired tests, plots.

Runs are selected from the MLflow store by experiment, model, recipe, tag or run
id (a multi-seed or sweep parent stands for its child runs). Only leaf runs that
finished with test metrics count. Runs are grouped by their ``recipe`` tag (the
recipe file's name; older runs: the model), and each group's metrics are
summarised as mean ± sample std over its runs (seeds).

Against a baseline group, each other group is compared on the seeds both have:
the per-seed difference ``group − baseline`` is summarised as mean ± std and
tested with a two-sided paired t-test (:func:`scipy.stats.ttest_rel`); with two
or more seeds, ``p`` is reported, otherwise it is NaN.

:func:`write_report` writes ``table.md``, ``table.csv`` and four PNG plots:
learning curves (the eval selection metric per epoch), a bar chart with error
bars per metric, ROC curves (from each run's ``predictions/test.npz``), and
Recall@K / NDCG@K curves.
"""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dglrec.errors import ConfigError, RunError
from dglrec.evaluation.metrics import HIGHER_IS_BETTER
from dglrec.runs import tracking

# Run kinds that summarise other runs; compare their children instead.
PARENT_KINDS = ("multi_seed", "sweep", "comparison")
# The columns shown when --metric is not given, where the runs have them.
HEADLINE_METRICS = (
    "test_auc",
    "test_acc",
    "test_f1",
    "test_recall_at_20",
    "test_ndcg_at_20",
    "test_coverage_at_20",
    "test_cold_auc",
    "test_cold_recall_at_20",
    "test_mse",
    "test_mae",
)
RANKING_METRIC = re.compile(r"^test_(recall|ndcg)_at_(\d+)$")


@dataclass
class RunRecord:
    run_id: str
    name: str
    group: str
    seed: int | None
    metrics: dict[str, float]
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)

    @property
    def protocol(self) -> str:
        """``clean``, the run's protocol departures, or ``unrecorded`` (runs before dglrec 0.2)."""
        departures = self.tags.get("protocol_departures")
        if departures is None:
            return "unrecorded"
        return "clean" if departures == "none" else departures

    @property
    def selection_key(self) -> str:
        """The per-epoch eval metric the run chose its epoch by, e.g. ``eval_auc``."""
        return "eval_" + self.params.get("eval.select_metric", "auc")


@dataclass
class Comparison:
    groups: dict[str, list[RunRecord]]
    metrics: list[str]
    baseline: str | None = None

    def summary(self, group: str, metric: str) -> tuple[float, float, int]:
        """``(mean, std, n)`` of ``metric`` over the group's runs (std 0 for one run)."""
        values = [r.metrics[metric] for r in self.groups[group] if metric in r.metrics]
        if not values:
            return math.nan, math.nan, 0
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return statistics.mean(values), std, len(values)

    def protocol(self, group: str) -> str:
        """The group's protocol: its runs' (``clean``, ``select_on=test (LEAKY)``, ...)."""
        return " | ".join(sorted({r.protocol for r in self.groups[group]}))

    def paired(self, group: str, metric: str) -> dict[str, float]:
        """``group − baseline`` over matching seeds: mean, std, n and the paired t-test's p."""
        return paired_difference(self.groups[group], self.groups[self.baseline], metric)


def higher_is_better(metric: str) -> bool:
    name = metric.removeprefix("test_").removeprefix("best_eval_")
    if name in HIGHER_IS_BETTER:
        return HIGHER_IS_BETTER[name]
    return not name.startswith("popularity")


def paired_difference(runs: list[RunRecord], baseline: list[RunRecord], metric: str) -> dict:
    from scipy.stats import ttest_rel

    ours = {r.seed: r.metrics[metric] for r in runs if metric in r.metrics}
    theirs = {r.seed: r.metrics[metric] for r in baseline if metric in r.metrics}
    seeds = sorted(s for s in ours.keys() & theirs.keys() if s is not None)
    diffs = [ours[s] - theirs[s] for s in seeds]
    out = {"n": float(len(seeds)), "mean": math.nan, "std": math.nan, "p": math.nan}
    if not diffs:
        return out
    out["mean"] = statistics.mean(diffs)
    out["std"] = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    if len(diffs) > 1 and out["std"] > 0:
        out["p"] = float(ttest_rel([ours[s] for s in seeds], [theirs[s] for s in seeds]).pvalue)
    elif len(diffs) > 1:  # identical differences: no variance to test against
        out["p"] = 0.0 if out["mean"] != 0 else 1.0
    return out


# ---------------------------------------------------------------------- selection
def _filter(models: list[str], recipes: list[str], tags: dict[str, str]) -> str:
    clauses = [f"tags.`{key}` = '{value}'" for key, value in tags.items()]
    if len(models) == 1:
        clauses.append(f"tags.model = '{models[0]}'")
    if len(recipes) == 1:
        clauses.append(f"tags.recipe = '{recipes[0]}'")
    return " and ".join(clauses)


def parse_tags(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--tag {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def select_runs(
    run_ids: list[str] | None = None,
    experiments: list[str] | None = None,
    models: list[str] | None = None,
    recipes: list[str] | None = None,
    tags: dict[str, str] | None = None,
) -> list[RunRecord]:
    """Leaf runs with test metrics, matching every given criterion (see the module docstring)."""
    models, recipes, tags = list(models or []), list(recipes or []), dict(tags or {})
    runs = tracking.search_runs(experiments, _filter(models, recipes, tags), run_ids)
    leaves, seen = [], set()
    for run in runs:
        expanded = tracking.children_of(run) if run.data.tags.get("kind") in PARENT_KINDS else [run]
        for leaf in expanded:
            if leaf.info.run_id in seen or leaf.data.tags.get("kind") in PARENT_KINDS:
                continue
            seen.add(leaf.info.run_id)
            leaves.append(leaf)
    records = []
    for run in leaves:
        tags_of = run.data.tags
        if models and tags_of.get("model") not in models:
            continue
        if recipes and tags_of.get("recipe", tags_of.get("model")) not in recipes:
            continue
        if any(tags_of.get(k) != v for k, v in tags.items()):
            continue
        finished = run.info.status == "FINISHED"
        if not finished or not any(k.startswith("test_") for k in run.data.metrics):
            continue
        seed = tags_of.get("seed")
        records.append(
            RunRecord(
                run_id=run.info.run_id,
                name=tags_of.get("mlflow.runName", run.info.run_id),
                group=tags_of.get("recipe") or tags_of.get("model", "?"),
                seed=int(seed) if seed and seed.lstrip("-").isdigit() else None,
                metrics=dict(run.data.metrics),
                tags=dict(tags_of),
                params=dict(run.data.params),
            )
        )
    return records


def build_comparison(
    records: list[RunRecord], metrics: list[str] | None = None, baseline: str | None = None
) -> Comparison:
    if not records:
        raise RunError("no finished runs with test metrics match the selection")
    groups: dict[str, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(record.group, []).append(record)
    for runs in groups.values():
        runs.sort(key=lambda r: (r.seed is None, r.seed, r.run_id))
    available = {k for r in records for k in r.metrics}
    if metrics:
        missing = [m for m in metrics if m not in available]
        if missing:
            known = ", ".join(sorted(k for k in available if k.startswith("test_")))
            raise ConfigError(f"--metric {', '.join(missing)}: no selected run has it ({known})")
    else:
        metrics = [m for m in HEADLINE_METRICS if m in available]
    if baseline is not None and baseline not in groups:
        raise ConfigError(f"--baseline {baseline!r}: no such group (groups: {', '.join(groups)})")
    comparison = Comparison(groups, list(metrics), baseline)
    first = comparison.metrics[0]
    sign = 1 if higher_is_better(first) else -1

    def best_first(group: str) -> tuple[bool, float]:
        mean = comparison.summary(group, first)[0]
        return math.isnan(mean), 0.0 if math.isnan(mean) else -sign * mean

    order = sorted(groups, key=best_first)
    comparison.groups = {g: groups[g] for g in order}
    return comparison


# ---------------------------------------------------------------------- tables
def _cell(mean: float, std: float) -> str:
    return "–" if math.isnan(mean) else f"{mean:.4f} ± {std:.4f}"


def _diff_cell(paired: dict) -> str:
    if math.isnan(paired["mean"]):
        return "–"
    if math.isnan(paired["p"]):
        p = "p = nan"
    else:  # three decimals would print a tiny p as "p = 0.000"
        p = "p < 0.001" if paired["p"] < 0.001 else f"p = {paired['p']:.3f}"
    star = "*" if not math.isnan(paired["p"]) and paired["p"] < 0.05 else ""
    return f"{paired['mean']:+.4f} ± {paired['std']:.4f} ({p}){star}"


def table_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Groups × metrics, each cell ``mean ± std``, and each group's protocol."""
    header = ["group", "runs", *comparison.metrics, "protocol"]
    rows = [
        [group, str(len(runs))]
        + [_cell(*comparison.summary(group, m)[:2]) for m in comparison.metrics]
        + [comparison.protocol(group)]
        for group, runs in comparison.groups.items()
    ]
    return header, rows


def paired_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Groups × metrics, each cell ``group − baseline`` over matching seeds, with p."""
    header = ["group", "seeds", *comparison.metrics]
    rows = []
    for group in comparison.groups:
        if group == comparison.baseline:
            continue
        pairs = comparison.paired(group, comparison.metrics[0])
        row = [group, str(int(pairs["n"]))]
        row += [_diff_cell(comparison.paired(group, m)) for m in comparison.metrics]
        rows.append(row)
    return header, rows


def _aligned(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return [line.rstrip() for line in lines]


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _render(comparison: Comparison, table: Callable[[list[str], list[list[str]]], list[str]]):
    lines = table(*table_rows(comparison))
    lines += ["", "mean ± sample std over runs (seeds)."]
    if comparison.baseline:
        baseline = comparison.baseline
        lines += ["", f"Paired against {baseline} (group − {baseline} over matching seeds):", ""]
        lines += table(*paired_rows(comparison))
        lines += ["", "mean ± std of per-seed differences; two-sided paired t-test; * p < 0.05."]
    return "\n".join(lines) + "\n"


def format_terminal(comparison: Comparison) -> str:
    return _render(comparison, _aligned)


def format_markdown(comparison: Comparison) -> str:
    return _render(comparison, markdown_table)


def format_csv(comparison: Comparison) -> str:
    """One row per group: n, and per metric mean, std (and the paired difference, p)."""
    out = io.StringIO()
    writer = csv.writer(out)
    header = ["group", "runs", "seeds"]
    for metric in comparison.metrics:
        header += [f"{metric}_mean", f"{metric}_std"]
        if comparison.baseline:
            header += [f"{metric}_diff_mean", f"{metric}_diff_std", f"{metric}_p", f"{metric}_n"]
    writer.writerow([*header, "protocol"])
    for group, runs in comparison.groups.items():
        seeds = " ".join(str(r.seed) for r in runs)
        row: list = [group, len(runs), seeds]
        for metric in comparison.metrics:
            mean, std, _ = comparison.summary(group, metric)
            row += [mean, std]
            if comparison.baseline:
                paired = comparison.paired(group, metric)
                row += [paired["mean"], paired["std"], paired["p"], int(paired["n"])]
        writer.writerow([*row, comparison.protocol(group)])
    return out.getvalue()


# ---------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on clusters or in CI
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(comparison: Comparison, path: Path) -> Path:
    """Eval selection metric per epoch: each group's mean over runs, the band ± std."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    keys = set()
    for number, (group, runs) in enumerate(comparison.groups.items()):
        key = runs[0].selection_key
        keys.add(key)
        curves = [dict(tracking.metric_history(r.run_id, key)) for r in runs]
        epochs = sorted(set().union(*curves))
        if not epochs:
            continue
        values = np.array([[c.get(e, np.nan) for e in epochs] for c in curves])
        color = f"C{number % 10}"  # the same colour per group, curve or level
        # Runs stop at different epochs (early stopping): each epoch over the runs that reached it.
        counts = np.isfinite(values).sum(0)
        mean = np.nansum(values, 0) / counts
        spread = np.nansum((values - mean) ** 2, 0) / np.maximum(counts - 1, 1)
        std = np.sqrt(np.where(counts > 1, spread, 0.0))
        if len(epochs) == 1:  # evaluated only (Pop, means): a level, not a curve
            ax.axhline(
                mean[0], linestyle="--", linewidth=1, color=color, label=f"{group} (not trained)"
            )
            continue
        marker = "." if len(epochs) < 30 else None
        ax.plot(epochs, mean, marker=marker, color=color, label=group)
        if len(runs) > 1:
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.2, color=color)
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(" / ".join(sorted(keys)).replace("_", " "))
    ax.set_title("Learning curves (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_bars(comparison: Comparison, path: Path) -> Path:
    """One panel per metric: a bar per group at its mean, error bars ± std."""
    plt = _pyplot()
    metrics = comparison.metrics
    cols = min(len(metrics), 3)
    rows = math.ceil(len(metrics) / cols)
    groups = list(comparison.groups)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.2 * cols, 0.35 * len(groups) + 2.2 * rows), squeeze=False
    )
    for ax, metric in zip(axes.flat, metrics, strict=False):
        stats = [comparison.summary(g, metric) for g in groups]
        means = np.array([s[0] for s in stats])
        stds = np.array([s[1] for s in stats])
        colors = ["tab:gray" if g == comparison.baseline else "tab:blue" for g in groups]
        ax.barh(range(len(groups)), means, xerr=stds, color=colors, capsize=3)
        ax.set_yticks(range(len(groups)), groups, fontsize="small")
        ax.invert_yaxis()
        lows = (means - stds)[np.isfinite(means)]
        if lows.size and lows.min() > 0.3:  # AUC-like scores: zoom in on where they differ
            ax.set_xlim(left=float(lows.min()) * 0.97)
        ax.set_title(metric.replace("_", " "))
        ax.xaxis.set_major_locator(plt.MaxNLocator(5))  # small values: long tick labels
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.suptitle("Test metrics (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def test_predictions(run_id: str) -> dict[str, np.ndarray] | None:
    """A run's logged test predictions (``label``, ``score``), or None if it has none."""
    try:
        path = tracking.download_artifact(run_id, "predictions/test.npz")
    except RunError:
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def plot_roc(comparison: Comparison, path: Path) -> Path | None:
    """Mean ROC curve per group (TPR averaged over seeds on a common FPR grid)."""
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    grid = np.linspace(0, 1, 201)
    drawn = 0
    for group, runs in comparison.groups.items():
        tprs, aucs = [], []
        for run in runs:
            predictions = test_predictions(run.run_id)
            if predictions is None:
                continue
            fpr, tpr, _ = roc_curve(predictions["label"], predictions["score"])
            tprs.append(np.interp(grid, fpr, tpr))
            aucs.append(run.metrics.get("test_auc", math.nan))
        if tprs:
            ax.plot(grid, np.mean(tprs, 0), label=f"{group} (AUC {np.mean(aucs):.3f})")
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("Test ROC (mean over seeds)")
    ax.legend(fontsize="small", loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def ranking_curves(comparison: Comparison) -> dict[str, dict[str, list[tuple[int, float, float]]]]:
    """``{"recall": {group: [(K, mean, std), ...]}, "ndcg": ...}`` from the runs' metrics."""
    found: dict[str, dict[str, list]] = {"recall": {}, "ndcg": {}}
    keys = {k for runs in comparison.groups.values() for r in runs for k in r.metrics}
    for key in keys:
        match = RANKING_METRIC.match(key)
        if not match:
            continue
        kind, k = match.group(1), int(match.group(2))
        for group in comparison.groups:
            mean, std, n = comparison.summary(group, key)
            if n:
                found[kind].setdefault(group, []).append((k, mean, std))
    for curves in found.values():
        for points in curves.values():
            points.sort()
    return found


def plot_ranking(comparison: Comparison, path: Path) -> Path | None:
    """Recall@K and NDCG@K against K, per group, with ± std bars."""
    curves = ranking_curves(comparison)
    if not curves["recall"]:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, kind in zip(axes, ("recall", "ndcg"), strict=True):
        for group, points in curves[kind].items():
            ks, means, stds = zip(*points, strict=True)
            ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label=group)
        ax.set_xscale("log", base=2)
        ks_all = sorted({k for points in curves[kind].values() for k, _, _ in points})
        ax.set_xticks(ks_all, [str(k) for k in ks_all])
        ax.minorticks_off()
        ax.set_xlabel("K")
        ax.set_ylabel(f"{'Recall' if kind == 'recall' else 'NDCG'}@K")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small", ncol=2)
    fig.suptitle("Full-ranking top-K on test (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


PLOTS: dict[str, Callable[[Comparison, Path], Path | None]] = {
    "learning_curves.png": plot_learning_curves,
    "metrics_bar.png": plot_bars,
    "roc_curves.png": plot_roc,
    "recall_at_k.png": plot_ranking,
}


def write_report(comparison: Comparison, out_dir: Path, plots: bool = True) -> list[Path]:
    """``table.md``, ``table.csv`` and the plots (those the runs have data for) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (
        ("table.md", format_markdown(comparison)),
        ("table.csv", format_csv(comparison)),
    ):
        (out_dir / name).write_text(text)
        written.append(out_dir / name)
    if plots:
        for name, plot in PLOTS.items():
            path = plot(comparison, out_dir / name)
            if path is not None:
                written.append(path)
    return written


def log_report(comparison: Comparison, files: list[Path], experiment: str) -> str:
    """An MLflow run (``kind=comparison``) holding the report files; returns its id."""
    name = "compare-" + "-".join(list(comparison.groups)[:4])
    with tracking.MlflowRun(experiment, run_name=name[:120]) as run:
        run.set_tags(
            {
                "kind": "comparison",
                "baseline": comparison.baseline or "",
                "groups": ",".join(comparison.groups),
                "compared_runs": ",".join(
                    r.run_id for runs in comparison.groups.values() for r in runs
                )[:5000],
                "git_commit": tracking.git_commit(),
            }
        )
        for path in files:
            run.log_artifact(path, "plots" if path.suffix == ".png" else None)
        return run.run_id
