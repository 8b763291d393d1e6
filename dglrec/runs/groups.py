"""Run groups of fits (seeds, sweep trials) run by local worker processes or as a Slurm job array.

A group is a directory ``<[cluster] jobs_dir>/<group id>/`` holding the resolved
recipe frozen when the group was made (``recipe.toml``), its task list
(``group.json``) and the tasks' logs, plus a parent MLflow run (kind
``multi_seed`` or ``sweep``) created at once and closed by :func:`finalize`.

Every task is the ordinary ``dglrec fit`` code path (:func:`dglrec.runs.pipeline.fit`)
on the frozen recipe with the task's overrides. Its run carries the tag
``dglrec.task = <group id>/<index>``: a task that runs again (requeued by the
scheduler after a time limit or preemption, or rerun by hand) finds its run and
resumes it from its last checkpoint; a finished task is not run twice.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from data_prep.cache import write_atomic
from dglrec.config import RecipeConfig, apply_overrides
from dglrec.errors import ConfigError, RunError
from dglrec.runs import pipeline, tracking
from dglrec.runs.pipeline import recipe_label
from dglrec.runs.recipes import resolve
from dglrec.runs.seeds import summarize
from dglrec.runs.sweep import best_record, expand, format_table

Log = Callable[[str], None]
GROUP_FILE = "group.json"
LEGACY_GROUP_FILE = "batch.json"  # written by dglrec 0.1.0
RECIPE_FILE = "recipe.toml"
TASK_TAG = "dglrec.task"
GROUP_TAG = "dglrec.group"
LEGACY_GROUP_TAG = "dglrec.batch"  # set by dglrec 0.1.0


@dataclass
class RunGroup:
    id: str
    kind: str  # "multi_seed" | "sweep" | "single"
    directory: str
    tasks: list[dict]  # {"index", "overrides", "run_name"}
    parent_run_id: str | None
    experiment: str
    select_metric: str
    jobs: dict = field(default_factory=dict)  # scheduler job ids, by role

    @property
    def path(self) -> Path:
        return Path(self.directory)

    def save(self) -> None:
        # Written whole or not at all: workers and Slurm jobs read it while it is updated.
        text = json.dumps(asdict(self), indent=2)
        write_atomic(self.path / GROUP_FILE, lambda partial: partial.write_text(text))

    @classmethod
    def load(cls, directory: str | Path) -> RunGroup:
        for name in (GROUP_FILE, LEGACY_GROUP_FILE):
            path = Path(directory) / name
            if path.is_file():
                return cls(**json.loads(path.read_text()))
        raise ConfigError(f"{directory}: not a dglrec run group (no {GROUP_FILE})")

    def recipe(self) -> dict:
        return tomllib.loads((self.path / RECIPE_FILE).read_text())

    def task_config(self, index: int) -> RecipeConfig:
        if not 0 <= index < len(self.tasks):
            raise ConfigError(f"task {index}: group {self.id} has tasks 0..{len(self.tasks) - 1}")
        task = self.tasks[index]
        cfg = resolve(apply_overrides(self.recipe(), task["overrides"]))
        cfg.tracking.run_name = task["run_name"]
        return cfg

    def tag(self, index: int) -> str:
        return f"{self.id}/{index}"


def create(
    cfg: RecipeConfig,
    kind: str,
    seeds: list[int] | None = None,
    root: str | Path | None = None,
    extra_tags: dict[str, str] | None = None,
) -> RunGroup:
    """Freeze ``cfg``, list its tasks, and open the parent run (for seeds and sweeps)."""
    label = recipe_label(cfg)
    group_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{label}-{secrets.token_hex(3)}"
    directory = Path(root or cfg.cluster.jobs_dir).resolve() / group_id
    (directory / "logs").mkdir(parents=True)
    frozen = cfg.to_dict()
    frozen["sweep"] = {}
    if kind == "sweep":
        overrides = [trial.overrides for trial in expand(cfg)]
        names = [f"{cfg.model_name}-t{i}-s{cfg.seed}" for i in range(len(overrides))]
    elif kind == "multi_seed":
        overrides = [[f"seed={seed}"] for seed in seeds or []]
        names = [f"{cfg.model_name}-s{seed}" for seed in seeds or []]
    elif kind == "single":
        overrides, names = [[]], [cfg.tracking.run_name or f"{cfg.model_name}-s{cfg.seed}"]
    else:
        raise ValueError(f"unknown group kind {kind!r}")
    if not overrides:
        raise ConfigError("the group has no tasks")
    tasks = [
        {"index": i, "overrides": o, "run_name": n}
        for i, (o, n) in enumerate(zip(overrides, names, strict=True))
    ]
    experiment = cfg.tracking.experiment or cfg.data.name
    group = RunGroup(
        group_id, kind, str(directory), tasks, None, experiment, cfg.eval.select_metric
    )
    resolved = resolve(frozen)
    (directory / RECIPE_FILE).write_text(resolved.to_toml())
    if kind != "single":
        params = cfg.flat()
        if kind == "multi_seed":
            params["seed"] = ",".join(map(str, seeds or []))
        tags = {
            "kind": kind,
            "model": cfg.model_name,
            "recipe": label,
            "dataset": cfg.data.name,
            "selected_by": f"eval_{cfg.eval.select_metric}",
            "git_commit": tracking.git_commit(),
            GROUP_TAG: group_id,
            "dglrec.group_dir": str(directory),
            **(extra_tags or {}),
        }
        if kind == "multi_seed":
            tags["seeds"] = ",".join(map(str, seeds or []))
        name = cfg.tracking.run_name or (
            f"{cfg.model_name}-sweep-s{cfg.seed}"
            if kind == "sweep"
            else f"{cfg.model_name}-seeds{len(tasks)}"
        )
        group.parent_run_id = tracking.create_run(
            experiment, name, tags, params, {"recipe.toml": cfg.to_toml()}
        )
    group.save()
    return group


def scheduler_tags() -> dict[str, str]:
    """The Slurm job of this process, if any, as MLflow tags."""
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        return {}
    job = env["SLURM_JOB_ID"]
    if "SLURM_ARRAY_JOB_ID" in env:
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    return {
        "slurm_job_id": job,
        "slurm_restart_count": env.get("SLURM_RESTART_COUNT", "0"),
        "slurm_node": env.get("SLURMD_NODENAME", ""),
    }


def task_runs(group: RunGroup) -> dict[int, object]:
    """``{task index: its newest run}``."""
    runs: dict[int, object] = {}
    found = [
        run
        for tag in (GROUP_TAG, LEGACY_GROUP_TAG)  # groups made by dglrec 0.1.0 too
        for run in tracking.find_runs(f"tags.`{tag}` = '{group.id}'")
    ]
    for run in sorted(found, key=lambda r: r.info.start_time, reverse=True):
        tag = run.data.tags.get(TASK_TAG, "")
        if tag.startswith(group.id + "/"):
            runs.setdefault(int(tag.rsplit("/", 1)[1]), run)  # newest first
    return runs


def run_task(group: RunGroup, index: int, log: Log = print) -> str:
    """Fit one task, resuming its run if it has one; returns the run id."""
    cfg = group.task_config(index)
    tags = {TASK_TAG: group.tag(index), GROUP_TAG: group.id, **scheduler_tags()}
    existing = task_runs(group).get(index)
    if existing is not None:
        run_id = existing.info.run_id
        if existing.info.status == "FINISHED":
            log(f"task {index}: run {run_id} already finished")
            return run_id
        try:
            resumed_cfg, state = pipeline.resume_point(run_id)
        except RunError:  # stopped before its first checkpoint: start it again
            tracking.update_run(run_id, tags={"superseded": "true"}, status="FAILED")
        else:
            log(f"task {index}: resuming run {run_id} after epoch {state['epoch']}")
            resumed_cfg.tracking.run_name = cfg.tracking.run_name
            pipeline.fit(
                resumed_cfg,
                resume_run_id=run_id,
                resume_state=state,
                log=log,
                extra_tags=tags,
            )
            return run_id
    run_id, _ = pipeline.fit(cfg, log=log, parent_run_id=group.parent_run_id, extra_tags=tags)
    return run_id


def finalize(group: RunGroup, log: Log = print) -> dict:
    """Close the parent run: per-seed mean ± std, or the sweep's best trial by eval.

    Returns ``{"runs": {index: run id}, "failed": [indices], "records": [...], "best": ...}``.
    """
    runs = task_runs(group)
    done = {
        i: r
        for i, r in runs.items()
        if r.info.status == "FINISHED" and any(k.startswith("test_") for k in r.data.metrics)
    }
    failed = [t["index"] for t in group.tasks if t["index"] not in done]
    out: dict = {"runs": {i: r.info.run_id for i, r in done.items()}, "failed": failed}
    metric = group.select_metric
    records = [
        {
            "trial": i,
            "overrides": group.tasks[i]["overrides"],
            "run_id": r.info.run_id,
            "best_epoch": r.data.metrics.get("best_epoch"),
            **{
                f"eval_{k[len('best_eval_') :]}": v
                for k, v in r.data.metrics.items()
                if k.startswith("best_eval_")
            },
            **{k: v for k, v in r.data.metrics.items() if k.startswith("test_")},
        }
        for i, r in sorted(done.items())
    ]
    out["records"] = records
    if group.parent_run_id is None:
        return out
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    texts: dict[str, str] = {}
    if failed:
        tags["failed_tasks"] = ",".join(map(str, failed))
        log(f"group {group.id}: tasks {failed} did not finish")
    if group.kind == "multi_seed" and done:
        per_seed = {
            int(r.data.tags.get("seed", i)): {
                k: v for k, v in r.data.metrics.items() if k.startswith(("test_", "best_eval_"))
            }
            for i, r in done.items()
        }
        metrics = summarize(per_seed)
        out["per_seed"], out["summary"] = per_seed, metrics
        if failed:
            tags["failed_seeds"] = ",".join(
                group.tasks[i]["overrides"][0].split("=")[1] for i in failed
            )
        protocol = next(iter(done.values())).data.tags.get("protocol")
        if protocol:
            tags["protocol"] = protocol
    elif group.kind == "sweep" and records:
        best = best_record(records, metric)
        out["best"] = best
        metrics = {f"best_eval_{metric}": best[f"eval_{metric}"], "best_trial": best["trial"]}
        metrics.update({k: v for k, v in best.items() if k.startswith("test_")})
        tags.update({"best_run_id": best["run_id"], "best_overrides": " ".join(best["overrides"])})
        texts["trials.md"] = format_table(records, metric)
    status = "FINISHED" if done else "FAILED"
    tracking.update_run(group.parent_run_id, metrics, tags, texts, status=status)
    return out


def task_command(group: RunGroup, index: int | str) -> list[str]:
    """The command that runs one task in a fresh process (a worker or a Slurm job)."""
    return [sys.executable, "-m", "dglrec.cli", "task", group.directory, "--index", str(index)]


def run_local(group: RunGroup, workers: int = 1, log: Log = print) -> dict:
    """Run every task here, ``workers`` processes at a time, then :func:`finalize`.

    With one worker the tasks run in this process; with more, each task is its own
    process (``dglrec task``) with ``cpus // workers`` threads, its output in
    ``logs/task-<i>.log``. A failed task is reported; the others still run.
    """
    if workers < 1:
        raise ConfigError(f"--workers {workers}: expected at least 1")
    n = len(group.tasks)
    errors: dict[int, str] = {}
    if workers == 1:
        for task in group.tasks:
            log(f"task {task['index'] + 1}/{n}: {' '.join(task['overrides']) or '(recipe)'}")
            try:
                run_task(group, task["index"], log)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 (one failed task must not stop the others)
                errors[task["index"]] = f"{type(exc).__name__}: {exc}"
                log(f"task {task['index']} failed: {errors[task['index']]}")
        return {**finalize(group, log), "errors": errors}

    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    pending = list(group.tasks)
    running: dict[int, tuple[subprocess.Popen, object]] = {}
    try:
        while pending or running:
            while pending and len(running) < workers:
                task = pending.pop(0)
                out = open(group.path / "logs" / f"task-{task['index']}.log", "w")  # noqa: SIM115
                process = subprocess.Popen(
                    task_command(group, task["index"]),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
                running[task["index"]] = (process, out)
                settings = " ".join(task["overrides"])
                log(f"task {task['index']} started (pid {process.pid}): {settings}")
            time.sleep(0.5)
            for index, (process, out) in list(running.items()):
                if process.poll() is None:
                    continue
                out.close()
                del running[index]
                state = "done" if process.returncode == 0 else f"FAILED (exit {process.returncode})"
                if process.returncode != 0:
                    errors[index] = f"exit {process.returncode}; see {out.name}"
                log(f"task {index} {state}; {n - len(pending) - len(running)}/{n} ended")
    except KeyboardInterrupt:
        for process, _ in running.values():
            process.terminate()
        raise
    return {**finalize(group, log), "errors": errors}


@dataclass
class MultiSeedResult:
    parent_run_id: str
    runs: dict[int, str] = field(default_factory=dict)  # seed -> child run id
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)  # seed -> error
    summary: dict[str, float] = field(default_factory=dict)


def fit_seeds(
    cfg: RecipeConfig, seeds: list[int], log: Callable[[str], None] = print
) -> MultiSeedResult:
    """Fit ``seeds`` one after another as a group (a group of tasks) under one parent run."""
    seeds_group = create(cfg, "multi_seed", seeds)
    out = run_local(seeds_group, 1, log)
    seed_of = {i: seed for i, seed in enumerate(seeds)}
    result = MultiSeedResult(seeds_group.parent_run_id)
    result.runs = {seed_of[i]: run_id for i, run_id in sorted(out["runs"].items())}
    result.metrics = dict(out.get("per_seed", {}))
    result.failed = {seed_of[i]: out["errors"].get(i, "did not finish") for i in out["failed"]}
    result.summary = out.get("summary", summarize({}))
    return result


def run_sweep(
    cfg: RecipeConfig, log: Callable[[str], None] = print, workers: int = 1
) -> tuple[str, list[dict]]:
    """Fit every trial here (``workers`` processes at a time); the parent run id and records."""
    trials = create(cfg, "sweep")
    out = run_local(trials, workers, log)
    if not out["records"]:
        raise ConfigError(f"sweep {trials.id}: no trial finished (logs: {trials.path / 'logs'})")
    return trials.parent_run_id, out["records"]
