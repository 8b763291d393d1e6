"""`dglrec ui` end to end: the MLflow UI on loopback, two runs compared in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dglrec.cli import main
from dglrec.runs import tracking
from dglrec.runs.server import server_command, ui_command
from tests.conftest import free_port, wait_for_http

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Chromium as this machine runs it: no sandbox (root), and no calls home (closed network).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--window-size=1600,1100",
)


def test_ui_command_uses_the_project_store(isolated, monkeypatch):
    command = ui_command("127.0.0.1", 5001)
    store = (isolated / "mlruns" / "mlflow.db").resolve()
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{store}"
    assert command[-4:] == ["--host", "127.0.0.1", "--port", "5001"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert ui_command() == "http://tracking.example:5000"  # nothing to start: open the server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://u@db/mlflow")
    command = ui_command()
    assert command[command.index("--backend-store-uri") + 1] == "postgresql://u@db/mlflow"


def test_server_command_proxies_artifacts(isolated):
    command = server_command("postgresql://u@db/mlflow", "s3://bucket/mlflow", "0.0.0.0", 5002, 4)
    assert "--serve-artifacts" in command
    assert command[command.index("--artifacts-destination") + 1] == "s3://bucket/mlflow"
    assert command[command.index("--workers") + 1] == "4"


@pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)",
)
def test_compare_view_shows_both_runs_and_their_test_auc(tiny_recipe, isolated, tmp_path):
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    text = tiny_recipe.read_text()
    pop_recipe = isolated / "pop.toml"
    pop_recipe.write_text(text[: text.index("[model]")] + '[model]\nname = "pop"\n')
    runs = {}
    for recipe in (tiny_recipe, pop_recipe):
        result = CliRunner().invoke(
            main,
            ["fit", str(recipe), "--set", "train.epochs=1", "--set", "tracking.log_model=false"],
        )
        assert result.exit_code == 0, result.output
        run_id = result.output.split("run ")[-1].split(":")[0]
        _, metrics, tags = tracking.get_run(run_id)
        runs[run_id] = (tags["mlflow.runName"], metrics["test_auc"])
    assert sorted(name for name, _ in runs.values()) == ["kgcn-s3", "pop-s3"]
    experiment_id = tracking.search_runs(run_ids=list(runs))[0].info.experiment_id

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    dglrec = Path(sys.executable).with_name("dglrec")
    server = subprocess.Popen(
        [str(dglrec), "ui", "--port", str(port)],
        cwd=isolated,
        env=env,
        start_new_session=True,  # the UI's workers die with it
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = None
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", server)
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        driver.get(
            f"http://127.0.0.1:{port}/#/compare-runs?runs={json.dumps(list(runs))}"
            f"&experiments={json.dumps([experiment_id])}"
        )

        def body() -> str:
            return driver.find_element("tag name", "body").text

        def both_runs_shown(_) -> bool:
            return all(name in body() for name, _ in runs.values())

        # The UI's JavaScript bundle is large: on a loaded 2-core machine the first render
        # can take minutes. One reload if the first load stalls.
        try:
            WebDriverWait(driver, 150).until(both_runs_shown)
        except TimeoutException:
            driver.refresh()
            WebDriverWait(driver, 150).until(
                both_runs_shown, message=f"compare view never listed both runs: {body()[:500]!r}"
            )

        # The metrics table renders only the rows in view (names and values in separate
        # virtualised lists): scroll every scrollable element step by step until the
        # test_auc row and both runs' values are rendered together.
        def shown(auc: float) -> set[str]:  # the UI rounds to 3 decimals
            return {f"{round(auc, 3):g}", f"{auc:.3f}".rstrip("0").rstrip(".")}

        def auc_row_visible() -> bool:
            text = body()
            named = driver.find_elements("xpath", "//*[normalize-space(text())='test_auc']")
            return bool(named) and all(shown(auc) & set(text.split()) for _, auc in runs.values())

        visible = False
        for _ in range(3):  # rendering may lag behind scrolling on a loaded machine
            for offset in range(0, 40_000, 100):
                driver.execute_script(
                    "document.querySelectorAll('*').forEach(e => {"
                    f" if (e.scrollHeight > e.clientHeight + 50) e.scrollTop = {offset}; }});"
                )
                if auc_row_visible():
                    visible = True
                    break
            if visible:
                break
            time.sleep(2)
        assert visible, "the compare view never showed test_auc with both runs' values"
        shots = Path(os.environ.get("DGLREC_SCREENSHOT_DIR") or tmp_path)
        shots.mkdir(parents=True, exist_ok=True)
        screenshot = shots / "mlflow_compare_view.png"
        assert driver.save_screenshot(str(screenshot))
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        print(f"screenshot: {screenshot}")
    finally:
        if driver is not None:
            driver.quit()
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)
