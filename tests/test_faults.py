"""Failing cleanly and losing nothing (issue 16): bad recipes, bad raw data, corrupted
caches and checkpoints, kills and signals at any instant, a broken environment.

Every error path asserts its one-line message; kills are injected in-process at
named points of the epoch loop (``dglrec.training.loop.fault_point``) and, for the
narrowest window, with a real SIGKILL.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dglrec.training.ctr as ctr_module
import dglrec.training.loop as loop_module
from data_prep import kg_ctr
from data_prep.cache import load_or_build
from data_prep.kg_ctr import CTRProtocol, build
from data_prep.kg_dataset import GRAPH_FILE, META_FILE, KGRecDataset
from dglrec.errors import (
    CacheError,
    ConfigError,
    DataFormatError,
    DataSourceError,
    RawDataError,
    RunError,
    RunInterrupted,
)
from dglrec.runs import pipeline, tracking
from dglrec.runs.recipes import load_recipe
from dglrec.training.ctr import CTRTrainer
from tests.conftest import free_port, write_tiny_kg
from tests.test_cli import DGLREC, dglrec, history

PROTOCOL = CTRProtocol(dataset="tiny-kg")


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


# --------------------------------------------------------------------------- 1. recipe values


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=-1", "train.lr: expected a number >= 0, got -1.0"),
        ("train.batch_size=0", "train.batch_size: expected an integer >= 1, got 0"),
        ("train.epochs=0", "train.epochs: expected an integer >= 1, got 0"),
        ("train.patience=-1", "train.patience: expected an integer >= 0, got -1"),
        ("train.kge_interval=0", "train.kge_interval: expected an integer >= 1, got 0"),
        ("train.lr_decay=0", "train.lr_decay: expected a number in (0, 1], got 0.0"),
        ("train.l2=nan", "train.l2: expected a finite number, got nan"),
        ("seed=-1", "seed: expected an integer in [0, 2**32), got -1"),
        ("data.split_seed=-5", "data.split_seed: expected an integer in [0, 2**32), got -5"),
        (
            "data.split=[0.5, 0.5, 0.5]",
            "data.split: expected three non-negative fractions (train, eval, test) summing to 1",
        ),
        ("data.split=[1.2, -0.1, -0.1]", "data.split: expected three non-negative"),
        ("data.negatives_per_positive=0", "data.negatives_per_positive: expected an integer >= 1"),
        ("sampler.n_neighbors=0", "sampler.n_neighbors: expected an integer >= 1, got 0"),
        ("eval.batch_size=0", "eval.batch_size: expected an integer >= 1, got 0"),
        ("eval.threshold=1.5", "eval.threshold: expected a number in (0, 1), got 1.5"),
        (
            "eval.ranking_ks=[10, 0]",
            "eval.ranking_ks: expected a list of integers >= 1, got [10, 0]",
        ),
        ("eval.ranking_users=0", "eval.ranking_users: expected an integer >= 1, got 0"),
        ("pretrain.lr=0", "pretrain.lr: expected a number > 0, got 0.0"),
        ("pretrain.margin=-1", "pretrain.margin: expected a number > 0, got -1.0"),
        ("cluster.cpus=0", "cluster.cpus: expected an integer >= 1, got 0"),
        ("cluster.time=soon", "cluster.time: expected Slurm's"),
        ("cluster.mem=lots", "cluster.mem: expected Slurm's memory"),
        ("model.dim=0", "model.dim: expected an integer >= 1, got 0"),
        ("model.n_layers=-2", "model.n_layers: expected an integer >= 1, got -2"),
    ],
)
def test_out_of_range_values_are_named_with_what_is_allowed(override, message):
    with pytest.raises(ConfigError) as err:
        load_recipe(None, [override])
    assert message in str(err.value)


def test_model_sizes_follow_their_defaults():
    assert (
        load_recipe(
            None,
            [
                "model.name=biased_mf",
                "task.kind=edge_regression",
                "eval.select_metric=mse",
                "model.dim=0",
            ],
        ).model["dim"]
        == 0
    )
    with pytest.raises(ConfigError, match="model.dim: expected an integer >= 0, got -1"):
        load_recipe(
            None,
            [
                "model.name=biased_mf",
                "task.kind=edge_regression",
                "eval.select_metric=mse",
                "model.dim=-1",
            ],
        )


def test_a_model_rejecting_its_values_is_a_config_error_before_any_run(tiny_recipe, isolated):
    # Only the model knows this combination: augmentation needs edge weights.
    cfg = load_recipe(
        None,
        ["model.name=gcn_edge", "task.kind=edge_regression", "eval.select_metric=mse"]
        + ["model.augmentation_std=0.1", "model.edge_weight=false"],
    )
    with pytest.raises(ConfigError) as err:
        pipeline._build_model(cfg, {"n_users": 5, "n_items": 4})
    assert str(err.value) == (
        "model.edge_weight = False: gcn_edge rejects this: "
        "augmentation perturbs edge weights: it needs edge_weight = true"
    )


def test_bad_value_fails_before_data_or_run(tiny_recipe, isolated):
    proc = dglrec("fit", tiny_recipe, "--set", "train.lr=-1", cwd=isolated, check=False)
    assert proc.returncode == 2
    assert _one_error_line(proc) == (
        f"error: {tiny_recipe}: train.lr: expected a number >= 0, got -1.0"
    )
    assert "building" not in proc.stderr and not (isolated / "data").exists()
    assert not (isolated / "mlruns").exists()  # no run opened (and left FAILED)


# --------------------------------------------------------------------------- 2. raw data


def _raw(tmp_path: Path) -> Path:
    return write_tiny_kg(tmp_path / "raw")


def _positives(dataset: KGRecDataset) -> set[tuple[str, str]]:
    users, items = dataset.meta["user_raw_ids"], dataset.meta["item_raw_ids"]
    pairs = torch.cat([s for s in dataset.splits.values()])
    return {(users[u], items[i]) for u, i, y in pairs.tolist() if y == 1}


def test_bom_and_crlf_are_cleaned_counted_and_change_nothing(tmp_path):
    raw = _raw(tmp_path)
    clean = build(PROTOCOL, raw, {})
    ratings = raw / "user_artists.dat"
    ratings.write_bytes(b"\xef\xbb\xbf" + ratings.read_bytes().replace(b"\n", b"\r\n"))
    items = raw / "item_index2entity_id.txt"
    items.write_bytes(b"\xef\xbb\xbf" + items.read_bytes())
    cleaned = build(PROTOCOL, raw, {})
    assert cleaned.meta["item_raw_ids"] == clean.meta["item_raw_ids"]  # no "\ufeff1000"
    assert _positives(cleaned) == _positives(clean)
    n_lines = len(ratings.read_bytes().splitlines())
    assert cleaned.meta["cleaned"]["bom.user_artists.dat"] == 1
    assert cleaned.meta["cleaned"]["bom.item_index2entity_id.txt"] == 1
    assert cleaned.meta["cleaned"]["crlf_lines.user_artists.dat"] == n_lines
    assert cleaned.meta["cleaned"]["crlf_lines.kg.txt"] == 150  # the release's CRLF
    assert cleaned.meta["cleaned"]["without_kg_item.user_artists.dat"] == 30  # artist 99999


@pytest.mark.parametrize(
    "value, why", [("nan", "'nan' is not a valid rating"), ("-3", "'-3' is not a valid rating")]
)
def test_nan_or_negative_play_counts_fail_naming_file_and_line(tmp_path, value, why):
    raw = _raw(tmp_path)
    ratings = raw / "user_artists.dat"
    lines = ratings.read_text().splitlines()
    lines[4] = "\t".join(lines[4].split("\t")[:2] + [value])
    ratings.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=rf"user_artists.dat:5: field {why}"):
        build(PROTOCOL, raw, {})


@pytest.mark.parametrize("content", ["", "userID\tartistID\tweight\n"])
def test_empty_or_header_only_ratings_fail_in_one_line(tmp_path, content):
    raw = _raw(tmp_path)
    (raw / "user_artists.dat").write_text(content)
    with pytest.raises(DataFormatError, match=r"user_artists.dat: no data rows"):
        build(PROTOCOL, raw, {})


def test_ratings_without_any_usable_positive_fail(tmp_path):
    raw = _raw(tmp_path)
    (raw / "user_artists.dat").write_text("userID\tartistID\tweight\n7\t99999\t5\n")
    with pytest.raises(DataFormatError, match="no rating >= 0 of an item listed"):
        build(PROTOCOL, raw, {})


def test_repeated_rows_are_counted_and_conflicting_ones_refused(tmp_path):
    raw = _raw(tmp_path)
    clean = build(PROTOCOL, raw, {})
    ratings = raw / "user_artists.dat"
    lines = ratings.read_text().splitlines()
    ratings.write_text("\n".join(lines + [lines[1]]) + "\n")
    repeated = build(PROTOCOL, raw, {})
    assert repeated.meta["cleaned"]["repeated_rows.user_artists.dat"] == 1
    assert _positives(repeated) == _positives(clean)
    user, item, _ = lines[1].split("\t")
    ratings.write_text("\n".join(lines + [f"{user}\t{item}\t777"]) + "\n")
    with pytest.raises(
        DataFormatError,
        match=rf"user_artists.dat:{len(lines) + 1}: user {user} rates item {item} 777, "
        r"but .* on line 2",
    ):
        build(PROTOCOL, raw, {})


def test_kg_models_refuse_a_kg_without_triples(tmp_path, isolated):
    raw = _raw(tmp_path)
    (raw / "kg.txt").write_text("")
    base = [f"data.raw_dir={raw}", "data.name=tiny-empty-kg", "train.epochs=1"]
    with pytest.raises(ConfigError, match="kgcn reads the knowledge graph, but tiny-empty-kg's KG"):
        pipeline.build(load_recipe(None, base + ["model.name=kgcn"]), log=lambda _: None)
    setup = pipeline.build(load_recipe(None, base + ["model.name=bprmf"]), log=lambda _: None)
    assert setup.dataset.meta["stats"]["triples"] == 0


def _reference_positives(path: Path, item_ids: set[str]) -> set[tuple[str, str]]:
    """What the documented protocol makes of a ratings file (every field already valid)."""
    text = path.read_bytes().removeprefix(b"\xef\xbb\xbf").decode()
    out = set()
    for line in re.split(r"\r\n|\r|\n", text)[1:]:
        if line.strip():
            user, item, value = (f.strip().strip('"') for f in line.split("\t"))
            if item in item_ids and float(value) >= 0:
                out.add((user, item))
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    data=st.data(),
    kind=st.sampled_from(["truncate", "flip", "junk_line", "drop_line", "bom"]),
    target=st.sampled_from(["user_artists.dat", "item_index2entity_id.txt", "kg.txt"]),
)
def test_garbled_raw_files_give_one_clear_error_or_the_documented_data(
    tmp_path_factory, data, kind, target
):
    raw = write_tiny_kg(tmp_path_factory.mktemp("garbled") / "raw")
    path = raw / target
    blob = bytearray(path.read_bytes())
    if kind == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    elif kind == "flip":
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "junk_line":
        junk = data.draw(st.text(min_size=1, max_size=20)).encode()
        lines = blob.split(b"\n")
        lines.insert(data.draw(st.integers(1, len(lines))), junk)
        blob = bytearray(b"\n".join(lines))
    elif kind == "drop_line":
        lines = blob.split(b"\n")
        del lines[data.draw(st.integers(1, len(lines) - 1))]
        blob = bytearray(b"\n".join(lines))
    else:
        blob = bytearray(b"\xef\xbb\xbf") + blob
    path.write_bytes(bytes(blob))
    try:
        dataset = build(PROTOCOL, raw, {})
    except RawDataError as exc:  # one clear error naming the file
        message = str(exc)
        assert "\n" not in message and str(raw) in message, message
        return
    if target == "user_artists.dat":  # accepted: exactly what the documented protocol gives
        item_ids = set(dataset.meta["item_raw_ids"])
        assert _positives(dataset) == _reference_positives(path, item_ids)


# --------------------------------------------------------------------------- 3. cache, checkpoints


@pytest.fixture(scope="module")
def cached_entry(tmp_path_factory) -> tuple[Path, KGRecDataset]:
    raw = write_tiny_kg(tmp_path_factory.mktemp("cache") / "raw")
    directory = tmp_path_factory.mktemp("entry") / "tiny"
    dataset, _ = load_or_build(
        directory, KGRecDataset, lambda: build(PROTOCOL, raw, {}), "tiny", raw, lambda _: None
    )
    return directory, dataset


def _same(a: KGRecDataset, b: KGRecDataset) -> bool:
    return (
        all(torch.equal(a.splits[s], b.splits[s]) for s in a.splits)
        and torch.equal(a.item_entity, b.item_entity)
        and torch.equal(a.graph.edges["kg"].data["rel"], b.graph.edges["kg"].data["rel"])
        and json.dumps(a.meta, sort_keys=True) == json.dumps(b.meta, sort_keys=True)
    )


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    data=st.data(),
    name=st.sampled_from([GRAPH_FILE, META_FILE]),
    kind=st.sampled_from(["truncate", "flip"]),
)
def test_a_corrupted_cache_entry_is_refused_and_rebuilt(
    cached_entry, tmp_path_factory, data, name, kind
):
    original_dir, original = cached_entry
    directory = tmp_path_factory.mktemp("corrupt") / "tiny"
    shutil.copytree(original_dir, directory)
    blob = bytearray((directory / name).read_bytes())
    if kind == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    else:
        blob[data.draw(st.integers(0, len(blob) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    (directory / name).write_bytes(bytes(blob))
    with pytest.raises(CacheError):
        KGRecDataset.load(directory)  # never loaded with changed contents
    notes: list[str] = []
    raw = Path(original.meta["raw_dir"])
    rebuilt, _ = load_or_build(directory, KGRecDataset, lambda: original, "tiny", raw, notes.append)
    assert notes[0].startswith(f"cached tiny at {directory} is corrupted (") and notes[0].endswith(
        "); rebuilding it"
    )
    assert _same(KGRecDataset.load(directory), original) and rebuilt is original


def test_an_unwritable_data_dir_is_one_line(tiny_raw, tmp_path):
    not_a_dir = tmp_path / "data-file"
    not_a_dir.write_text("x")
    env = {**os.environ, "DGLREC_DATA_DIR": str(not_a_dir)}
    proc = subprocess.run(
        [*DGLREC, "prep", "tiny-kg", "--raw", str(tiny_raw)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2
    line = _one_error_line(proc)
    assert line.startswith(f"error: {not_a_dir}/processed/tiny-kg/") and line.endswith(
        "point DGLREC_DATA_DIR (or --out) at a writable directory"
    )


def test_checkpoint_artifacts_are_replaced_atomically(isolated, tmp_path, monkeypatch):
    with tracking.MlflowRun("atomic") as run:
        first = tmp_path / "last.pt"
        first.write_bytes(b"complete old checkpoint")
        run.log_artifact(first, "checkpoints")
        first.write_bytes(b"new checkpoint")

        def die(*args):  # the process dies after copying, before the rename
            raise KeyboardInterrupt

        with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
            patched.setattr(os, "replace", die)
            run.log_artifact(first, "checkpoints")
        kept = tracking.download_artifact(run.run_id, "checkpoints/last.pt").read_bytes()
        assert kept == b"complete old checkpoint"
        listed = tracking.list_artifacts(run.run_id, "checkpoints")
        assert [Path(p).name for p in listed if p.endswith("last.pt")] == ["last.pt"]


def test_an_unreadable_checkpoint_is_one_line(tiny_recipe, isolated):
    cfg = load_recipe(tiny_recipe, ["train.epochs=1", "tracking.log_model=false"])
    with tracking.MlflowRun("tiny-kg") as run:
        bad = isolated / "last.pt"
        torch.save({"epoch": 1, "config": cfg.to_dict()}, bad)
        bad.write_bytes(bad.read_bytes()[:50])  # truncated
        run.log_artifact(bad, "checkpoints")
    with pytest.raises(RunError) as err:
        pipeline.resume_point(run.run_id)
    assert str(err.value).startswith(f"run {run.run_id}: checkpoints/last.pt is unreadable (")
    assert str(err.value).endswith("); it cannot be resumed") and "\n" not in str(err.value)


# --------------------------------------------------------------------------- 4. run lifecycle


class Killed(BaseException):
    """Stands for SIGKILL: no cleanup code of the fit may act on it (it is no Exception)."""


def _fit_with_fault(cfg, monkeypatch, point: str | None):
    def fault(name, epoch):
        if point == f"{name}:{epoch}":
            raise Killed(point)

    monkeypatch.setattr(loop_module, "fault_point", fault)
    monkeypatch.setattr(pipeline, "fault_point", fault)
    return pipeline.fit(cfg, log=lambda _: None)


# Every named point of the loop, around the epoch 1 -> 2 boundary and the end.
KILL_POINTS = [
    "after_train:1",
    "before_checkpoint:1",
    "before_metrics:1",
    "after_metrics:1",
    "after_train:2",
    "before_checkpoint:2",
    "before_metrics:2",
    "before_test:2",
    "before_test_metrics:2",
]


def test_a_kill_at_any_named_instant_resumes_to_the_uninterrupted_run(
    tiny_recipe, isolated, monkeypatch
):
    cfg = load_recipe(tiny_recipe, ["train.epochs=2", "tracking.log_model=false"])
    reference, _ = _fit_with_fault(cfg, monkeypatch, None)
    _, ref_metrics, _ = tracking.get_run(reference)
    keys = ("eval_auc", "train_loss", "epoch_seconds")
    for point in KILL_POINTS:
        with pytest.raises(Killed):
            _fit_with_fault(cfg, monkeypatch, point)
        (run,) = tracking.search_runs(["tiny-kg"], "attributes.status = 'FAILED'")
        run_id = run.info.run_id
        tracking.update_run(run_id, tags={"killed_at": point}, status="KILLED")
        try:
            resumed_cfg, state = pipeline.resume_point(run_id)
        except RunError:  # killed before the first checkpoint: nothing to resume, refit
            assert point in ("after_train:1", "before_checkpoint:1"), point
            continue
        monkeypatch.setattr(loop_module, "fault_point", lambda *a: None)
        monkeypatch.setattr(pipeline, "fault_point", lambda *a: None)
        pipeline.fit(resumed_cfg, resume_run_id=run_id, resume_state=state, log=lambda _: None)
        _, metrics, _ = tracking.get_run(run_id)
        for key in ("test_auc", "test_acc", "best_epoch", "test_recall_at_10"):
            assert metrics[key] == pytest.approx(ref_metrics[key], abs=1e-9), (point, key)
        for key in keys:
            steps = [step for step, _ in tracking.metric_history(run_id, key)]
            assert sorted(steps) == [1, 2], (point, key, steps)  # each epoch exactly once
        for key in ("eval_auc", "train_loss"):
            assert [v for _, v in sorted(tracking.metric_history(run_id, key))] == pytest.approx(
                [v for _, v in sorted(tracking.metric_history(reference, key))], abs=1e-9
            ), point
        assert len(tracking.metric_history(run_id, "test_auc")) == 1, point
        tracking.update_run(run_id, tags={"checked": "true"}, status="FINISHED")


def test_a_real_sigkill_between_checkpoint_and_metrics_loses_no_step(tiny_recipe, isolated):
    env = {**os.environ, "DGLREC_FAULT": "before_metrics:2"}
    proc = subprocess.run(
        [*DGLREC, "fit", str(tiny_recipe), "--set", "tracking.log_model=false"],
        cwd=isolated,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run_id = re.search(r"MLflow run ([0-9a-f]{32})", proc.stderr).group(1)
    assert sorted(history(run_id, "eval_auc")) == [1]  # epoch 2 checkpointed, not logged
    resumed = dglrec("fit", "--resume", run_id, cwd=isolated)
    assert "resuming after epoch 2" in resumed.stderr
    for key in ("eval_auc", "train_loss", "epoch_seconds"):
        assert {s: len(v) for s, v in history(run_id, key).items()} == {1: 1, 2: 1, 3: 1}, key


def _signal_in(phase: str, signum: int, monkeypatch) -> list[float]:
    """Send ``signum`` to this process when ``phase`` begins; returns when it was sent."""
    sent: list[float] = []

    def send():
        sent.append(time.monotonic())
        os.kill(os.getpid(), signum)

    if phase == "training":
        real_train = CTRTrainer.train_epoch

        def train_epoch(self, epoch):
            if epoch == 2:
                send()
            return real_train(self, epoch)

        monkeypatch.setattr(CTRTrainer, "train_epoch", train_epoch)
    elif phase in ("eval", "test"):
        real_evaluate = CTRTrainer.evaluate

        def evaluate(self, split):
            if split == phase and not sent:
                send()
            return real_evaluate(self, split)

        monkeypatch.setattr(CTRTrainer, "evaluate", evaluate)
    else:
        real_ranking = ctr_module.evaluate_ranking

        def ranking(*args, **kwargs):
            send()
            return real_ranking(*args, **kwargs)

        monkeypatch.setattr(ctr_module, "evaluate_ranking", ranking)
    return sent


@pytest.mark.parametrize(
    "phase, signum",
    [
        ("training", signal.SIGTERM),
        ("eval", signal.SIGINT),
        ("test", signal.SIGTERM),
        ("ranking", signal.SIGINT),
        ("ranking", signal.SIGTERM),
    ],
)
def test_a_signal_stops_every_phase_within_two_seconds_and_marks_the_run_killed(
    tiny_recipe, isolated, monkeypatch, phase, signum
):
    cfg = load_recipe(tiny_recipe, ["tracking.log_model=false", "eval.ranking_users=2"])
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    sent = _signal_in(phase, signum, monkeypatch)
    with pytest.raises(RunInterrupted) as err:
        pipeline.fit(cfg, log=lambda _: None)
    stopped = time.monotonic()
    assert sent and stopped - sent[0] < 2.0
    run_id = err.value.run_id
    assert err.value.signal_name == signal.Signals(signum).name
    assert f"continue with `dglrec fit --resume {run_id}`" in str(err.value)
    assert tracking.run_status(run_id) == "KILLED"
    _, metrics, _ = tracking.get_run(run_id)
    assert not any(k.startswith("test_") for k in metrics)  # never FINISHED with a partial test
    # The handlers are given back as they were.
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_sigterm_on_a_plain_fit_prints_the_resume_command(tiny_recipe, isolated):
    tiny_recipe.write_text(tiny_recipe.read_text().replace("epochs = 3", "epochs = 50"))
    proc = subprocess.Popen(
        [*DGLREC, "fit", str(tiny_recipe)],
        cwd=isolated,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_id = None
    for line in proc.stderr:
        if m := re.search(r"MLflow run ([0-9a-f]{32})", line):
            run_id = m.group(1)
        if re.match(r"^epoch +1 ", line):
            break
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert f"continue with `dglrec fit --resume {run_id}`" in stderr and "RUN_ID" not in stderr
    assert "Traceback" not in stderr
    assert tracking.run_status(run_id) == "KILLED"


def test_resume_of_a_finished_or_unknown_run_says_so(tiny_recipe, isolated):
    cfg = load_recipe(tiny_recipe, ["train.epochs=1", "tracking.log_model=false"])
    run_id, _ = pipeline.fit(cfg, log=lambda _: None)
    with pytest.raises(RunError) as err:
        pipeline.resume_point(run_id)
    assert str(err.value).startswith(
        f"run {run_id} already finished after epoch 1; nothing to resume"
    )
    # Training it longer is allowed, and adds its test point at a new step.
    longer, state = pipeline.resume_point(run_id, ["train.epochs=2"])
    pipeline.fit(longer, resume_run_id=run_id, resume_state=state, log=lambda _: None)
    assert [step for step, _ in tracking.metric_history(run_id, "test_auc")] == [1, 2]
    assert sorted(history(run_id, "eval_auc")) == [1, 2]
    unknown = dglrec("fit", "--resume", "f" * 32, cwd=isolated, check=False)
    assert unknown.returncode == 2
    assert _one_error_line(unknown).startswith(f"error: no MLflow run '{'f' * 32}' in sqlite:///")


# --------------------------------------------------------------------------- 5. environment


def test_an_unreachable_tracking_server_fails_in_seconds_with_one_line(tiny_recipe, isolated):
    uri = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    began = time.monotonic()
    proc = subprocess.run(
        [*DGLREC, "fit", str(tiny_recipe)],
        cwd=isolated,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    elapsed = time.monotonic() - began
    assert proc.returncode == 2
    line = _one_error_line(proc)
    assert line.startswith(f"error: MLFLOW_TRACKING_URI={uri}: no MLflow tracking server answers")
    assert "building" not in proc.stderr  # checked before any data is built
    assert elapsed < 60  # includes starting Python with torch, DGL and MLflow on a busy CI core


def test_the_server_probe_itself_takes_seconds(monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    began = time.monotonic()
    with pytest.raises(RunError, match="no MLflow tracking server answers there"):
        tracking.configure()
    assert time.monotonic() - began < 10


def test_ui_on_a_busy_port_exits_non_zero(isolated):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = dglrec("ui", "--port", port, cwd=isolated, check=False)
    assert proc.returncode == 2
    assert _one_error_line(proc).startswith(f"error: --host 127.0.0.1 --port {port}: cannot listen")


def test_a_users_sqlite_store_keeps_artifacts_beside_the_database(
    tiny_recipe, isolated, monkeypatch
):
    store = isolated / "elsewhere" / "runs.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    lines: list[str] = []
    cfg = load_recipe(tiny_recipe, ["train.epochs=1", "tracking.log_model=false"])
    run_id, _ = pipeline.fit(cfg, log=lines.append)
    artifacts = store.parent / "artifacts"
    (first,) = [line for line in lines if line.startswith("MLflow run")]
    assert f"artifacts {artifacts.as_uri()}/" in first
    assert [p for p in artifacts.rglob("last.pt") if run_id in str(p)]
    assert not (isolated / "mlruns").exists()
    assert np.isfinite(tracking.get_run(run_id)[1]["test_auc"])


def test_a_missing_processed_entry_is_a_data_source_error(tmp_path):
    with pytest.raises(DataSourceError, match="no processed dataset here"):
        KGRecDataset.load(tmp_path)
    assert kg_ctr.BUILDER_VERSION >= 2  # entries without checksums are rebuilt, not trusted
