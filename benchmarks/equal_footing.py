"""Does the KG help? Paper-settings and tuned KG models against Pop, BPR-MF and LightGCN.

Fits every recipe below over seeds 1–5 under the clean protocol (training negatives
redrawn every epoch, epoch chosen on eval, AUC over the whole split, full ranking of
every test user over every item), then writes ``docs/equal_footing.md``: mean ± std of
test AUC, Recall@20, NDCG@20 and the cold-item slice per recipe, and paired
differences (same seeds: same split and negatives) against BPR-MF and against
LightGCN with two-sided paired t-tests.

The ``*_tuned`` recipes come from ``dglrec sweep recipes/<model>_search.toml`` (seed
1, chosen on eval AUC; see each tuned recipe's header). Every fit is an ordinary
tracked run in the MLflow experiment ``equal-footing`` (tag ``equal_footing``), and its
per-seed results are kept in ``docs/results/equal_footing/runs.csv``, committed with the
page: the page is rebuilt from that file with or without the MLflow store (``mlruns/`` is
not in git, and a new machine starts without it). A rerun skips every (recipe, seed)
already finished, in MLflow or in that file with the same recipe text, so an interrupted
table resumes and a new machine refits only what changed.

    DGLREC_RAW_DIR=../shared/data python benchmarks/equal_footing.py --workers 2
    # options: --seeds 1,2,3 --recipes kgcn,kgcn_tuned,bprmf --out FILE --report-only
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import io
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from data_prep.cache import write_atomic
from data_prep.sources import sha256_of

if TYPE_CHECKING:
    from dglrec.analysis.compare import RunRecord

EXPERIMENT = "equal-footing"
BASELINES = ("pop", "bprmf", "lightgcn")
KG_MODELS = ("kgcn", "kaisg", "mgwa", "kgnn_ls", "ripplenet", "mkr")
# The paper-settings recipe of each KG model (MKR's paper settings are Table 4's).
PAPER_RECIPE = {"mkr": "mkr_table4"}
# Models with more than the KG (MKGCN: item texts and friendships), at their papers' settings.
MULTIMODAL = ("mkgcn",)
# Below this best eval AUC a fit is reported as one that did not learn.
STUCK_AUC = 0.6
METRICS = (
    "test_auc",
    "test_recall_at_20",
    "test_ndcg_at_20",
    "test_cold_auc",
    "test_cold_recall_at_20",
)


# Per-seed results of every fit in the experiment, committed: a page is rebuilt from it.
STORE = Path("docs/results/equal_footing/runs.csv")
STORE_TAGS = ("recipe_sha256", "git_commit", "protocol_departures")
STORE_METRICS = (*METRICS, "test_cold_pairs", "test_cold_ranking_users", "best_eval_auc")


def recipe_sha256(recipe: str) -> str:
    """The SHA-256 of ``recipes/<recipe>.toml``: which text of the recipe a fit came from."""
    return sha256_of(Path(f"recipes/{recipe}.toml"))


def load_store(path: Path = STORE) -> list[RunRecord]:
    """The stored fits: one record per (recipe, seed), as :func:`compare.select_runs` gives."""
    from dglrec.analysis.compare import RunRecord

    if not path.is_file():
        return []
    records = []
    with path.open(newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            try:
                metrics = {m: float(row[m]) for m in STORE_METRICS if row.get(m)}
                seed = int(row["seed"])
            except (KeyError, ValueError) as exc:
                sys.exit(f"{path}, line {line}: not a stored fit ({exc})")
            records.append(
                RunRecord(
                    run_id=row["run_id"],
                    name=row["run_id"],
                    group=row["recipe"],
                    seed=seed,
                    metrics=metrics,
                    tags={t: row[t] for t in STORE_TAGS if row.get(t)},
                )
            )
    return records


def save_store(records: list[RunRecord], path: Path = STORE) -> None:
    """Write the records, sorted by (recipe, seed), atomically; metrics at full precision."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["recipe", "seed", "run_id", *STORE_TAGS, *STORE_METRICS])
    for r in sorted(records, key=lambda r: (r.group, r.seed)):
        metrics = [r.metrics.get(m) for m in STORE_METRICS]
        writer.writerow(
            [r.group, r.seed, r.run_id, *(r.tags.get(t, "") for t in STORE_TAGS)]
            + ["" if v is None or math.isnan(v) else repr(v) for v in metrics]
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda partial: partial.write_text(out.getvalue()))


def merge_records(stored: list[RunRecord], tracked: list[RunRecord]) -> list[RunRecord]:
    """One record per (recipe, seed): the tracked run where both have one.

    ``tracked`` comes newest first (MLflow's order), so a refit replaces an older fit.
    """
    merged = {(r.group, r.seed): r for r in stored}
    for r in reversed(tracked):
        merged[(r.group, r.seed)] = r
    return list(merged.values())


