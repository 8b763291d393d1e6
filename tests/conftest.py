"""Shared fixtures: a tiny synthetic KG dataset, isolated stores, the real Last.FM files."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# CI exports DGLREC_RAW_DIR=../shared/data; fall back to that layout for local runs.
# What every CTR fit reports on test: AUC/ACC/F1 and the full-ranking top-K metrics.
CTR_TEST_METRICS = {
    "auc",
    "acc",
    "f1",
    "recall_at_10",
    "ndcg_at_10",
    "coverage_at_10",
    "popularity_at_10",
}

REAL_RAW_ROOT = Path(os.environ.get("DGLREC_RAW_DIR") or REPO.parent / "shared" / "data")


def write_tiny_kg(
    directory: Path,
    seed: int = 0,
    n_users: int = 30,
    n_items: int = 40,
    n_extra_entities: int = 25,
    n_relations: int = 4,
    n_triples: int = 150,
) -> Path:
    """A small dataset in the KGCN three-file layout, with CRLF in kg.txt like the release.

    Raw ids are deliberately not 0-based or contiguous, to exercise the re-indexing.
    """
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    item_raw = 1000 + 3 * np.arange(n_items)
    entity_raw = [f"m.item{i}" for i in range(n_items)]
    (directory / "item_index2entity_id.txt").write_text(
        "".join(f"{i}\t{e}\n" for i, e in zip(item_raw, entity_raw, strict=True))
    )
    entities = entity_raw + [f"m.other{i}" for i in range(n_extra_entities)]
    heads = rng.integers(0, len(entities), n_triples)
    tails = rng.integers(0, len(entities), n_triples)
    rels = rng.integers(0, n_relations, n_triples)
    (directory / "kg.txt").write_bytes(
        "".join(
            f"{entities[h]}\trel.{r}\t{entities[t]}\r\n"
            for h, r, t in zip(heads, rels, tails, strict=True)
        ).encode()
    )
    lines = ["userID\tartistID\tweight"]
    popularity = rng.dirichlet(np.ones(n_items) * 0.5)
    for user in range(n_users):
        n = int(rng.integers(3, 12))
        items = rng.choice(n_items, size=n, replace=False, p=popularity)
        lines += [f"{7 + 2 * user}\t{item_raw[i]}\t{int(rng.integers(1, 500))}" for i in items]
        # An artist without a KG entity: must be dropped.
        lines.append(f"{7 + 2 * user}\t99999\t5")
    (directory / "user_artists.dat").write_text("\n".join(lines) + "\n")
    return directory


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> Path:
    return write_tiny_kg(tmp_path_factory.mktemp("raw") / "tiny-kg")


def write_tiny_modalities(directory: Path, seed: int = 0) -> Path:
    """The tiny KG plus HetRec-format names, tags and friends of its artists and users.

    Artists ``1000 + 3i`` (i < 40; the last 8 have no tag), users ``7 + 2u`` (u < 30),
    plus rows of users and artists outside the dataset (to be ignored). Tag values
    are ISO-8859-1, names UTF-8.
    """
    write_tiny_kg(directory)
    rng = np.random.default_rng(seed)
    artists = 1000 + 3 * np.arange(40)
    (directory / "artists.dat").write_text(
        "id\tname\turl\tpictureURL\n"
        + "".join(f"{a}\tBand {a} Ünïcode\thttp://x/{a}\thttp://y/{a}.jpg\n" for a in artists)
        + "99999\tNot In The KG\tu\tp\n",
        encoding="utf-8",
    )
    tags = ["rock", "m\xfasica", "jazz", "indie pop", "metal", "folk"]
    (directory / "tags.dat").write_bytes(
        ("tagID\ttagValue\n" + "".join(f"{i + 1}\t{t}\n" for i, t in enumerate(tags))).encode(
            "latin-1"
        )
    )
    rows = ["userID\tartistID\ttagID\tday\tmonth\tyear"]
    for user in range(30):
        for artist in rng.choice(artists[:32], size=4, replace=False):
            rows.append(f"{7 + 2 * user}\t{artist}\t{rng.integers(1, len(tags) + 1)}\t1\t4\t2009")
    rows.append("5\t1000\t3\t1\t4\t2009")  # a user outside the dataset
    (directory / "user_taggedartists.dat").write_text("\n".join(rows) + "\n")
    friends = ["userID\tfriendID"]
    for user in range(30):
        for other in ((user + 1) % 30, (user + 7) % 30):
            friends += [f"{7 + 2 * user}\t{7 + 2 * other}", f"{7 + 2 * other}\t{7 + 2 * user}"]
    friends.append("7\t4")  # a friend outside the dataset
    (directory / "user_friends.dat").write_text("\n".join(friends) + "\n")
    return directory


@pytest.fixture(scope="session")
def tiny_mm_raw(tmp_path_factory) -> Path:
    """:func:`write_tiny_modalities` in a session directory."""
    return write_tiny_modalities(tmp_path_factory.mktemp("raw") / "tiny-mm")


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Path:
    """Run in a fresh directory with its own data cache and MLflow store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DGLREC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture
