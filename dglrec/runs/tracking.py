"""MLflow tracking: the only module that imports :mod:`mlflow`.

Store: ``$MLFLOW_TRACKING_URI`` when set (e.g. a team tracking server), else the
embedded default ``sqlite:///<cwd>/mlruns/mlflow.db`` with artifacts under
``mlruns/artifacts/`` (MLflow 3 no longer accepts a plain ``./mlruns`` file store).
One experiment per dataset, one run per fit.

Several processes may log at once (local sweep workers, jobs on one node): the
SQLite store is switched to write-ahead logging, created under a file lock (two
first users would otherwise both create its tables), and every write that meets
SQLite's "database is locked" is retried with backoff rather than lost.

A tracking server that does not answer fails the command within seconds, with one
line: :func:`configure` asks its ``/health`` once, before any data is built, and
MLflow's own HTTP retries are shortened (unless the user set them). With any
SQLite store, the default's or the user's own, artifacts go to ``artifacts/``
beside the database file, and the run's first line says where.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib
import logging
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

# No usage telemetry from research runs (and no network on many clusters).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Artifacts here are small; a progress bar per download only clutters the output.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow's defaults (7 retries, backoff factor 2, 120 s timeout) make a request to a
# server that went away take minutes; these give up within about ten seconds.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

import mlflow  # noqa: E402
import mlflow.pytorch  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from data_prep.cache import write_atomic  # noqa: E402
from dglrec.errors import RunError  # noqa: E402

LOCAL_STORE = Path("mlruns")


def configure() -> str:
    """Point MLflow at ``$MLFLOW_TRACKING_URI`` or the local SQLite store; return the URI."""
    # Schema creation and migration chatter on every new store is not for users.
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or local_store_uri()
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///") and uri not in _READY:
        _prepare_sqlite(uri)
    if uri.startswith(("http://", "https://")) and uri not in _READY:
        probe_server(uri)
        _READY.add(uri)
    return uri


# Seconds the /health probe waits for a tracking server.
PROBE_TIMEOUT = 5.0


def probe_server(uri: str) -> None:
    """Raise a one-line :class:`RunError` unless the tracking server at ``uri`` answers."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT):
            pass
    except urllib.error.HTTPError:
        return  # it answers (a proxy or an older server without /health)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RunError(
            f"MLFLOW_TRACKING_URI={uri}: no MLflow tracking server answers there ({reason}); "
            "start one (`dglrec server`) or unset MLFLOW_TRACKING_URI for the local store"
        ) from None


