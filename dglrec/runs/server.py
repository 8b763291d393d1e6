"""`dglrec ui` (the MLflow UI on the project's runs) and `dglrec server` (a team tracking server).

Both start MLflow's own server; dglrec only fills in the store so that the UI
shows exactly the runs ``dglrec fit`` logged:

* ``dglrec ui``: the local store (``sqlite:///<cwd>/mlruns/mlflow.db``, artifacts
  under ``mlruns/``) or ``$MLFLOW_TRACKING_URI`` when it names a database, on
  127.0.0.1. When ``$MLFLOW_TRACKING_URI`` already is a server (http...), there is
  nothing to start: its address is printed.
* ``dglrec server``: a team tracking server. The backend store is a database
  (PostgreSQL in production, e.g. ``postgresql+psycopg2://user:pw@db/mlflow``; SQLite for
  one machine), artifacts are proxied by the server (``--artifacts-destination``,
  a directory or an object store), so jobs need only ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

from dglrec.errors import ConfigError
from dglrec.runs.tracking import LOCAL_STORE, local_store_uri, sqlite_artifact_root


def mlflow_executable() -> list[str]:
    """``mlflow`` beside this interpreter (the venv's), else on PATH, else ``python -m``."""
    beside = Path(sys.executable).with_name("mlflow")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("mlflow")
    return [found] if found else [sys.executable, "-m", "mlflow"]


def check_port_free(host: str, port: int) -> None:
    """A one-line :class:`ConfigError` if ``host:port`` cannot be listened on (e.g. in use).

    MLflow's server would log the failure and still exit 0 (its workers fail, not it).
    """
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        raise ConfigError(
            f"--host {host} --port {port}: cannot listen there ({exc.strerror}); "
            "choose another --port"
        ) from None


def ui_command(host: str = "127.0.0.1", port: int = 5000) -> list[str] | str:
    """The ``mlflow ui`` command line for the project's store, or the server URL to open."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith(("http://", "https://")):
        return uri
    backend = uri or local_store_uri()
    command = [*mlflow_executable(), "ui", "--backend-store-uri", backend]
    root = sqlite_artifact_root(backend)
    if root is not None:  # new experiments' artifacts next to the database, as dglrec fit puts them
        command += ["--default-artifact-root", root.as_uri()]
    return command + ["--host", host, "--port", str(port)]


def server_command(
    backend_store_uri: str | None,
    artifacts_destination: str | None,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int | None = None,
) -> list[str]:
    """The ``mlflow server`` command line of a shared tracking server with proxied artifacts."""
    backend = backend_store_uri or local_store_uri()
    if backend.startswith(("http://", "https://")):
        raise ConfigError(f"--backend-store-uri {backend}: expected a database URI, not a server")
    destination = artifacts_destination or (LOCAL_STORE / "artifacts").resolve().as_uri()
    command = [
        *mlflow_executable(),
        "server",
        "--backend-store-uri",
        backend,
        "--serve-artifacts",
        "--artifacts-destination",
        destination,
        "--host",
        host,
        "--port",
        str(port),
    ]
    if workers:
        command += ["--workers", str(workers)]
    return command
