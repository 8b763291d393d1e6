"""Slurm submission with plain ``sbatch``: a group becomes a job array plus a finalize job.

``dglrec submit RECIPE --cluster slurm`` (and ``dglrec sweep RECIPE --cluster
slurm``) turn a :class:`~dglrec.runs.groups.RunGroup` into

* ``job.sbatch``: a job array, one task per seed or trial, each running
  ``dglrec task GROUP_DIR --index $SLURM_ARRAY_TASK_ID`` (the ``dglrec fit`` code
  path on the frozen recipe). Jobs are ``--requeue``-able and get ``SIGUSR1``
  ``requeue_grace`` seconds before their time limit: the task stops at the next
  group (every finished epoch is checkpointed), requeues itself with ``scontrol
  requeue``, and the requeued job resumes its run from the last checkpoint. A job
  the scheduler preempts or requeues (SIGTERM) resumes the same way;
* ``finalize.sbatch``: one small job, ``--dependency=afterany`` on the array, that
  closes the parent run (mean ± std over seeds, or the best trial by eval).

The job ids are printed, saved in the group's ``group.json`` and set as tags on
the parent run (``slurm_array_job_id``, ``slurm_finalize_job_id``); each task's
run gets ``slurm_job_id`` (``ARRAY_TASK``). ``dglrec jobs`` reads them back and
asks ``squeue`` for the live state. Jobs inherit the submitting shell's
environment (``--export=ALL``), so ``MLFLOW_TRACKING_URI`` points them at the
team's tracking server.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dglrec.config import ClusterConfig
from dglrec.errors import ConfigError, RunError
from dglrec.runs import tracking
from dglrec.runs.groups import RunGroup, task_command, task_runs


def _slurm_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RunError(f"{name} not found: is this a Slurm login node? (scripts/local_slurm.sh)")
    return path


def _run(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise RunError(f"{' '.join(command[:2])} did not answer in 120 s") from None
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise RunError(
            f"{Path(command[0]).name} failed: {message[-1] if message else done.returncode}"
        )
    return done.stdout


def sbatch_directives(cluster: ClusterConfig, name: str) -> list[str]:
    """``#SBATCH`` lines for the resources of ``[cluster]``."""
    lines = [
        f"--job-name={name}",
        f"--time={cluster.time}",
        f"--cpus-per-task={cluster.cpus}",
        f"--mem={cluster.mem}",
        "--requeue",
        "--open-mode=append",  # a requeued job appends to its log
        f"--signal=B:USR1@{cluster.requeue_grace}",
    ]
    if cluster.partition:
        lines.append(f"--partition={cluster.partition}")
    if cluster.account:
        lines.append(f"--account={cluster.account}")
    if cluster.gpus:
        lines.append(f"--gpus={cluster.gpus}")
    lines += cluster.sbatch_args
    return [f"#SBATCH {line}" for line in lines]


def array_script(group: RunGroup, cluster: ClusterConfig) -> str:
    n = len(group.tasks)
    limit = f"%{cluster.max_parallel}" if cluster.max_parallel else ""
    command = task_command(group, "$SLURM_ARRAY_TASK_ID")
    quoted = " ".join(shlex.quote(part) for part in command[:-1]) + " " + command[-1]
    return "\n".join(
        [
            "#!/bin/bash",
            f"# dglrec group {group.id}: {n} task(s) of kind {group.kind}",
            *sbatch_directives(cluster, f"dglrec-{group.id}"),
            f"#SBATCH --array=0-{n - 1}{limit}",
            f"#SBATCH --output={group.path / 'logs' / '%A_%a.out'}",
            f"cd {shlex.quote(str(Path.cwd()))}",
            # exec: the task is the batch shell, so SIGUSR1 (B:) reaches Python.
            f"exec {quoted}",
            "",
        ]
    )


def finalize_script(group: RunGroup, cluster: ClusterConfig) -> str:
    command = " ".join(shlex.quote(p) for p in [*task_command(group, 0)[:-2], "--finalize"])
    lines = [
        "#!/bin/bash",
        f"# dglrec group {group.id}: close the parent run once every task has ended",
        f"#SBATCH --job-name=dglrec-{group.id}-finalize",
        "#SBATCH --time=00:15:00",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --mem=2G",
        f"#SBATCH --output={group.path / 'logs' / 'finalize_%j.out'}",
    ]
    if cluster.partition:
        lines.append(f"#SBATCH --partition={cluster.partition}")
    if cluster.account:
        lines.append(f"#SBATCH --account={cluster.account}")
    return "\n".join([*lines, f"cd {shlex.quote(str(Path.cwd()))}", f"exec {command}", ""])