def sqlite_artifact_root(uri: str) -> Path | None:
    """``artifacts/`` beside a SQLite store's database file (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).resolve().parent / "artifacts"


_READY: set[str] = set()
# Total time a write keeps retrying on "database is locked" before giving up.
LOCKED_RETRY_SECONDS = 120.0


def _prepare_sqlite(uri: str) -> None:
    """WAL mode, and the schema created (or migrated) by one process at a time."""
    path = Path(uri.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".mlflow-init.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with sqlite3.connect(path, timeout=60) as connection:
                # Readers no longer block the writer, nor the writer the readers.
                connection.execute("PRAGMA journal_mode=WAL")
            MlflowClient(uri).search_experiments(max_results=1)  # creates/migrates the schema
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _READY.add(uri)


def _locked(exc: BaseException) -> bool:
    return "database is locked" in str(exc) or "database is busy" in str(exc)


def retry_locked(function):
    """Retry ``function`` while SQLite reports "database is locked" (another writer)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        deadline = time.monotonic() + LOCKED_RETRY_SECONDS
        delay = 0.05
        while True:
            try:
                return function(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 (MlflowException or sqlalchemy's)
                if not _locked(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)

    return wrapper


def local_store_uri() -> str:
    """The embedded default store, ``sqlite:///<cwd>/mlruns/mlflow.db`` (created if missing)."""
    LOCAL_STORE.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(LOCAL_STORE / 'mlflow.db').resolve()}"


def _experiment_id(name: str) -> str:
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # Beside the database, not MLflow's default ./mlruns of whatever directory a fit runs in.
    root = sqlite_artifact_root(mlflow.get_tracking_uri())
    location = root.as_uri() if root is not None else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by a concurrent fit
        return client.get_experiment_by_name(name).experiment_id


def git_commit() -> str:
    """The commit of the dglrec source tree, suffixed ``-dirty`` if it has local changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


class MlflowRun:
    """A started (or reopened) MLflow run; use as a context manager.

    Leaving the context normally ends the run FINISHED; on Ctrl-C it ends KILLED
    and on an error FAILED, so what was logged (checkpoints included) stays.
    """

    def __init__(
        self,
        experiment: str,
        run_name: str | None = None,
        run_id: str | None = None,
        parent_run_id: str | None = None,
    ):
        configure()
        if run_id is not None:
            try:
                MlflowClient().get_run(run_id)
            except MlflowException:
                raise RunError(f"no MLflow run {run_id!r} in {mlflow.get_tracking_uri()}") from None
            self._run = retry_locked(mlflow.start_run)(run_id=run_id)
        else:
            self._run = retry_locked(mlflow.start_run)(
                experiment_id=retry_locked(_experiment_id)(experiment),
                run_name=run_name or None,
                nested=parent_run_id is not None,
                tags={"mlflow.parentRunId": parent_run_id} if parent_run_id else None,
            )
        self.run_id = self._run.info.run_id
        self.artifact_uri = self._run.info.artifact_uri

    def __enter__(self) -> MlflowRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "KILLED"
        else:
            status = "FAILED"
        retry_locked(mlflow.end_run)(status)

    @retry_locked
    def log_params(self, params: dict[str, Any]) -> None:
        mlflow.log_params({k: ("" if v is None else v) for k, v in params.items()})

    @retry_locked
    def set_tags(self, tags: dict[str, Any]) -> None:
        mlflow.set_tags(tags)

    @retry_locked
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Log a file; into a local artifact store atomically (temp file, fsync, rename).

        A kill at any instant leaves the previous version (a checkpoint) or the new
        one whole, never a truncated file in its place.
        """
        uri = mlflow.get_artifact_uri(artifact_path)
        parsed = urllib.parse.urlparse(uri)
        if parsed.scheme not in ("", "file"):  # a server (mlflow-artifacts:/, s3://...)
            mlflow.log_artifact(str(path), artifact_path)
            return
        directory = Path(urllib.request.url2pathname(parsed.path))
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(directory / Path(path).name, lambda partial: shutil.copyfile(path, partial))
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)  # the rename itself survives a power loss
        finally:
            os.close(descriptor)

    @retry_locked
    def logged_steps(self, key: str) -> set[int]:
        """The steps at which this run has logged ``key``."""
        return {m.step for m in MlflowClient().get_metric_history(self.run_id, key)}

    @retry_locked
    def log_text(self, text: str, artifact_file: str) -> None:
        mlflow.log_text(text, artifact_file)

    def log_model(self, model) -> None:
        # Explicit requirements: inferring them would import and trace the model.
        # We pickle on purpose (see serialization_format); silence MLflow's advice.
        logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
        mlflow.pytorch.log_model(
            model,
            name="model",
            pip_requirements=["torch==2.2.1", "dgl==2.1.0", "dglrec"],
            # torch.export ("pt2") needs torch >= 2.4; DGL pins us to 2.2.1.
            serialization_format="pickle",
        )


def get_run(run_id: str):
    """``(params, metrics, tags)`` of a run, or a :class:`RunError` naming it."""
    configure()
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        raise RunError(f"no MLflow run {run_id!r} in {mlflow.get_tracking_uri()}") from None
    return run.data.params, run.data.metrics, run.data.tags


def run_status(run_id: str) -> str:
    """``RUNNING``, ``FINISHED``, ``FAILED`` or ``KILLED``; a :class:`RunError` if no such run."""
    configure()
    try:
        return MlflowClient().get_run(run_id).info.status
    except MlflowException:
        raise RunError(f"no MLflow run {run_id!r} in {mlflow.get_tracking_uri()}") from None


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    configure()
    return [(m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key)]


def download_artifact(run_id: str, artifact_path: str) -> Path:
    """Fetch one artifact of a run into a temporary directory."""
    configure()
    try:
        return Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=artifact_path, dst_path=tempfile.mkdtemp()
            )
        )
    except (MlflowException, OSError):
        raise RunError(f"run {run_id!r} has no artifact {artifact_path!r}") from None