def split_stale(
    records: list[RunRecord], current: dict[str, str]
) -> tuple[list[RunRecord], list[RunRecord]]:
    """``(current, stale)``: stale are fits of a recipe in ``current`` (recipe -> SHA-256 of
    its text now) from another text. A fit of an older text is not the recipe's result.
    Fits that carry no SHA-256 (tracked before the tag existed) count as current."""
    stale = [
        r
        for r in records
        if r.group in current and r.tags.get("recipe_sha256", current[r.group]) != current[r.group]
    ]
    stale_ids = {id(r) for r in stale}
    return [r for r in records if id(r) not in stale_ids], stale


def tracked_records() -> list[RunRecord]:
    """The experiment's finished fits in the MLflow store (none where there is no store)."""
    from dglrec.analysis import compare
    from dglrec.errors import RunError

    try:
        return compare.select_runs(experiments=[EXPERIMENT], tags={"equal_footing": "1"})
    except RunError as exc:  # no experiment in this store yet: the committed file is the record
        print(f"{exc}; the page uses {STORE} alone")
        return []


def default_recipes() -> list[str]:
    recipes = list(BASELINES)
    for model in KG_MODELS:
        recipes += [PAPER_RECIPE.get(model, model), f"{model}_tuned"]
    return recipes + list(MULTIMODAL)


def fit_one(recipe: str, seed: int) -> tuple[str, int, float, float]:
    import torch

    from dglrec.runs import pipeline, tracking
    from dglrec.runs.recipes import load_recipe

    torch.set_num_threads(1)
    sha = recipe_sha256(recipe)
    # Finished from this recipe text (a changed recipe is refitted).
    done = tracking.find_runs(
        f"tags.equal_footing = '1' and tags.recipe = '{recipe}' and tags.seed = '{seed}' "
        f"and tags.recipe_sha256 = '{sha}' and attributes.status = 'FINISHED'"
    )
    if done:
        return recipe, seed, done[0].data.metrics.get("test_auc", float("nan")), 0.0
    cfg = load_recipe(
        f"recipes/{recipe}.toml",
        ["tracking.log_model=false", f'tracking.experiment="{EXPERIMENT}"'],
        seed=seed,
    )
    began = time.perf_counter()
    tags = {"equal_footing": "1", "recipe_sha256": sha}
    _, result = pipeline.fit(cfg, log=lambda _: None, extra_tags=tags)
    return recipe, seed, result.test["auc"], time.perf_counter() - began


def run_fits(
    current: dict[str, str], seeds: list[int], workers: int, stored: list[RunRecord]
) -> float:
    """Fit every (recipe, seed) not finished yet, ``workers`` at a time; the wall seconds.

    ``current``: recipe -> SHA-256 of its text now, in the order to fit. Finished: a
    tracked run (checked in :func:`fit_one`) or a stored fit of the same recipe text.
    """
    recipes = list(current)
    kept = {
        (r.group, r.seed) for r in stored if r.tags.get("recipe_sha256") == current.get(r.group)
    }
    wanted = [(r, s) for r in recipes for s in seeds]
    jobs = [job for job in wanted if job not in kept]
    if len(jobs) < len(wanted):
        print(f"kept from {STORE}: {len(wanted) - len(jobs)} fits of unchanged recipes")
    began = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        futures = [pool.submit(fit_one, *job) for job in jobs]
        for n, future in enumerate(concurrent.futures.as_completed(futures), 1):
            recipe, seed, auc, seconds = future.result()
            print(
                f"[{n}/{len(jobs)}] {recipe:16s} seed {seed}: test AUC {auc:.4f} ({seconds:.0f}s)",
                flush=True,
            )
    return time.perf_counter() - began


INTRO = (
    "Clean protocol for every row: training negatives redrawn every epoch "
    "(uniform over items with no known positive), epoch chosen on eval AUC, AUC "
    "over the whole split, Recall/NDCG@20 over a full ranking of every test user "
    "against every item with training items removed; the cold slice is test pairs "
    "whose item has ≤ 2 training positives. Rows without `_tuned` are each paper's "
    "settings (BPR-MF and LightGCN: the settings chosen on eval by their grids); "
    "`_tuned` rows were chosen on eval AUC (seed 1) by a 12-trial random search over "
    "lr, L2 and dim with up to 100 epochs and patience 10, the budget of the "
    "baselines' 12-setting grids. `mkgcn` is MKGCN at its authors' settings with "
    "item texts (names, tags; MiniLM), the artist–tag graph and friendships "
    "(docs/guide.md#mkgcn): more than the KG."
)


