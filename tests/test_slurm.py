"""Slurm: job scripts, and a real one-node cluster running a sweep and a requeued job.

The integration tests start the cluster with ``scripts/local_slurm.sh`` (installing
Debian's slurm-wlm and munge if needed) and a tracking server on 127.0.0.1; they
skip only where the cluster cannot start here (not root, no apt).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dglrec.cli import main
from dglrec.config import ClusterConfig
from dglrec.runs import groups, slurm, tracking
from dglrec.runs.recipes import load_recipe
from tests.conftest import tracking_server

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "local_slurm.sh"


def test_job_script_asks_for_the_resources_and_requeue(tiny_recipe, isolated):
    cfg = load_recipe(
        tiny_recipe,
        ["sweep.sampler.n_neighbors=[2, 4, 8]", "tracking.log_model=false"],
    )
    job = groups.create(cfg, "sweep")
    cluster = ClusterConfig(
        partition="gpu",
        time="02:00:00",
        cpus=4,
        mem="16G",
        gpus=1,
        account="lab",
        max_parallel=2,
        requeue_grace=90,
        sbatch_args=["--qos=long"],
    )
    script = slurm.array_script(job, cluster)
    for line in (
        "#SBATCH --array=0-2%2",
        "#SBATCH --time=02:00:00",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=16G",
        "#SBATCH --gpus=1",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@90",
        "#SBATCH --qos=long",
    ):
        assert line in script.splitlines(), line
    assert script.rstrip().endswith(
        f"exec {sys.executable} -m dglrec.cli task {job.directory} --index $SLURM_ARRAY_TASK_ID"
    )
    assert "--finalize" in slurm.finalize_script(job, cluster)
    # The frozen recipe is the one submitted, whatever happens to the file later.
    tiny_recipe.write_text("broken = [")
    assert job.task_config(2).sampler.n_neighbors == 8


def test_cluster_options_override_the_recipe(tiny_recipe, isolated, monkeypatch):
    submitted = []
    monkeypatch.setattr(slurm, "submit", lambda b, c: submitted.append((b, c)) or {"array": "7"})
    result = CliRunner().invoke(
        main,
        ["submit", str(tiny_recipe), "--partition", "cpu", "--time", "00:30:00", "--seeds", "2"],
    )
    assert result.exit_code == 0, result.output
    job, cluster = submitted[0]
    assert (cluster.partition, cluster.time) == ("cpu", "00:30:00")
    assert [t["overrides"] for t in job.tasks] == [["seed=3"], ["seed=4"]]
    assert "array job 7" in result.output


# ---------------------------------------------------------------------- a real cluster
@pytest.fixture(scope="module")
def cluster():
    """A one-node Slurm cluster (started here unless one is already up)."""
    state = os.environ.get("DGLREC_SLURM_DIR", "/tmp/dglrec-slurm")
    env = {**os.environ, "DGLREC_SLURM_DIR": state}
    was_up = subprocess.run(["bash", str(SCRIPT), "status"], env=env, capture_output=True)
    started = subprocess.run(
        ["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=900
    )
    if started.returncode == 3:
        pytest.skip(f"no local Slurm cluster here: {started.stderr.strip().splitlines()[-1]}")
    assert started.returncode == 0, started.stderr
    yield Path(state) / "slurm.conf"
    if was_up.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def server_uri(tmp_path_factory):
    with tracking_server(tmp_path_factory.mktemp("server")) as uri:
        yield uri


@pytest.fixture
def on_cluster(cluster, server_uri, isolated, monkeypatch):
    """Jobs see this cluster and log to the tracking server."""
    monkeypatch.setenv("SLURM_CONF", str(cluster))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server_uri)


def _wait_for_jobs(job_ids: list[str], timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not slurm.queue_states(job_ids):
            return
        time.sleep(2)
    raise AssertionError(f"jobs {job_ids} still queued after {timeout:.0f}s")


def _report(line: str) -> None:
    """Printed with -s, and kept for the records when DGLREC_REPORT names a file."""
    print(line)
    if os.environ.get("DGLREC_REPORT"):
        with open(os.environ["DGLREC_REPORT"], "a") as out:
            out.write(line + "\n")


def test_a_sweep_runs_as_a_job_array_and_logs_to_the_server(tiny_recipe, on_cluster):
    began = time.monotonic()
    result = CliRunner().invoke(
        main,
        ["sweep", str(tiny_recipe), "--cluster", "slurm", "--cpus", "1", "--mem", "1G"]
        + ["--set", "sweep.sampler.n_neighbors=[2, 4, 8]", "--set", "train.epochs=2"]
        + ["--set", "tracking.log_model=false", "--set", "eval.ranking_ks=[5]"],
    )
    assert result.exit_code == 0, result.output
    (job_dir,) = (Path.cwd() / "jobs").iterdir()
    job = groups.RunGroup.load(job_dir)
    _wait_for_jobs(list(job.jobs.values()))
    wall = time.monotonic() - began

    _, parent_metrics, parent_tags = tracking.get_run(job.parent_run_id)
    children = groups.task_runs(job)
    assert sorted(children) == [0, 1, 2], (job_dir / "logs").iterdir()
    best = max(children.values(), key=lambda r: r.data.metrics["best_eval_auc"])
    assert parent_tags["best_run_id"] == best.info.run_id  # chosen on eval
    assert parent_metrics["test_auc"] == pytest.approx(best.data.metrics["test_auc"])
    assert parent_tags["slurm_array_job_id"] == job.jobs["array"]
    for index, run in children.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == job.parent_run_id
        assert run.data.tags["slurm_job_id"] == f"{job.jobs['array']}_{index}"
        assert {"test_auc", "test_recall_at_5", "best_eval_auc"} <= set(run.data.metrics)
        assert "checkpoints/last.pt" in tracking.list_artifacts(run.info.run_id, "checkpoints")
    assert tracking.search_runs(run_ids=[job.parent_run_id])[0].info.status == "FINISHED"
    rows = slurm.job_table(Path.cwd() / "jobs")
    assert [r.state for r in rows] == ["COMPLETED"] * 3

    _report(f"slurm sweep: array job {job.jobs['array']}, finalize job {job.jobs['finalize']}")
    _report(f"  parent run {job.parent_run_id}; best trial {parent_tags['best_overrides']}")
    for index, run in sorted(children.items()):
        _report(f"  task {index}: job {run.data.tags['slurm_job_id']} run {run.info.run_id}")
    _report(f"  wall time from submit to all jobs done: {wall:.0f}s")


def test_a_requeued_job_resumes_its_run_from_the_last_checkpoint(tiny_recipe, on_cluster):
    result = CliRunner().invoke(
        main,
        ["submit", str(tiny_recipe), "--cpus", "1", "--mem", "1G"]
        + ["--set", "train.epochs=40", "--set", "tracking.log_model=false"]
        + ["--set", "eval.ranking_ks=[]"],
    )
    assert result.exit_code == 0, result.output
    (job_dir,) = (Path.cwd() / "jobs").iterdir()
    job = groups.RunGroup.load(job_dir)
    array_task = f"{job.jobs['array']}_0"
    log = job_dir / "logs" / f"{job.jobs['array']}_0.out"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if log.is_file() and log.read_text().count("\nepoch") >= 5:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"the job never reached epoch 5: {log.read_text()[-2000:]}")
    # What the scheduler does on preemption with PreemptMode=REQUEUE.
    subprocess.run(["scontrol", "requeue", array_task], check=True)
    _wait_for_jobs([job.jobs["array"]])

    (run,) = groups.task_runs(job).values()
    text = log.read_text()
    assert "DUE TO JOB REQUEUE" in text
    assert f"task 0: resuming run {run.info.run_id} after epoch" in text
    assert run.info.status == "FINISHED"
    assert run.data.tags["slurm_restart_count"] == "1"
    steps = [s for s, _ in tracking.metric_history(run.info.run_id, "eval_auc")]
    assert sorted(steps) == list(range(1, 41))  # every epoch exactly once across the restart
    _report(f"requeue: job {array_task} requeued after {text.split('after epoch ')[1].split()[0]}")
