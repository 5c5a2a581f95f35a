"""The MLflow UI, in a real headless browser, over a study's store.

Builds a real MLflow sqlite store (a study's parent run, its nested trial runs and the report artifacts
under `report/`), serves it with `mlflow server`, and drives headless Chromium with Selenium: the
experiment, opened through the link a study prints, must land on its runs (not MLflow 3's GenAI overview) and
list the parent run and, once expanded, its trial runs; the parent run's page must show the headline
table as its description; its artifacts
page must list `report/` and, expanded, the report's tables, parquet and figures (written by
`reports.build_report` from the known-values store of `known_store.py`), and preview a PNG figure.

Needs Chromium + chromedriver (`apt-get install chromium chromium-driver`) and selenium
(`pip install selenium`); skipped, saying which is missing, when they are not there.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from study.mlflow_store import MODEL_TRAINING_VIEW, experiment_page
from subprocs import describe, free_port, start_logged

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SERVER_START_TIMEOUT_S = 120  # generous: `mlflow server` imports a lot, and CI machines may be busy
UI_TIMEOUT_S = 60


def _study_store(tmp_path: Path) -> tuple[str, str, str, list[str], list[str]]:
    """The known-values study store of test_reports, with its real report logged by `reports.build_report`.

    Returns (tracking_uri, experiment_name, parent_run_name, trial_run_names, report_artifact_names), the
    artifact names being paths relative to `report/`.
    """
    from mlflow.tracking import MlflowClient

    from reports.build import build_report
    from known_store import build_store

    tracking_uri, parent_id = build_store(tmp_path)
    report = build_report(tracking_uri, "known", tmp_path / "report", formats=("md", "csv", "html"))
    assert report.logged_to == parent_id
    client = MlflowClient(tracking_uri)
    trials = client.search_runs([client.get_run(parent_id).info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    artifacts = ["table.md", "table.html", "trials.parquet", "figures/trust_ratio_vs_step.png",
                 "figures/accuracy_vs_epoch_clf_cifar10_bs512.png"]
    return tracking_uri, "known", client.get_run(parent_id).info.run_name, sorted(r.info.run_name for r in trials), artifacts


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium WebDriver; skips, saying what is missing and how to install it, without one."""
    missing = []
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip install selenium, or the project's [test] extra)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        missing.append("chromium and chromedriver on PATH (apt-get install chromium chromium-driver)")
    if missing:
        pytest.skip("the MLflow UI browser test needs " + "; ".join(missing))

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1600,1200", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    log = tmp_path / "chromedriver.log"
    try:
        driver = webdriver.Chrome(service=Service(chromedriver, log_output=str(log)), options=options)
    except Exception as err:  # say why the browser did not start, from its own log
        pytest.fail(describe([chromedriver], log, f"could not start Chromium ({type(err).__name__}: {err})"))
    driver.set_page_load_timeout(UI_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever of it is left."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:  # the leader is gone; make sure no worker of its group outlives it
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`_study_store` served by `mlflow server` on a free local port."""
    from mlflow.tracking import MlflowClient

    tracking_uri, experiment_name, parent_name, trial_names, artifacts = _study_store(tmp_path)
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None, f"the store has no experiment {experiment_name!r}"
    parents = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{parent_name}'")
    assert len(parents) == 1, f"expected one run named {parent_name!r}, found {len(parents)}"

    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "server", "--backend-store-uri", tracking_uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # No job execution: it would start several huey consumers (slow, and they ignore SIGTERM) and a /dev/shm dir.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "true"}
    log = tmp_path / "mlflow-server.log"
    proc = start_logged(cmd, log, cwd=tmp_path, start_new_session=True, env=env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(describe(cmd, log, f"exited with status {proc.returncode}"))
            try:
                with urllib.request.urlopen(f"{base_url}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(describe(cmd, log, f"did not answer /health in {SERVER_START_TIMEOUT_S} s"))
            time.sleep(0.5)
        yield {"base_url": base_url, "experiment_id": experiment.experiment_id,
               "parent_run_id": parents[0].info.run_id, "parent_run_name": parent_name,
               "trial_run_names": trial_names, "report_artifacts": artifacts}
    finally:
        _stop(proc)


def _wait(driver, condition: Callable[[Any], Any], what: str, timeout: float = UI_TIMEOUT_S) -> Any:
    """WebDriverWait(condition), failing with `what` and the end of the page's visible text."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25,
                             ignored_exceptions=(StaleElementReferenceException,)).until(condition)
    except TimeoutException:
        pytest.fail(f"timed out after {timeout}s waiting for {what} at {driver.current_url}; the page shows:\n"
                    f"{_page_text(driver)[-3000:]}")


def _page_text(driver) -> str:
    from selenium.webdriver.common.by import By

    try:
        return driver.find_element(By.TAG_NAME, "body").text
    except Exception:  # noqa: BLE001 - only used to describe the page
        return ""


