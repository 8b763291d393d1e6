"""Run groups: random sweeps, local workers, resume of an interrupted task, concurrent writers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from dglrec.errors import ConfigError
from dglrec.runs import groups, tracking
from dglrec.runs.groups import run_sweep
from dglrec.runs.recipes import load_recipe
from dglrec.runs.sweep import expand
from dglrec.training.ctr import CTRTrainer


def _random_recipe(tmp_path, seed=1, n_trials=40):
    path = tmp_path / f"random{seed}.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            seed = {seed}
            [sweep]
            method = "random"
            n_trials = {n_trials}
            "train.lr" = {{min = 1e-4, max = 1e-2, log = true}}
            "model.dim" = [8, 16, 32]
            "sampler.n_neighbors" = {{min = 2, max = 16, int = true}}
            """
        )
    )
    return load_recipe(path)


def test_random_search_draws_within_the_space_reproducibly(tmp_path):
    trials = expand(_random_recipe(tmp_path))
    assert len(trials) == 40
    lrs = [t.cfg.train.lr for t in trials]
    assert all(1e-4 <= lr <= 1e-2 for lr in lrs)
    # log-uniform: about half the draws below the geometric midpoint 1e-3
    assert 10 < sum(lr < 1e-3 for lr in lrs) < 30
    assert {t.cfg.model["dim"] for t in trials} == {8, 16, 32}
    neighbours = [t.cfg.sampler.n_neighbors for t in trials]
    assert all(isinstance(n, int) and 2 <= n <= 16 for n in neighbours)
    again = expand(_random_recipe(tmp_path))
    assert [t.overrides for t in again] == [t.overrides for t in trials]
    other = expand(_random_recipe(tmp_path, seed=2))
    assert [t.overrides for t in other] != [t.overrides for t in trials]


@pytest.mark.parametrize(
    "sweep, message",
    [
        ('"train.lr" = {min = 0.1, max = 1.0}', 'needs method = "random"'),
        ('method = "random"\n"train.lr" = [0.1]', "sweep.n_trials"),
        ('method = "random"\nn_trials = 3\n"train.lr" = {min = 1.0, max = 0.1}', "a < b"),
        ('method = "random"\nn_trials = 3\n"train.lr" = {min = 0, max = 1, log = true}', "min > 0"),
        ('method = "bayes"', "sweep.method"),
    ],
)
def test_bad_sweep_tables_name_the_key(tmp_path, sweep, message):
    path = tmp_path / "bad.toml"
    path.write_text(f"[sweep]\n{sweep}\n")
    with pytest.raises(ConfigError, match=message):
        load_recipe(path)


def test_local_workers_run_every_trial_under_one_parent(tiny_recipe, isolated):
    cfg = load_recipe(
        tiny_recipe,
        ["train.epochs=1", "tracking.log_model=false", "sweep.sampler.n_neighbors=[2, 4, 8]"],
    )
    parent_id, records = run_sweep(cfg, log=lambda _: None, workers=2)
    assert sorted(r["trial"] for r in records) == [0, 1, 2]
    _, metrics, tags = tracking.get_run(parent_id)
    best = max(records, key=lambda r: r["eval_auc"])
    assert tags["best_run_id"] == best["run_id"]
    assert metrics["best_eval_auc"] == pytest.approx(best["eval_auc"])
    assert metrics["test_auc"] == pytest.approx(best["test_auc"])
    for record in records:
        _, child_metrics, child_tags = tracking.get_run(record["run_id"])
        assert child_tags["mlflow.parentRunId"] == parent_id
        assert "test_auc" in child_metrics
        assert "checkpoints/last.pt" in tracking.list_artifacts(record["run_id"], "checkpoints")
    logs = sorted(p.name for p in (isolated / "jobs").glob("*/logs/task-*.log"))
    assert logs == ["task-0.log", "task-1.log", "task-2.log"]


def _interrupt_at(monkeypatch, epoch_to_stop: int):
    """Ctrl-C in epoch ``epoch_to_stop``; returns the undo (not monkeypatch.undo: that
    would also leave the isolated directory)."""
    real = CTRTrainer.train_epoch

    def train_epoch(self, epoch):
        if epoch == epoch_to_stop:
            raise KeyboardInterrupt
        return real(self, epoch)

    monkeypatch.setattr(CTRTrainer, "train_epoch", train_epoch)
    return lambda: monkeypatch.setattr(CTRTrainer, "train_epoch", real)


def test_an_interrupted_task_resumes_its_own_run(tiny_recipe, isolated, monkeypatch):
    cfg = load_recipe(tiny_recipe, ["train.epochs=4", "tracking.log_model=false"])
    job = groups.create(cfg, "single")
    restore = _interrupt_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        groups.run_task(job, 0, log=lambda _: None)
    (killed,) = groups.task_runs(job).values()
    assert killed.info.status == "KILLED"
    restore()
    messages = []
    run_id = groups.run_task(job, 0, log=messages.append)
    assert run_id == killed.info.run_id
    assert any("resuming run" in m and "after epoch 2" in m for m in messages)
    steps = [step for step, _ in tracking.metric_history(run_id, "eval_auc")]
    assert sorted(steps) == [1, 2, 3, 4]  # every epoch once: none redone, none lost
    assert len(tracking.find_runs(f"tags.`dglrec.task` = '{job.tag(0)}'")) == 1
    # A finished task is not fitted again.
    assert groups.run_task(job, 0, log=messages.append) == run_id
    assert messages[-1].endswith("already finished")


