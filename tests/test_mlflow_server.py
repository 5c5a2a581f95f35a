"""A team's MLflow server: a study's every artifact goes up through the server, where a teammate reads it.

`mlflow server --artifacts-destination DIR` is started by the test; a small study records to it with
`--tracking-uri http://…`; then the submitting side's storage is deleted, and every run's artifacts must
still download through the server.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from subprocs import REPO, assert_succeeds, describe, free_port, start_logged

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
SERVER_START_TIMEOUT_S = 120


@pytest.fixture
def server(tmp_path):
    port, log = free_port(), tmp_path / "mlflow-server.log"
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    cmd = [mlflow, "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
           str(tmp_path / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = start_logged(cmd, log, cwd=tmp_path, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    try:
        while True:
            assert proc.poll() is None, describe(cmd, log, f"exited with status {proc.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, describe(cmd, log, "did not answer /health")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def test_every_artifact_is_read_back_through_the_server(server, tmp_path, cifar10_dir, data_cache):
    from mlflow.tracking import MlflowClient

    storage = tmp_path / "submitter-results"
    done = assert_succeeds(
        [sys.executable, "-m", "study.run", "--space", "demo", "--variants", "lars_nowarmup", "--num-samples", "1",
         "--confirm", "1", "--seeds", "1", "--set", "epochs=1", "--set", "limit=600", "--set", "val_size=100",
         "--set", "test_limit=200", "--set", "batch_size=100", "--data-dir", cifar10_dir, "--storage", str(storage),
         "--tracking-uri", server], tmp_path / "study.log", cwd=REPO, env={**os.environ, "LAYERWISE_CACHE": data_cache},
        timeout=600)
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name("demo")
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), experiment.artifact_location
    assert f"open {server}/#/experiments/{experiment.experiment_id}" in done.output
    assert "mlflow ui --backend-store-uri" not in done.output

    shutil.rmtree(storage)  # nothing of the study is left on the submitting side
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3  # the study, its search trial, its confirmed trial

    def files(run_id: str, path: str | None = None) -> list[str]:
        return [f for a in client.list_artifacts(run_id, path) for f in (files(run_id, a.path) if a.is_dir else [a.path])]

    for run in runs:
        names = files(run.info.run_id)
        expected = "report/table.md" if "trial_id" not in run.data.tags else "telemetry.parquet"
        assert expected in names, (run.info.run_name, names)
        for name in names:
            local = Path(client.download_artifacts(run.info.run_id, name, str(tmp_path / "downloads" / run.info.run_id)))
            assert local.is_file() and local.stat().st_size > 0, (run.info.run_name, name)