def _click(driver, element) -> None:
    from selenium.common.exceptions import ElementClickInterceptedException

    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    try:
        element.click()
    except ElementClickInterceptedException:  # something (a tooltip, a toast) over it: click it directly
        driver.execute_script("arguments[0].click();", element)


def _tree_node(driver, name: str):
    """The displayed node named `name` of the artifact browser's tree, or None."""
    from selenium.webdriver.common.by import By

    for node in driver.find_elements(By.CSS_SELECTOR, '[data-testid="artifact-tree-node"]'):
        if node.get_attribute("artifact-name") == name and node.is_displayed() and node.text.strip() == name:
            return node
    return None


def test_mlflow_ui_lists_study_runs_and_report(browser, mlflow_server, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    srv = mlflow_server
    base, exp_id, parent_id = srv["base_url"], srv["experiment_id"], srv["parent_run_id"]
    parent_name, trial_names = srv["parent_run_name"], srv["trial_run_names"]
    driver = browser
    try:
        # The experiment through the link a study prints: MLflow 3.17 opens an experiment in its GenAI overview
        # unless the link names the view; a study's link lands on its runs table, the parent run in it ...
        driver.get(experiment_page(base, exp_id))
        _wait(driver, lambda d: parent_name in _page_text(d), f"the parent run {parent_name!r} in the runs table")
        assert f"/experiments/{exp_id}/runs" in driver.current_url, driver.current_url
        # ... with its trials nested under it, collapsed: expand them with the "+" in the parent's name cell.
        if not all(name in _page_text(driver) for name in trial_names):
            expander = _wait(driver, lambda d: d.find_element(
                By.XPATH, f"//a[contains(@href, '/runs/{parent_id}')]"
                          "/ancestor::div[contains(@class, 'ag-cell')][1]//button"),
                "the expander of the parent run's nested runs")
            _click(driver, expander)
        _wait(driver, lambda d: all(name in _page_text(d) for name in trial_names),
              f"the trial runs {trial_names} under the parent run")
        text = _page_text(driver)
        for name in [parent_name, *trial_names]:
            assert name in text, f"run {name!r} is not listed on the experiment page"
        for name in trial_names:  # each trial is a row linking to its own run page
            assert driver.find_elements(By.XPATH, f"//a[contains(@href, '/runs/')][normalize-space()='{name}']"), \
                f"no link to the run page of trial {name!r}"

        # The parent run's page carries the answer (the headline table) as its description ...
        driver.get(f"{base}/#/experiments/{exp_id}/runs/{parent_id}?{MODEL_TRAINING_VIEW}")
        # (the UI shows its start, then "Show more")
        _wait(driver, lambda d: "Description" in _page_text(d) and "Test top-1, best epoch" in _page_text(d)
              and "LARS + warm-up 73.00 ± 4.97 (n=3)" in _page_text(d), "the headline table in the parent run's description")

        # ... and its artifacts: report/ and, expanded, the report's files and figures.
        driver.get(f"{base}/#/experiments/{exp_id}/runs/{parent_id}/artifacts?{MODEL_TRAINING_VIEW}")
        report = _wait(driver, lambda d: _tree_node(d, "report"), "the `report` folder in the artifact browser")
        _click(driver, report)
        expanded = {"report"}
        for path in srv["report_artifacts"]:
            *folders, leaf = path.split("/")
            for folder in folders:
                node = _wait(driver, lambda d, f=folder: _tree_node(d, f), f"the folder `report/{path}`'s {folder!r}")
                if folder not in expanded:
                    _click(driver, node)
                    expanded.add(folder)
            _wait(driver, lambda d, n=leaf: _tree_node(d, n), f"`report/{path}` in the artifact browser")
        text = _page_text(driver)
        for name in {"report", *(part for path in srv["report_artifacts"] for part in path.split("/"))}:
            assert name in text.splitlines(), f"{name!r} is not listed in the parent run's artifacts"

        # A figure opens in the preview pane: the server really serves the artifact's bytes.
        for path in srv["report_artifacts"]:
            if path.endswith(".png"):
                _click(driver, _tree_node(driver, path.split("/")[-1]))
                _wait(driver, lambda d: d.execute_script(
                    "return [...document.querySelectorAll('.mlflow-artifact-right img')]"
                    ".some(i => i.alt !== 'Preview icon.' && i.complete && i.naturalWidth > 0);"),
                    f"the preview of `report/{path}`")
    except BaseException:
        shot = tmp_path / "mlflow-ui-failure.png"
        try:
            driver.save_screenshot(str(shot))
            (tmp_path / "mlflow-ui-failure.html").write_text(driver.page_source)
            print(f"screenshot of the failing page: {shot} (HTML beside it)")
        except Exception as exc:  # noqa: BLE001 - the original failure matters more
            print(f"could not save a screenshot: {exc}")
        print(f"mlflow server log: {tmp_path / 'mlflow-server.log'}")
        raise
