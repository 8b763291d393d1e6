"""The dglrec command line, end to end, in subprocesses as a user runs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from dglrec.cli import main
from dglrec.runs import tracking

DGLREC = [sys.executable, "-m", "dglrec.cli"]


def dglrec(
    *args, cwd: Path, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [*DGLREC, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"dglrec {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def run_id_of(stdout: str) -> str:
    match = re.search(r"^run ([0-9a-f]{32}):", stdout, re.M)
    assert match, stdout
    return match.group(1)


def history(run_id: str, key: str) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for step, value in tracking.metric_history(run_id, key):
        out.setdefault(step, []).append(value)
    return out


def test_fit_logs_a_complete_run_and_evaluate_matches(tiny_recipe, isolated):
    proc = dglrec("fit", tiny_recipe, "--set", "train.epochs=3", cwd=isolated)
    run_id = run_id_of(proc.stdout)
    params, metrics, tags = tracking.get_run(run_id)
    assert params["model.name"] == "kgcn" and params["train.epochs"] == "3"
    assert params["sampler.kind"] == "uniform" and params["seed"] == "3"
    for key in ("test_auc", "test_acc", "test_f1", "best_epoch", "data_users"):
        assert key in metrics, key
    assert sorted(history(run_id, "eval_auc")) == [1, 2, 3]
    assert sorted(history(run_id, "train_loss")) == [1, 2, 3]
    assert sorted(history(run_id, "epoch_seconds")) == [1, 2, 3]
    assert tags["model"] == "kgcn" and tags["dataset"] == "tiny-kg"
    assert "split 0.6/0.2/0.2; seed 3" in tags["protocol"]
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", tags["git_commit"])
    assert len(tags["data_sha256.kg.txt"]) == 64
    assert tags["mlflow.runName"] == "kgcn-s3"

    assert tracking.download_artifact(run_id, "checkpoints/last.pt").is_file()
    assert tracking.download_artifact(run_id, "checkpoints/best.pt").is_file()
    recipe = tracking.download_artifact(run_id, "recipe.toml").read_text()
    assert "epochs = 3" in recipe
    model = tracking.load_model(run_id)
    assert type(model).__name__ == "KGCN" and model.n_layers == 2

    proc = dglrec("evaluate", run_id, cwd=isolated)
    assert proc.stdout.count(" ok") == 3, proc.stdout


def test_bad_recipe_key_is_one_line_without_traceback(tmp_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text("[model]\nname = 'kgcn'\nn_neighbours = 8\n")
    proc = dglrec("fit", recipe, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert (
        lines[0].startswith("error: ")
        and "model.n_neighbours" in lines[0]
        and "bad.toml" in lines[0]
    )
    assert "Traceback" not in proc.stderr


def test_unknown_run_is_one_line(isolated):
    proc = dglrec("evaluate", "0" * 32, cwd=isolated, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: no MLflow run") and "Traceback" not in proc.stderr


def _start_fit(recipe: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*DGLREC, "fit", str(recipe)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )


def _wait_for(proc: subprocess.Popen, pattern: str, timeout: float = 300) -> tuple[str, list[str]]:
    """Read stderr until a line matches; return the run id announced before it and the lines."""
    deadline = time.time() + timeout
    lines, run_id = [], None
    for line in proc.stderr:
        lines.append(line)
        if m := re.search(r"MLflow run ([0-9a-f]{32})", line):
            run_id = m.group(1)
        if re.search(pattern, line):
            return run_id, lines
        assert time.time() < deadline, "".join(lines)
    raise AssertionError("fit ended before the expected line:\n" + "".join(lines))


def test_killed_fit_resumes_from_last_checkpoint_and_matches(tiny_recipe, isolated):
    text = tiny_recipe.read_text().replace("epochs = 3", "epochs = 6")
    tiny_recipe.write_text(text)
    reference = run_id_of(
        dglrec("fit", tiny_recipe, "--set", "tracking.log_model=false", cwd=isolated).stdout
    )

    proc = _start_fit(tiny_recipe, isolated)
    run_id, _ = _wait_for(proc, r"^epoch +2 ")
    proc.send_signal(signal.SIGKILL)  # no chance to clean up, as with a node failure
    proc.wait()
    assert run_id is not None

    resumed = dglrec("fit", "--resume", run_id, cwd=isolated)
    done = int(re.search(r"resuming after epoch (\d+)", resumed.stderr).group(1))
    assert 2 <= done < 6
    assert run_id_of(resumed.stdout) == run_id

    _, ref_metrics, _ = tracking.get_run(reference)
    _, metrics, _ = tracking.get_run(run_id)
    for key in ("test_auc", "test_acc", "test_f1", "best_epoch"):
        assert metrics[key] == pytest.approx(ref_metrics[key], abs=1e-9), key
    ref_curve = history(reference, "eval_auc")
    curve = history(run_id, "eval_auc")
    assert sorted(curve) == list(range(1, 7))
    for step, values in curve.items():
        # Exactly one point per epoch, equal to the uninterrupted run's.
        assert values == pytest.approx([ref_curve[step][0]], abs=1e-9), step


def test_ctrl_c_marks_run_killed_and_tells_how_to_resume(tiny_recipe, isolated):
    tiny_recipe.write_text(tiny_recipe.read_text().replace("epochs = 3", "epochs = 50"))
    proc = _start_fit(tiny_recipe, isolated)
    run_id, _ = _wait_for(proc, r"^epoch +1 ")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "dglrec fit --resume" in stderr and "Traceback" not in stderr
    _, _, tags = tracking.get_run(run_id)
    from mlflow.tracking import MlflowClient

    assert MlflowClient().get_run(run_id).info.status == "KILLED"


def test_resume_refuses_a_different_recipe(tiny_recipe, isolated):
    run_id = run_id_of(
        dglrec(
            "fit",
            tiny_recipe,
            "--set",
            "train.epochs=1",
            "--set",
            "tracking.log_model=false",
            cwd=isolated,
        ).stdout
    )
    proc = dglrec(
        "fit", tiny_recipe, "--resume", run_id, "--set", "train.lr=0.5", cwd=isolated, check=False
    )
    assert proc.returncode == 2 and "train.lr" in proc.stderr


@pytest.mark.e2e
def test_kgcn_recipe_on_real_lastfm(lastfm_raw, isolated, monkeypatch):
    monkeypatch.setenv("DGLREC_RAW_DIR", str(lastfm_raw.parent))
    recipe = Path(__file__).parents[1] / "recipes" / "kgcn.toml"
    # Full ranking of a KG model scores 7.2M user-conditioned pairs (minutes on 2 cores):
    # it is checked on BPR-MF below.
    proc = dglrec(
        "fit", recipe, "--set", "train.epochs=3", "--set", "eval.ranking_ks=[]", cwd=isolated
    )
    assert "building lastfm-kg" in proc.stderr
    run_id = run_id_of(proc.stdout)
    _, metrics, tags = tracking.get_run(run_id)
    assert metrics["data_users"] == 1872 and metrics["data_labelled_pairs"] == 42346
    assert (
        tags["data_sha256.kg.txt"]
        == "f62bbc8f717c9f68e66dff6faeaa71025092acc11a0f1b4878b953eb05f946a9"
    )
    # Three epochs at lr 5e-4 are far from converged, but well above chance.
    assert metrics["test_auc"] > 0.6


@pytest.mark.e2e
def test_full_ranking_on_real_lastfm(lastfm_raw, isolated, monkeypatch):
    monkeypatch.setenv("DGLREC_RAW_DIR", str(lastfm_raw.parent))
    recipe = Path(__file__).parents[1] / "recipes" / "bprmf.toml"
    proc = dglrec("fit", recipe, "--set", "train.epochs=3", cwd=isolated)
    assert re.search(r"full ranking of \d+ test users", proc.stderr)
    _, metrics, _ = tracking.get_run(run_id_of(proc.stdout))
    assert metrics["test_ranking_users"] > 1000
    for k in (5, 10, 20, 50):
        assert 0 < metrics[f"test_recall_at_{k}"] <= 1
    assert metrics["test_recall_at_50"] > metrics["test_recall_at_5"]
    assert 0 < metrics["test_coverage_at_10"] <= 1 and metrics["test_popularity_at_10"] > 0


def test_fit_seeds_prints_each_seed_and_the_mean(tiny_recipe, isolated):
    proc = dglrec("fit", tiny_recipe, "--seeds", "2", "--set", "train.epochs=1", cwd=isolated)
    assert re.search(r"^seed 3: run [0-9a-f]{32}, test auc", proc.stdout, re.M), proc.stdout
    assert re.search(r"^seed 4: run [0-9a-f]{32}, test auc", proc.stdout, re.M), proc.stdout
    assert re.search(
        r"^parent run [0-9a-f]{32}: 2 seeds, test auc \d\.\d{4} ± \d\.\d{4}", proc.stdout, re.M
    )
    bad = dglrec("fit", tiny_recipe, "--seeds", "two", cwd=isolated, check=False)
    assert bad.returncode == 2 and "--seeds 'two'" in bad.stderr and "Traceback" not in bad.stderr


def test_every_command_parses_its_options_without_warnings(tmp_path):
    """No option is declared twice (click warns on every use); `jobs --batch` still works."""
    runner = CliRunner()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a duplicated parameter would raise here
        for command in main.commands:
            result = runner.invoke(main, [command, "--help"])
            assert result.exit_code == 0, (command, result.output, result.exception)
        assert "--group, --batch" in runner.invoke(main, ["jobs", "--help"]).output
        for name in ("--group", "--batch"):
            result = runner.invoke(main, ["jobs", name, "g1", "--jobs-dir", str(tmp_path / "no")])
            assert result.output.strip() == f"no submitted groups under {tmp_path / 'no'}/"