def tiny_recipe(tiny_raw, isolated) -> Path:
    """A recipe that trains KGCN for 3 epochs on the tiny KG."""
    path = isolated / "tiny.toml"
    path.write_text(
        f"""seed = 3
[data]
name = "tiny-kg"
raw_dir = "{tiny_raw}"
[model]
name = "kgcn"
dim = 8
n_layers = 2
[sampler]
kind = "uniform"
n_neighbors = 4
[train]
epochs = 3
batch_size = 32
lr = 0.01
"""
    )
    return path


@pytest.fixture(scope="session")
def lastfm_raw() -> Path:
    path = REAL_RAW_ROOT / "lastfm-kg"
    if not (path / "kg.txt").is_file():
        pytest.skip(f"real Last.FM-KG files not found under {path} (set DGLREC_RAW_DIR)")
    return path


def recipe_on(recipe: str, data_name: str, raw: Path, *overrides: str, seed: int = 5):
    """A shipped recipe pointed at a tiny raw dataset: 2 epochs, batches of 64, no model logging."""
    from dglrec.runs.recipes import load_recipe

    return load_recipe(
        REPO / "recipes" / recipe,
        [
            f"data.name={data_name}",
            f"data.raw_dir={raw}",
            "train.epochs=2",
            "train.batch_size=64",
            "tracking.log_model=false",
            *overrides,
        ],
        seed=seed,
    )


def assert_evaluate_matches(run_id: str, tolerance: float = 1e-9) -> None:
    """`dglrec evaluate` re-scores the logged model to the run's logged test metrics."""
    from dglrec.runs import pipeline

    out = pipeline.evaluate(run_id, log=lambda _: None)
    assert set(out["test"]) <= set(out["logged"]), out
    for key, value in out["test"].items():
        assert abs(value - out["logged"][key]) < tolerance, key


def write_tiny_hetrec(
    directory: Path, seed: int = 0, n_users: int = 25, n_artists: int = 40
) -> Path:
    """A small HetRec-format dataset (raw ids not contiguous); user 5000 only ever played once."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    artist_raw = 10 + 7 * np.arange(n_artists)
    lines = ["userID\tartistID\tweight"]
    for user in range(n_users):
        for artist in rng.choice(artist_raw, size=int(rng.integers(4, 12)), replace=False):
            lines.append(f"{2 + 3 * user}\t{artist}\t{int(rng.integers(1, 3000))}")
    for artist in artist_raw[:3]:  # max count 1: the 0/0 case
        lines.append(f"5000\t{artist}\t1")
    (directory / "user_artists.dat").write_text("\n".join(lines) + "\n")
    (directory / "artists.dat").write_text(
        "id\tname\turl\tpictureURL\n"
        + "".join(f"{a}\tArtist {a}\thttp://x/{a}\thttp://y/{a}.jpg\n" for a in artist_raw)
    )
    (directory / "tags.dat").write_bytes(
        "tagID\ttagValue\n1\trock\n2\tm\xfasica\n".encode("latin-1")
    )
    (directory / "user_taggedartists.dat").write_text(
        "userID\tartistID\ttagID\tday\tmonth\tyear\n2\t10\t1\t1\t4\t2009\n5\t17\t2\t1\t4\t2009\n"
    )
    (directory / "user_friends.dat").write_text("userID\tfriendID\n2\t5\n5\t2\n")
    return directory


@pytest.fixture(scope="session")
def tiny_hetrec(tmp_path_factory) -> Path:
    return write_tiny_hetrec(tmp_path_factory.mktemp("raw") / "tiny-hetrec")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    """Until ``url`` answers 200; fails early if ``process`` (the server) exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} did not answer within {timeout:.0f}s")


@contextlib.contextmanager
def tracking_server(root: Path):
    """``dglrec server`` on 127.0.0.1 (SQLite backend and artifacts under ``root``); its URI."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "dglrec.cli", "server", "--port", str(port)]
        + ["--backend-store-uri", f"sqlite:///{root / 'server.db'}"]
        + ["--artifacts-destination", str(root / "server-artifacts")],
        cwd=root,
        start_new_session=True,  # its workers stop with it
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", server)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
