"""The ``dglrec`` command line."""

from __future__ import annotations

import json
import sys

import click

from dglrec.errors import USER_ERRORS
from dglrec.runs.allocator import keep_freed_memory


def _echo(message: str) -> None:
    click.echo(message, err=True)


class FriendlyGroup(click.Group):
    """Report user errors as one line (``error: ...``) with exit code 2, no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dglrec")
def main() -> None:
    """dglrec: knowledge-graph-aware recommendation experiments on DGL, tracked in MLflow.

    \b
    Typical session:
      dglrec prep lastfm-kg                      # parse raw files into a DGL heterograph
      dglrec prep hetrec2011-lastfm-2k           # user-artist graph with liking scores
      dglrec fit recipes/kgcn.toml               # train, evaluate, log to ./mlruns
      dglrec fit recipes/kgcn.toml --set train.epochs=3 --seed 7
      dglrec fit recipes/kgcn.toml --seeds 5       # 5 seeds under one parent run
      dglrec evaluate RUN_ID                     # re-score a logged model on test
      dglrec compare --baseline bprmf            # models x metrics, paired tests, plots
      dglrec recommend RUN_ID --user 2 --k 10    # top-10 artists for HetRec user 2
      dglrec ui                                  # the MLflow UI on ./mlruns
      dglrec sweep recipes/kaisg_sweep.toml --workers 2        # trials, 2 at a time
      dglrec submit recipes/kaisg.toml --seeds 5 --time 02:00:00   # Slurm job array
      dglrec jobs                                # state of submitted jobs
    """
    # Every command, and every process a command starts, runs through here.
    keep_freed_memory()


@main.command()
@click.argument("dataset")
@click.option(
    "--raw", "raw_dir", type=click.Path(file_okay=False), help="Directory with the raw files."
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Root of processed datasets [default: $DGLREC_DATA_DIR/processed or ./data/processed].",
)
@click.option(
    "--mirror",
    help="Base URL to download from instead of the public sites, e.g. file:///srv/mirror.",
)
@click.option(
    "--seed", type=int, default=42, show_default=True, help="Seed of negatives and split."
)
@click.option(
    "--recipe",
    type=click.Path(dir_okay=False),
    help="Take the protocol ([data] section) from this recipe.",
)
def prep(dataset, raw_dir, out_dir, mirror, seed, recipe) -> None:
    """Build the processed dataset DATASET (e.g. lastfm-kg) and print its statistics.

    Raw files are taken from --raw, else $DGLREC_RAW_DIR/DATASET/, else downloaded
    (from --mirror / $DGLREC_MIRROR, or the public sites) and checked by SHA-256.
    """
    from data_prep.hetrec import DATASET as HETREC
    from dglrec.data import prepare_dataset
    from dglrec.runs.recipes import load_recipe

    overrides = [f"data.name={json.dumps(dataset)}"]
    if recipe is None and dataset == HETREC:  # the edge-regression protocol's defaults
        overrides += [
            "task.kind=edge_regression",
            "data.split=[0.8, 0.1, 0.1]",
            "eval.select_metric=mse",
            "model.name=gcn_edge",
        ]
    cfg = load_recipe(recipe, overrides, seed=seed)
    data, directory = prepare_dataset(
        cfg, log=_echo, raw_dir=raw_dir, out_root=out_dir, mirror=mirror
    )
    click.echo(f"{data.meta['dataset']}: {data.meta['protocol']}")
    for key, value in data.meta["stats"].items():
        click.echo(f"  {key:16s} {value:>9,}")
    click.echo(f"saved to {directory}")


def recipe_options(command):
    """``--set`` and ``--seed``, shared by the commands that read a recipe."""
    command = click.option(
        "--seed", type=int, help="Seed for split, negatives, init and sampling."
    )(command)
    return click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="SECTION.KEY=VALUE",
        help="Override a recipe value, e.g. --set train.epochs=3 (repeatable).",
    )(command)


@main.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@recipe_options
@click.option(
    "--resume",
    "resume_run_id",
    metavar="RUN_ID",
    help="Continue an interrupted run from its last checkpoint.",
)
@click.option(
    "--seeds",
    metavar="N|S1,S2,...",
    help="Fit N seeds (from --seed or the recipe's) or the listed ones, as child runs of "
    "one parent run that carries each metric's mean and std.",
)
def fit(recipe, overrides, seed, resume_run_id, seeds) -> None:
    """Train the model of RECIPE (a TOML file), evaluate it, and log the run to MLflow.

    With --resume RUN_ID the run's own resolved recipe is used (RECIPE may be
    left out); --set train.epochs=N may extend it.
    """
    import signal

    from dglrec.errors import RunInterrupted
    from dglrec.runs import pipeline
    from dglrec.runs.recipes import load_recipe

    def stop(signum, frame):
        # Outside the epoch loop (which installs its own flag) SIGTERM stops like Ctrl-C.
        raise RunInterrupted(None, signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    if seeds is not None:
        if resume_run_id or recipe is None:
            raise click.UsageError("--seeds needs a RECIPE and cannot resume a run")
        _fit_seeds(load_recipe(recipe, list(overrides), seed=seed), seeds)
        return
    if resume_run_id:
        if seed is not None:
            raise click.UsageError("--seed cannot change the seed of a resumed run")
        cfg, state = pipeline.resume_point(resume_run_id, list(overrides))
        if recipe is not None:
            given = load_recipe(recipe, list(overrides))
            differing = sorted(k for k, v in given.flat().items() if cfg.flat().get(k) != v)
            if differing:
                raise click.UsageError(
                    f"{recipe} differs from run {resume_run_id}'s recipe in: {', '.join(differing)}"
                )
    elif recipe is None:
        raise click.UsageError("give a RECIPE, or --resume RUN_ID")
    else:
        cfg, state = load_recipe(recipe, list(overrides), seed=seed), None
    try:
        run_id, result = pipeline.fit(
            cfg, resume_run_id=resume_run_id, resume_state=state, log=_echo
        )
    except KeyboardInterrupt as exc:
        if not isinstance(exc, RunInterrupted):
            exc = RunInterrupted(None)
        if exc.run_id is None:
            _echo(f"interrupted by {exc.signal_name} before a run was opened; nothing to resume")
        else:
            _echo(str(exc))
        sys.exit(143 if exc.signal_name == "SIGTERM" else 130)
    from dglrec.training.loop import describe

    click.echo(f"run {run_id}: best epoch {result.best_epoch}, test {describe(result.test)}")


def _fit_seeds(cfg, seeds: str) -> None:
    from dglrec.runs.groups import fit_seeds
    from dglrec.runs.seeds import parse_seeds

    result = fit_seeds(cfg, parse_seeds(seeds, cfg.seed), log=_echo)
    for seed, run_id in result.runs.items():
        test = " ".join(
            f"{k[5:]} {v:.4f}" for k, v in result.metrics[seed].items() if k.startswith("test_")
        )
        click.echo(f"seed {seed}: run {run_id}, test {test}")
    for seed, error in result.failed.items():
        click.echo(f"seed {seed}: FAILED ({error})")
    summary = " ".join(
        f"{k[5:-5]} {v:.4f} ± {result.summary[k[:-5] + '_std']:.4f}"
        for k, v in result.summary.items()
        if k.startswith("test_") and k.endswith("_mean")
    )
    click.echo(f"parent run {result.parent_run_id}: {len(result.runs)} seeds, test {summary}")
    if result.failed:
        sys.exit(1)


def cluster_options(command):
    """Slurm resources; each overrides the recipe's [cluster] key of the same name."""
    options = [
        click.option("--partition", help="Slurm partition [cluster.partition]."),
        click.option("--time", "time_limit", help="Time limit, e.g. 02:00:00 [cluster.time]."),
        click.option("--cpus", type=int, help="CPUs per job [cluster.cpus]."),
        click.option("--mem", help="Memory per job, e.g. 16G [cluster.mem]."),
        click.option("--gpus", type=int, help="GPUs per job [cluster.gpus]."),
        click.option("--account", help="Slurm account [cluster.account]."),
        click.option(
            "--max-parallel", type=int, help="Array tasks running at once [cluster.max_parallel]."
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _cluster_overrides(**values) -> list[str]:
    names = {"time_limit": "time"}
    return [
        f"cluster.{names.get(key, key)}={json.dumps(value)}"
        for key, value in values.items()
        if value is not None
    ]


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@recipe_options
@click.option(
    "--workers", type=int, default=1, show_default=True, help="Trials run at once, locally."
)
@click.option(
    "--cluster",
    type=click.Choice(["slurm"]),
    help="Submit the trials as a job array instead of running them here.",
)
@cluster_options
def sweep(recipe, overrides, seed, workers, cluster, **resources) -> None:
    """Fit every trial of RECIPE's [sweep] (grid or random) as child runs of one parent run.

    The best trial is chosen by its eval metric ([eval] select_metric), never by test.
    Locally with --workers N processes, or on Slurm with --cluster slurm.
    """
    from dglrec.runs.groups import run_sweep
    from dglrec.runs.recipes import load_recipe
    from dglrec.runs.sweep import format_table

    extra = _cluster_overrides(**resources)
    cfg = load_recipe(recipe, list(overrides) + extra, seed=seed)
    if cluster:
        _submit(cfg, "sweep")
        return
    parent_id, records = run_sweep(cfg, log=_echo, workers=workers)
    click.echo(f"sweep run {parent_id}: {len(records)} trials")
    click.echo(format_table(records, cfg.eval.select_metric), nl=False)


def _submit(cfg, kind: str, seeds: list[int] | None = None) -> None:
    from dglrec.runs import groups, slurm

    submission = groups.create(cfg, kind, seeds, extra_tags={"cluster": "slurm"})
    jobs = slurm.submit(submission, cfg.cluster)
    click.echo(f"group {submission.id}: {len(submission.tasks)} task(s) in {submission.directory}")
    click.echo(f"array job {jobs['array']} (tasks {jobs['array']}_0..{len(submission.tasks) - 1})")
    if "finalize" in jobs:
        click.echo(
            f"finalize job {jobs['finalize']} (after the array); parent run "
            f"{submission.parent_run_id}"
        )
    click.echo(f"follow with: dglrec jobs --group {submission.id}")


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@recipe_options
@click.option(
    "--cluster",
    type=click.Choice(["slurm"]),
    default="slurm",
    show_default=True,
    help="Scheduler to submit to.",
)
@click.option("--seeds", metavar="N|S1,S2,...", help="One job per seed, under one parent run.")
@cluster_options
def submit(recipe, overrides, seed, cluster, seeds, **resources) -> None:
    """Submit `dglrec fit RECIPE` to a cluster, with the recipe frozen now.

    Resources come from the recipe's [cluster] section, overridden by the options.
    A job stopped by its time limit or preempted is requeued and resumes its run
    from the last checkpoint.
    """
    from dglrec.runs.recipes import load_recipe
    from dglrec.runs.seeds import parse_seeds

    cfg = load_recipe(recipe, list(overrides) + _cluster_overrides(**resources), seed=seed)
    if seeds:
        _submit(cfg, "multi_seed", parse_seeds(seeds, cfg.seed))
    else:
        _submit(cfg, "single")


@main.command()
@click.option("--jobs-dir", default="jobs", show_default=True, help="[cluster] jobs_dir.")
@click.option(
    "--group", "--batch", "only", metavar="GROUP|ARRAY_JOB_ID", help="Only this submission."
)
@click.option("--cancel", metavar="GROUP|JOB_ID", help="Cancel a submission or one job.")
def jobs(jobs_dir, only, cancel) -> None:
    """List submitted jobs: Slurm state, MLflow run and its eval metric; or cancel them."""
    from dglrec.runs import slurm

    if cancel:
        click.echo(f"cancelled {' '.join(slurm.cancel(jobs_dir, cancel))}")
        return
    rows = slurm.job_table(jobs_dir, only)
    if not rows:
        click.echo(f"no submitted groups under {jobs_dir}/")
        return
    header = ("group", "task", "job", "state", "run", "run status", "eval")
    table = [header] + [
        (r.group, str(r.task), r.job, r.state, r.run_id, r.run_status, r.metric) for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@main.command(hidden=True)
@click.argument("group_dir", type=click.Path(file_okay=False))
@click.option("--index", type=int, help="The task to run.")
@click.option("--finalize", is_flag=True, help="Close the group's parent run.")
def task(group_dir, index, finalize) -> None:
    """Run one task of a group (what workers and Slurm jobs execute)."""
    import os
    import signal
    import subprocess

    from dglrec.runs.groups import RunGroup, run_task
    from dglrec.runs.groups import finalize as close

    group = RunGroup.load(group_dir)
    if finalize:
        out = close(group, log=_echo)
        click.echo(f"group {group.id}: {len(out['runs'])} finished, failed tasks {out['failed']}")
        return
    if index is None:
        raise click.UsageError("give --index I or --finalize")
    received: list[int] = []

    def stop_after_this_batch(signum, frame):
        # The trainer stops at its next batch on SIGINT; its epochs are checkpointed.
        received.append(signum)
        os.kill(os.getpid(), signal.SIGINT)

    signal.signal(signal.SIGUSR1, stop_after_this_batch)  # Slurm: time limit in requeue_grace s
    signal.signal(signal.SIGTERM, stop_after_this_batch)  # preempted, requeued or cancelled
    try:
        run_id = run_task(group, index, log=_echo)
    except KeyboardInterrupt as exc:
        job = os.environ.get("SLURM_JOB_ID")
        if signal.SIGUSR1 in received and job:
            subprocess.run(["scontrol", "requeue", job], check=False)
            _echo(f"task {index}: time limit near; checkpointed and requeued job {job}")
            sys.exit(0)
        # The epoch loop takes SIGTERM itself while it runs; it names the signal.
        terminated = signal.SIGTERM in received or getattr(exc, "signal_name", "") == "SIGTERM"
        run = getattr(exc, "run_id", None)
        _echo(
            f"task {index}: stopped; the last finished epoch is checkpointed"
            + (
                f" (run {run} KILLED); continue with `dglrec task {group_dir} --index {index}`"
                if run
                else ""
            )
        )
        sys.exit(143 if terminated else 130)
    click.echo(f"task {index}: run {run_id}")


@main.command()
@click.argument("run_id")
def evaluate(run_id) -> None:
    """Reload RUN_ID's logged model and re-score the test split.

    The numbers must match the run's logged test metrics; exit code 1 if not.
    """
    from dglrec.runs import pipeline

    out = pipeline.evaluate(run_id, log=_echo)
    mismatch = False
    for key, value in out["test"].items():
        logged = out["logged"].get(key)
        same = logged is not None and abs(value - logged) < 1e-6
        mismatch |= not same
        click.echo(
            f"test {key:4s} {value:.6f}  logged {logged if logged is None else f'{logged:.6f}'}"
            f"  {'ok' if same else 'MISMATCH'}"
        )
    if mismatch:
        sys.exit(1)


@main.command()
@click.argument("run_ids", nargs=-1)
@click.option("--experiment", "experiments", multiple=True, help="MLflow experiment (repeatable).")
@click.option("--model", "models", multiple=True, help="Only runs of this model (repeatable).")
@click.option("--recipe", "recipes", multiple=True, help="Only runs of this recipe (repeatable).")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Only runs with this tag.")
@click.option(
    "--metric", "metrics", multiple=True, help="Column to show, e.g. test_auc (repeatable)."
)
@click.option("--baseline", help="Group (recipe) to test the others against, paired by seed.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="compare",
    show_default=True,
    help="Directory for table.md, table.csv and the PNG plots.",
)
@click.option("--plots/--no-plots", default=True, show_default=True, help="Draw the PNG plots.")
@click.option(
    "--log/--no-log",
    "log_run",
    default=True,
    show_default=True,
    help="Log the table and plots as artifacts of a `comparison` MLflow run.",
)
def compare(
    run_ids, experiments, models, recipes, tags, metrics, baseline, out_dir, plots, log_run
) -> None:
    """Compare runs: models x metrics as mean ± std over seeds, paired tests, plots.

    RUN_IDS may name runs or multi-seed / sweep parents (their child runs are
    used); without them every finished run matching the filters is compared.
    Runs are grouped by recipe (tag `recipe`).

    \b
      dglrec compare --experiment lastfm-kg --baseline bprmf
      dglrec compare PARENT_RUN_1 PARENT_RUN_2 --metric test_auc --metric test_recall_at_20
    """
    from pathlib import Path

    from dglrec.analysis import compare as cmp

    records = cmp.select_runs(
        list(run_ids), list(experiments), list(models), list(recipes), cmp.parse_tags(list(tags))
    )
    comparison = cmp.build_comparison(records, list(metrics), baseline)
    click.echo(cmp.format_terminal(comparison), nl=False)
    files = cmp.write_report(comparison, Path(out_dir), plots=plots)
    click.echo(f"wrote {', '.join(str(p) for p in files)}")
    if log_run:
        experiment = experiments[0] if experiments else "comparisons"
        run_id = cmp.log_report(comparison, files, experiment)
        click.echo(f"logged to MLflow run {run_id} (experiment {experiment})")


@main.command()
@click.argument("run_id")
@click.option("--user", "user", required=True, help="HetRec userID, e.g. 2.")
@click.option("--k", "k", type=int, default=10, show_default=True, help="How many artists.")
@click.option(
    "--reasons", type=int, default=3, show_default=True, help="KG neighbours shown per artist."
)
@click.option(
    "--names",
    "names_file",
    type=click.Path(dir_okay=False),
    help="artists.dat with the names [default: found beside the raw data].",
)
@click.option(
    "--format", "output", type=click.Choice(["text", "json"]), default="text", show_default=True
)
def recommend(run_id, user, k, reasons, names_file, output) -> None:
    """Top-K artists of RUN_ID's model for one user, with names and KG reasons."""
    from dglrec.analysis.recommend import format_text
    from dglrec.analysis.recommend import recommend as top_k

    rec = top_k(run_id, user, k, reasons, names_file, log=lambda _: None)
    if output == "json":
        click.echo(json.dumps(rec.to_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(format_text(rec), nl=False)


def _exec(command: list[str]) -> None:
    """Replace this process by ``command`` (Ctrl-C and signals reach MLflow directly)."""
    import os

    _echo("$ " + " ".join(command))
    sys.stdout.flush()
    os.execv(command[0], command)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=int, default=5000, show_default=True)
def ui(host, port) -> None:
    """The MLflow UI on this project's runs (./mlruns, or $MLFLOW_TRACKING_URI's database).

    Compare runs side by side: tick them in the runs table, then "Compare".
    """
    from dglrec.runs.server import check_port_free, ui_command

    command = ui_command(host, port)
    if isinstance(command, str):
        click.echo(f"$MLFLOW_TRACKING_URI is a tracking server: open {command}")
        return
    check_port_free(host, port)
    _exec(command)


@main.command()
@click.option(
    "--backend-store-uri",
    help="Database of runs, e.g. postgresql+psycopg2://user:pw@db/mlflow "
    "[default: ./mlruns/mlflow.db].",
)
@click.option(
    "--artifacts-destination",
    help="Where the server stores artifacts (directory, file:// or s3:// URI) "
    "[default: ./mlruns/artifacts].",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on; 0.0.0.0 to serve the team.",
)
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--workers", type=int, help="Server worker processes.")
def server(backend_store_uri, artifacts_destination, host, port, workers) -> None:
    """A shared MLflow tracking server; jobs log to it with MLFLOW_TRACKING_URI=http://HOST:PORT."""
    from dglrec.runs.server import check_port_free, server_command

    command = server_command(backend_store_uri, artifacts_destination, host, port, workers)
    check_port_free(host, port)
    _exec(command)


@main.command("models")
def list_models() -> None:
    """List the registered models and their hyper-parameters."""
    from dglrec.models.registry import model_hparams, model_names

    for name in model_names():
        params = ", ".join(f"{k}={d!r}" for k, (_, d) in model_hparams(name).items())
        click.echo(f"{name}: {params}")


if __name__ == "__main__":
    main()
