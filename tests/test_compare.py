"""`dglrec compare`: selection, mean ± std, paired tests by seed, Markdown/CSV, plots."""

from __future__ import annotations

import csv
import io
import math
import statistics
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import t as student_t

from dglrec.analysis import compare as cmp
from dglrec.cli import main
from dglrec.errors import ConfigError, RunError
from dglrec.runs import tracking

# recipe -> seed -> test AUC (hand-made; "kgcn" lacks seed 1, has seed 4)
AUCS = {
    "bprmf": {1: 0.86, 2: 0.85, 3: 0.87},
    "kgcn": {2: 0.80, 3: 0.79, 4: 0.78},
}


def _log_run(recipe, seed, auc, parent=None, experiment="exp", epochs=3, predictions=True):
    with tracking.MlflowRun(experiment, run_name=f"{recipe}-s{seed}", parent_run_id=parent) as run:
        run.set_tags({"model": recipe, "recipe": recipe, "seed": str(seed)})
        run.log_params({"eval.select_metric": "auc"})
        for epoch in range(1, epochs + 1):
            run.log_metrics({"eval_auc": auc - 0.01 * (epochs - epoch)}, step=epoch)
        run.log_metrics(
            {
                "test_auc": auc,
                "test_acc": auc - 0.1,
                "test_recall_at_10": auc / 10,
                "test_recall_at_20": auc / 5,
                "test_ndcg_at_10": auc / 20,
                "test_ndcg_at_20": auc / 15,
            }
        )
        if predictions:
            rng = np.random.default_rng(seed)
            label = rng.integers(0, 2, 200)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "test.npz"
                np.savez(path, label=label, score=label * auc + rng.random(200))
                run.log_artifact(path, "predictions")
        return run.run_id


@pytest.fixture
def store(isolated):
    """Two recipes' seeds, each recipe under a multi-seed parent, plus an unrelated run."""
    parents = {}
    for recipe, aucs in AUCS.items():
        with tracking.MlflowRun("exp", run_name=f"{recipe}-seeds") as parent:
            parent.set_tags({"kind": "multi_seed", "model": recipe, "recipe": recipe})
            parent.log_metrics({"test_auc_mean": 0.0})  # a parent is never a row itself
            parents[recipe] = parent.run_id
        for seed, auc in aucs.items():
            _log_run(recipe, seed, auc, parent=parents[recipe])
    _log_run("pop", 1, 0.79, experiment="other")
    return parents


def test_groups_by_recipe_with_mean_and_sample_std(store):
    comparison = cmp.build_comparison(cmp.select_runs(experiments=["exp"]))
    assert list(comparison.groups) == ["bprmf", "kgcn"]  # best test AUC first
    for recipe, aucs in AUCS.items():
        mean, std, n = comparison.summary(recipe, "test_auc")
        assert n == 3
        assert mean == pytest.approx(statistics.mean(aucs.values()))
        assert std == pytest.approx(statistics.stdev(aucs.values()))
    assert comparison.metrics[:2] == ["test_auc", "test_acc"]


def test_selection_by_parent_id_model_tag_and_experiment(store):
    by_parent = cmp.select_runs(run_ids=[store["kgcn"]])
    assert {r.group for r in by_parent} == {"kgcn"} and len(by_parent) == 3
    assert sorted(r.seed for r in by_parent) == [2, 3, 4]
    assert {r.group for r in cmp.select_runs(models=["bprmf"])} == {"bprmf"}
    assert {r.group for r in cmp.select_runs(tags={"seed": "1"})} == {"bprmf", "pop"}
    assert {r.group for r in cmp.select_runs(experiments=["other"])} == {"pop"}
    everything = cmp.select_runs()
    assert len(everything) == 7  # parents are never rows
    with pytest.raises(RunError, match="no MLflow experiment 'nope'"):
        cmp.select_runs(experiments=["nope"])
    with pytest.raises(RunError, match="no MLflow run"):
        cmp.select_runs(run_ids=["0" * 32])


def test_unfinished_runs_are_left_out(store):
    with pytest.raises(KeyboardInterrupt):
        with tracking.MlflowRun("exp", run_name="killed") as run:
            run.set_tags({"recipe": "kgcn", "seed": "9"})
            run.log_metrics({"test_auc": 0.1})
            raise KeyboardInterrupt
    assert 9 not in [r.seed for r in cmp.select_runs(recipes=["kgcn"])]


def test_paired_test_uses_matching_seeds_only(store):
    comparison = cmp.build_comparison(cmp.select_runs(experiments=["exp"]), baseline="bprmf")
    paired = comparison.paired("kgcn", "test_auc")
    diffs = [AUCS["kgcn"][s] - AUCS["bprmf"][s] for s in (2, 3)]  # seed 1 and 4 are unpaired
    assert paired["n"] == 2
    assert paired["mean"] == pytest.approx(statistics.mean(diffs))
    assert paired["std"] == pytest.approx(statistics.stdev(diffs))
    t_stat = statistics.mean(diffs) / (statistics.stdev(diffs) / math.sqrt(2))
    assert paired["p"] == pytest.approx(2 * student_t.sf(abs(t_stat), df=1))