def submit(group: RunGroup, cluster: ClusterConfig) -> dict[str, str]:
    """Submit the group's array (and finalize job); returns and records the job ids."""
    sbatch = _slurm_binary("sbatch")
    array_path = group.path / "job.sbatch"
    array_path.write_text(array_script(group, cluster))
    array_id = _run([sbatch, "--parsable", str(array_path)]).strip().split(";")[0]
    jobs = {"array": array_id}
    if group.parent_run_id is not None:
        final_path = group.path / "finalize.sbatch"
        final_path.write_text(finalize_script(group, cluster))
        jobs["finalize"] = (
            _run([sbatch, "--parsable", f"--dependency=afterany:{array_id}", str(final_path)])
            .strip()
            .split(";")[0]
        )
        tracking.update_run(
            group.parent_run_id,
            tags={
                "slurm_array_job_id": array_id,
                "slurm_finalize_job_id": jobs.get("finalize", ""),
                "cluster": "slurm",
            },
        )
    group.jobs = jobs
    group.save()
    return jobs


# ---------------------------------------------------------------------- dglrec jobs
@dataclass
class TaskState:
    group: str
    task: int
    job: str
    state: str  # Slurm's, or the run's when Slurm no longer knows the job
    run_id: str
    run_status: str
    metric: str


def queue_states(job_ids: list[str]) -> dict[str, str]:
    """``{job id (array tasks as A_i): state}`` from ``squeue`` for jobs it still knows."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    out = subprocess.run(
        [_slurm_binary("squeue"), "-h", "-r", "-j", ",".join(job_ids), "-o", "%i|%T"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    states = {}
    for line in out.stdout.splitlines():
        job, _, state = line.partition("|")
        states[job.strip()] = state.strip()
    return states


def groups(jobs_dir: str | Path) -> list[RunGroup]:
    root = Path(jobs_dir)
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.iterdir()):
        try:
            found.append(RunGroup.load(path))
        except ConfigError:
            continue
    return found


def gone_state(run_status: str | None) -> str:
    """A job Slurm no longer lists, by its run: COMPLETED, KILLED, FAILED, or unknown."""
    if run_status is None:
        return "ENDED (no run)"  # cancelled before it started, or failed before MLflow
    if run_status == "RUNNING":
        return "ENDED (run open)"  # killed without a signal it could act on
    return "COMPLETED" if run_status == "FINISHED" else run_status


def job_table(jobs_dir: str | Path, only: str | None = None) -> list[TaskState]:
    """One row per task of every submitted group under ``jobs_dir`` (or group ``only``)."""
    rows = []
    selected = [b for b in groups(jobs_dir) if b.jobs and only in (None, b.id, b.jobs.get("array"))]
    live = queue_states([j for b in selected for j in b.jobs.values()])
    for group in selected:
        runs = task_runs(group)
        array = group.jobs["array"]
        for task in group.tasks:
            index = task["index"]
            job = f"{array}_{index}"
            run = runs.get(index)
            state = live.get(job) or live.get(array)
            if state is None:  # gone from the queue: its run tells how it ended
                state = gone_state(run.info.status if run else None)
            metric = ""
            if run is not None:
                key = f"best_eval_{group.select_metric}"
                if key in run.data.metrics:
                    metric = f"{key} {run.data.metrics[key]:.4f}"
            rows.append(
                TaskState(
                    group.id,
                    index,
                    job,
                    state,
                    run.info.run_id if run else "",
                    run.info.status if run else "",
                    metric,
                )
            )
    return rows


def cancel(jobs_dir: str | Path, target: str) -> list[str]:
    """``scancel`` a group (by id or array job id) or one job id; returns the ids cancelled."""
    scancel = _slurm_binary("scancel")
    for group in groups(jobs_dir):
        if target in (group.id, group.jobs.get("array")):
            ids = list(group.jobs.values())
            _run([scancel, *ids])
            return ids
    _run([scancel, target])
    return [target]