def test_a_task_stopped_before_its_first_checkpoint_starts_over(tiny_recipe, isolated, monkeypatch):
    cfg = load_recipe(tiny_recipe, ["train.epochs=2", "tracking.log_model=false"])
    job = groups.create(cfg, "single")
    restore = _interrupt_at(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        groups.run_task(job, 0, log=lambda _: None)
    restore()
    first = groups.task_runs(job)[0].info.run_id
    run_id = groups.run_task(job, 0, log=lambda _: None)
    assert run_id != first
    _, _, tags = tracking.get_run(first)
    assert tags["superseded"] == "true"


def test_multi_seed_batch_parent_has_mean_and_std(tiny_recipe, isolated):
    import statistics

    cfg = load_recipe(tiny_recipe, ["train.epochs=1", "tracking.log_model=false"])
    job = groups.create(cfg, "multi_seed", seeds=[4, 5])
    out = groups.run_local(job, 1, log=lambda _: None)
    aucs = [tracking.get_run(out["runs"][i])[1]["test_auc"] for i in (0, 1)]
    _, metrics, tags = tracking.get_run(job.parent_run_id)
    assert metrics["test_auc_mean"] == pytest.approx(statistics.mean(aucs))
    assert metrics["test_auc_std"] == pytest.approx(statistics.stdev(aucs))
    assert tags["seeds"] == "4,5" and tags["kind"] == "multi_seed"


def test_sigterm_stops_a_task_process_at_a_checkpoint(tiny_recipe, isolated):
    cfg = load_recipe(tiny_recipe, ["train.epochs=400", "tracking.log_model=false"])
    job = groups.create(cfg, "single")
    command = groups.task_command(job, 0)
    log = isolated / "task.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and log.read_text().count("\nepoch") < 3:
            assert process.poll() is None, log.read_text()
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 143
    (run,) = groups.task_runs(job).values()
    assert run.info.status == "KILLED"
    assert "checkpointed" in log.read_text()
    epochs_done = len(tracking.metric_history(run.info.run_id, "eval_auc"))
    assert 3 <= epochs_done < 400


WRITER = """
import sys
from dglrec.runs import tracking
name, steps = sys.argv[1], int(sys.argv[2])
with tracking.MlflowRun("concurrency", run_name=name) as run:
    run.log_params({"writer": name})
    for step in range(steps):
        run.log_metrics({"value": step, "other": -step}, step=step)
    run.log_text(name, "note.txt")
print(run.run_id)
"""


def _concurrent_writers(cwd, env, n=4, steps=60) -> list[str]:
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, f"w{i}", str(steps)],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    run_ids = []
    for process in processes:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-2000:]
        assert "database is locked" not in err
        run_ids.append(out.strip().splitlines()[-1])
    return run_ids


def _assert_complete(run_ids, steps=60):
    for run_id in run_ids:
        params, metrics, _ = tracking.get_run(run_id)
        history = tracking.metric_history(run_id, "value")
        assert sorted(s for s, _ in history) == list(range(steps)), run_id
        assert metrics["other"] == -(steps - 1) and params["writer"].startswith("w")
        assert tracking.download_artifact(run_id, "note.txt").read_text() == params["writer"]


def test_several_processes_share_the_sqlite_default_store(isolated):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    run_ids = _concurrent_writers(isolated, env)  # the store does not exist yet: all create it
    assert len(set(run_ids)) == 4
    _assert_complete(run_ids)


def test_concurrent_writers_through_a_tracking_server(isolated, monkeypatch):
    from tests.conftest import tracking_server

    with tracking_server(isolated) as uri:
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        run_ids = _concurrent_writers(isolated, env, steps=20)  # one HTTP call per step
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        _assert_complete(run_ids, steps=20)
        assert any((isolated / "server-artifacts").rglob("note.txt"))  # stored by the server


def test_a_group_made_by_dglrec_0_1_still_loads_and_finds_its_runs(tiny_recipe, isolated):
    """dglrec 0.1.0 called run groups batches: batch.json, tag dglrec.batch."""
    cfg = load_recipe(tiny_recipe, ["train.epochs=1", "tracking.log_model=false"])
    group = groups.create(cfg, "single")
    (group.path / groups.GROUP_FILE).rename(group.path / "batch.json")
    assert groups.RunGroup.load(group.path).id == group.id
    tags = {"dglrec.batch": group.id, "dglrec.task": group.tag(0)}
    run_id = tracking.create_run(group.experiment, "old", tags, {}, {})
    assert groups.task_runs(group)[0].info.run_id == run_id
    with pytest.raises(ConfigError, match="not a dglrec run group"):
        groups.RunGroup.load(isolated)