def test_identical_runs_differ_by_zero_with_p_one():
    runs = [cmp.RunRecord(str(s), "", "a", s, {"m": 0.5}) for s in (1, 2, 3)]
    paired = cmp.paired_difference(runs, runs, "m")
    assert paired == {"n": 3.0, "mean": 0.0, "std": 0.0, "p": 1.0}


def test_markdown_and_csv_carry_the_same_numbers(store):
    comparison = cmp.build_comparison(
        cmp.select_runs(experiments=["exp"]), ["test_auc"], baseline="bprmf"
    )
    markdown = cmp.format_markdown(comparison)
    mean, std, _ = comparison.summary("kgcn", "test_auc")
    assert f"| kgcn | 3 | {mean:.4f} ± {std:.4f} |" in markdown
    assert "Paired against bprmf" in markdown
    rows = {row["group"]: row for row in csv.DictReader(io.StringIO(cmp.format_csv(comparison)))}
    assert float(rows["kgcn"]["test_auc_mean"]) == pytest.approx(mean)
    assert float(rows["kgcn"]["test_auc_std"]) == pytest.approx(std)
    assert int(rows["kgcn"]["test_auc_n"]) == 2
    assert rows["kgcn"]["seeds"] == "2 3 4"


def test_unknown_metric_or_baseline_is_a_clear_error(store):
    records = cmp.select_runs(experiments=["exp"])
    with pytest.raises(ConfigError, match="--baseline 'lightgcn': no such group"):
        cmp.build_comparison(records, baseline="lightgcn")
    with pytest.raises(ConfigError, match="--metric test_mse: no selected run has it"):
        cmp.build_comparison(records, ["test_mse"])


def test_ranking_curves_follow_k(store):
    comparison = cmp.build_comparison(cmp.select_runs(experiments=["exp"]))
    curves = cmp.ranking_curves(comparison)
    ks = [k for k, _, _ in curves["recall"]["bprmf"]]
    assert ks == [10, 20]
    assert curves["recall"]["bprmf"][1][1] == pytest.approx(
        statistics.mean(AUCS["bprmf"].values()) / 5
    )


def test_cli_writes_tables_and_plots_and_logs_them(store, isolated):
    result = CliRunner().invoke(
        main, ["compare", "--experiment", "exp", "--baseline", "bprmf", "--out", "report"]
    )
    assert result.exit_code == 0, result.output
    assert "kgcn" in result.output and "Paired against bprmf" in result.output
    for name in ("table.md", "table.csv", *cmp.PLOTS):
        data = (isolated / "report" / name).read_bytes()
        assert data, name
        if name.endswith(".png"):
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
    comparison_run = result.output.split("logged to MLflow run ")[1].split()[0]
    _, _, tags = tracking.get_run(comparison_run)
    assert tags["kind"] == "comparison" and tags["baseline"] == "bprmf"
    assert tracking.download_artifact(comparison_run, "plots/roc_curves.png").stat().st_size > 0
    # The comparison run itself is never compared again.
    assert "comparison" not in {r.tags.get("kind") for r in cmp.select_runs()}


def test_cli_errors_are_one_line(store):
    result = CliRunner().invoke(main, ["compare", "--experiment", "exp", "--baseline", "x"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: --baseline 'x'")
    assert "Traceback" not in result.output


def test_compare_real_fits_on_the_tiny_kg(tiny_recipe, isolated):
    """Two recipes fitted with two seeds each, then compared end to end by recipe name."""
    text = tiny_recipe.read_text()
    pop_recipe = isolated / "pop.toml"
    pop_recipe.write_text(text[: text.index("[model]")] + '[model]\nname = "pop"\n')
    for recipe in (tiny_recipe, pop_recipe):
        result = CliRunner().invoke(
            main,
            ["fit", str(recipe), "--seeds", "1,2", "--set", "train.epochs=1"]
            + ["--set", "tracking.log_model=false", "--set", "eval.ranking_ks=[5, 10]"],
        )
        assert result.exit_code == 0, result.output
    out = CliRunner().invoke(main, ["compare", "--baseline", "pop", "--out", "r", "--no-log"])
    assert out.exit_code == 0, out.output
    rows = {r["group"]: r for r in csv.DictReader((isolated / "r" / "table.csv").open())}
    assert set(rows) == {"tiny", "pop"}  # the recipe files' names
    assert rows["tiny"]["seeds"] == "1 2" and int(rows["tiny"]["test_auc_n"]) == 2
    assert (isolated / "r" / "roc_curves.png").stat().st_size > 0  # from logged predictions
    assert (isolated / "r" / "recall_at_k.png").stat().st_size > 0
    # The logged predictions are the best model's: they give back the logged test AUC.
    from sklearn.metrics import roc_auc_score

    for record in cmp.select_runs(recipes=["tiny"]):
        predictions = cmp.test_predictions(record.run_id)
        auc = roc_auc_score(predictions["label"], predictions["score"])
        assert auc == pytest.approx(record.metrics["test_auc"], abs=1e-9)