def write_report(
    records: list[RunRecord],
    recipes: list[str],
    seeds: list[int],
    path: Path,
    wall: float | None,
    missing: list[str],
    title: str = "Does the KG help? Equal footing on Last.FM-KG",
    intro: str = INTRO,
    against: tuple[str, ...] = ("bprmf", "lightgcn"),
    script: str = "benchmarks/equal_footing.py",
    plot: Path | None = None,
) -> None:
    """The page: a summary table, then one paired table per group in ``against``."""
    from dglrec.analysis import compare

    records = [r for r in records if r.group in recipes and r.seed in seeds]
    metrics = [m for m in METRICS if any(m in r.metrics for r in records)]
    lines = [
        f"# {title}",
        "",
        f"Generated by `python {script}` (seeds {','.join(map(str, seeds))}"
        + (f"; {wall / 60:.1f} min wall for the fits it ran" if wall else "")
        + "). "
        + intro,
        "",
    ]
    if missing:
        lines += [f"Not measured yet (no recipe): {', '.join(f'`{r}`' for r in missing)}.", ""]
    unfitted = [r for r in recipes if r not in {rec.group for rec in records}]
    if unfitted:
        names = ", ".join(f"`{r}`" for r in unfitted)
        lines += [f"Not fitted yet (no finished fit on record): {names}.", ""]
    summary = compare.build_comparison(records, metrics)
    lines += ["## Test metrics", "", *compare.markdown_table(*compare.table_rows(summary)), ""]
    lines += ["mean ± sample std over seeds.", ""]
    slice_sizes = [
        (r.metrics["test_cold_pairs"], r.metrics.get("test_cold_ranking_users", 0))
        for r in records
        if "test_cold_pairs" in r.metrics
    ]
    if slice_sizes:
        pairs, users = zip(*slice_sizes, strict=True)
        lines += [
            f"Cold slice per seed: {min(pairs):.0f}–{max(pairs):.0f} test pairs (AUC), "
            f"{min(users):.0f}–{max(users):.0f} users with a cold relevant item (Recall@20).",
            "",
        ]
    # A seed whose model never left chance is part of the row (it ran under the same
    # protocol), but a reader should see which seeds pull a mean down and why.
    stuck = sorted(
        (r.group, r.seed) for r in records if r.metrics.get("best_eval_auc", 1.0) < STUCK_AUC
    )
    if stuck:
        by_group: dict[str, list[int]] = {}
        for group, seed in stuck:
            by_group.setdefault(group, []).append(seed)
        lines += [
            f"Did not learn (best eval AUC below {STUCK_AUC}; early stopping ended them): "
            + "; ".join(
                f"`{g}` seed{'s' if len(v) > 1 else ''} {', '.join(map(str, v))}"
                for g, v in by_group.items()
            )
            + ". They are in the means: the setting was chosen on seed 1, as every "
            "row's was.",
            "",
        ]
    if plot is not None:
        plot.parent.mkdir(parents=True, exist_ok=True)
        compare.plot_bars(summary, plot)
        lines += [f"![test metrics, mean ± std over seeds]({plot.relative_to(path.parent)})", ""]
    groups = {r.group for r in records}
    for baseline in (b for b in against if b in groups):
        paired = compare.build_comparison(records, metrics, baseline=baseline)
        lines += [f"## Paired against {baseline} (row − {baseline}, same seeds)", ""]
        lines += [*compare.markdown_table(*compare.paired_rows(paired)), ""]
        lines += ["mean ± std of per-seed differences; two-sided paired t-test; * p < 0.05.", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def run(
    description: str, recipes: list[str], out: str, plot_name: str | None = None, **page
) -> None:
    """The command line shared by the page scripts: parse, fit what is missing, write the page.

    ``page`` goes to :func:`write_report` (title, intro, against, script); the plot, if
    ``plot_name`` is given, goes to ``images/<plot_name>`` beside the page.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--recipes", default=",".join(recipes))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", default=out)
    parser.add_argument("--report-only", action="store_true", help="fit nothing, rewrite the page")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    recipes = args.recipes.split(",")
    # A model not swept yet has no *_tuned recipe: its row is listed as missing.
    missing = [r for r in recipes if not Path(f"recipes/{r}.toml").is_file()]
    if missing:
        print(f"skipped, no recipe yet: {', '.join(missing)}")
    recipes = [r for r in recipes if r not in missing]
    current = {r: recipe_sha256(r) for r in recipes}
    stored = load_store()
    wall = None if args.report_only else run_fits(current, seeds, args.workers, stored)
    records = merge_records(stored, tracked_records())
    save_store(records)
    records, stale = split_stale(records, current)
    if stale:
        print(f"left off the page, fitted from an older recipe text: {len(stale)} fits")
    path = Path(args.out)
    plot = path.parent / "images" / plot_name if plot_name else None
    write_report(records, recipes, seeds, path, wall, missing, plot=plot, **page)
    print(f"wrote {path} and {STORE}")


def main() -> None:
    run(__doc__.splitlines()[0], default_recipes(), "docs/equal_footing.md", "equal_footing.png")


if __name__ == "__main__":
    main()