# Models are pickled with their classes' module paths. Runs logged before the layered
# layout (dglrec 0.1.0, flat modules) name the old paths; these aliases load them.
LEGACY_MODULES = {
    f"dglrec.models.{name}": f"dglrec.models.{family}.{name}"
    for family, names in {
        "kg": ("kgcn", "kaisg", "mgwa", "kgnn_ls", "ripplenet", "mkr", "mmss_mkr", "transe"),
        "cf": ("pop", "bprmf", "lightgcn"),
        "edge": ("gcn_edge", "biased_mf", "global_mean", "user_mean"),
    }.items()
    for name in names
}
LEGACY_MODULES["dglrec.ripple"] = "dglrec.sampling.ripple_sets"


@contextlib.contextmanager
def legacy_module_names():
    """Make the pre-layout module paths importable while a model is unpickled."""
    added = []
    for old, new in LEGACY_MODULES.items():
        if old not in sys.modules:
            sys.modules[old] = importlib.import_module(new)
            added.append(old)
    try:
        yield
    finally:
        for old in added:
            del sys.modules[old]


def load_model(run_id: str):
    """The ``mlflow.pytorch`` model logged by a run (by this or an earlier dglrec)."""
    configure()
    try:
        with legacy_module_names():
            return mlflow.pytorch.load_model(f"runs:/{run_id}/model", map_location="cpu")
    except (MlflowException, OSError):
        raise RunError(f"run {run_id!r} has no logged model") from None
    except (ModuleNotFoundError, AttributeError) as exc:
        raise RunError(
            f"run {run_id!r}: its model was pickled by a dglrec whose classes this version "
            f"cannot find ({exc}); evaluate it with the dglrec of its git_commit tag, or refit"
        ) from None


@retry_locked
def search_runs(
    experiments: list[str] | None = None,
    filter_string: str = "",
    run_ids: list[str] | None = None,
    newest_first: bool = False,
) -> list:
    """Runs (``mlflow.entities.Run``) of the named experiments (default: all) matching the filter.

    With ``run_ids`` only those runs are returned, each checked to exist.
    """
    configure()
    client = MlflowClient()
    if run_ids:
        runs = []
        for run_id in run_ids:
            try:
                runs.append(client.get_run(run_id))
            except MlflowException:
                raise RunError(f"no MLflow run {run_id!r} in {mlflow.get_tracking_uri()}") from None
        return runs
    if experiments:
        ids = []
        for name in experiments:
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                known = ", ".join(e.name for e in client.search_experiments()) or "none"
                raise RunError(f"no MLflow experiment {name!r} (experiments: {known})")
            ids.append(experiment.experiment_id)
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return []
    order = ["attributes.start_time DESC"] if newest_first else None
    return client.search_runs(ids, filter_string=filter_string, order_by=order, max_results=50_000)


def children_of(run) -> list:
    """The nested runs (seeds, sweep trials) of a parent run."""
    return MlflowClient().search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'",
        max_results=50_000,
    )


@retry_locked
def create_run(
    experiment: str, run_name: str, tags: dict[str, str], params: dict[str, Any], texts: dict
) -> str:
    """A run left RUNNING (no active run in this process): a run group's parent, closed later."""
    configure()
    client = MlflowClient()
    run = client.create_run(_experiment_id(experiment), run_name=run_name, tags=tags)
    for key, value in params.items():
        client.log_param(run.info.run_id, key, "" if value is None else value)
    for name, text in texts.items():
        client.log_text(run.info.run_id, text, name)
    return run.info.run_id


@retry_locked
def update_run(
    run_id: str,
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
    texts: dict[str, str] | None = None,
    status: str | None = None,
) -> None:
    """Log to a run that is not this process's active run; ``status`` ends it."""
    configure()
    client = MlflowClient()
    for key, value in (metrics or {}).items():
        client.log_metric(run_id, key, float(value))
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    for name, text in (texts or {}).items():
        client.log_text(run_id, text, name)
    if status is not None:
        client.set_terminated(run_id, status)


def find_runs(filter_string: str) -> list:
    """Runs of every experiment matching ``filter_string``, newest first."""
    return search_runs(filter_string=filter_string, newest_first=True)


def list_artifacts(run_id: str, path: str | None = None) -> list[str]:
    configure()
    return [f.path for f in MlflowClient().list_artifacts(run_id, path)]
