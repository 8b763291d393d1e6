"""The per-seed result files the benchmark pages are rebuilt from (docs/results/*/runs.csv).

A page must come back identical from its committed file alone (a new machine has no
MLflow store), a refit must replace the fit it repeats, and a damaged file must stop
with one line naming the file and line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import equal_footing  # noqa: E402
import reproduce_protocols  # noqa: E402

from dglrec.analysis.compare import RunRecord  # noqa: E402


def record(group: str, seed: int, auc: float, run_id: str) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        name=run_id,
        group=group,
        seed=seed,
        metrics={"test_auc": auc, "test_recall_at_20": auc / 3, "best_eval_auc": 0.55},
        tags={"recipe_sha256": "ab" * 32, "git_commit": "c0ffee", "protocol_departures": "none"},
    )


def test_equal_footing_store_round_trips_at_full_precision(tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    records = [record("kgcn", 2, 0.1 + 0.2, "b"), record("bprmf", 1, 1 / 3, "a")]
    equal_footing.save_store(records, path)
    loaded = equal_footing.load_store(path)
    # Sorted by (recipe, seed); floats exactly as saved (repr), tags kept.
    assert [(r.group, r.seed, r.run_id) for r in loaded] == [("bprmf", 1, "a"), ("kgcn", 2, "b")]
    assert loaded[0].metrics == records[1].metrics
    assert loaded[1].metrics["test_auc"] == 0.1 + 0.2
    assert loaded[0].protocol == "clean"
    assert not list(tmp_path.glob(".*partial"))


def test_a_tracked_refit_replaces_the_stored_fit_and_the_newest_wins() -> None:
    stored = [record("kgcn", 1, 0.80, "old"), record("kgcn", 2, 0.81, "kept")]
    # MLflow's order: newest first.
    tracked = [record("kgcn", 1, 0.84, "newest"), record("kgcn", 1, 0.83, "older")]
    merged = {(r.group, r.seed): r.run_id for r in equal_footing.merge_records(stored, tracked)}
    assert merged == {("kgcn", 1): "newest", ("kgcn", 2): "kept"}


def test_fits_of_an_older_recipe_text_are_left_off_the_page() -> None:
    now, before = "ab" * 32, "ef" * 32
    records = [record("kgcn", 1, 0.8, "current"), record("kgcn", 2, 0.8, "old text")]
    records[1].tags["recipe_sha256"] = before
    untagged = record("kgcn", 3, 0.8, "untagged")
    del untagged.tags["recipe_sha256"]
    other = record("bprmf", 1, 0.8, "not on this page")
    other.tags["recipe_sha256"] = before
    kept, stale = equal_footing.split_stale([*records, untagged, other], {"kgcn": now})
    assert [r.run_id for r in kept] == ["current", "untagged", "not on this page"]
    assert [r.run_id for r in stale] == ["old text"]


def test_a_damaged_equal_footing_store_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    equal_footing.save_store([record("pop", 1, 0.79, "a")], path)
    path.write_text(path.read_text() + "pop,one,b,,,,0.8\n")
    with pytest.raises(SystemExit, match=r"runs\.csv, line 3: not a stored fit"):
        equal_footing.load_store(path)


def test_reproduction_store_round_trips_and_names_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    row = {
        "protocol": "clean",
        "model": "pop",
        "seed": 3,
        "run_id": "r",
        "recipe_sha256": "cd" * 32,
        "test_auc": 2 / 3,
        "seconds": 1.25,
    }
    reproduce_protocols.save_store({("pop", "clean", 3): row}, path)
    loaded = reproduce_protocols.load_store(path)
    assert list(loaded) == [("pop", "clean", 3)]
    assert loaded[("pop", "clean", 3)]["test_auc"] == 2 / 3
    assert loaded[("pop", "clean", 3)]["recipe_sha256"] == "cd" * 32
    path.write_text(path.read_text().replace(repr(2 / 3), "n/a"))
    with pytest.raises(SystemExit, match=r"runs\.csv, line 2: not a stored fit"):
        reproduce_protocols.load_store(path)
