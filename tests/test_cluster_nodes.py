"""Studies on a Ray cluster whose worker node has its own disk, with records in object storage.

The cluster is two `ray start`s on this machine: a head with no CPUs (so every trial runs elsewhere) and a
worker node started inside `unshare --mount`, where `/tmp` is a fresh tmpfs (its own disk) and the
project's packages and the data folder are hidden behind empty folders — it has the Python environment
and nothing else, wherever the checkout lives (under /tmp too: the environment is carried into the new
/tmp; see `NODE_SCRIPT`). The study (`python -m study.run --address …`, run on the head's side) must ship
the code (`py_modules`) and the data (Ray's object store), and keep its records in S3: a real
S3-compatible server (`moto_server`) on 127.0.0.1, reached through the standard `AWS_*` variables. Needs
root for `unshare`.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest

from clusters import CLUSTER_MARKER, stop_cluster
from s3server import moto_server
from study.optuna_store import JOURNAL_FILE, TRIAL_NAME_ATTR
from subprocs import REPO, assert_succeeds, describe, free_port, run_logged, start_logged, why_no_unshare

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
BIN = Path(sys.executable).parent
PACKAGES = ("optim", "trainables", "search_spaces", "study", "reports")
BUCKET = "studies"
START_TIMEOUT_S = 120
TINY = ["--space", "demo", "--variants", "lars_warmup,tvlars", "--num-samples", "2", "--confirm", "0",
        "--set", "epochs=2", "--set", "limit=600", "--set", "val_size=100", "--set", "test_limit=200",
        "--set", "batch_size=100", "--set", "grace_period=1", "--set", "eval_every=1", "--set", "max_concurrent=2"]


def _wait_for(what: str, check, log: Path, cmd: list[str], timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, describe(cmd, log, f"did not get {what} within {timeout:.0f} s")
        time.sleep(1)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """`moto_server` with an empty bucket; the environment that reaches it, and a boto3 client."""
    import boto3

    with moto_server(tmp_path_factory.mktemp("s3"), (BUCKET,)) as env:
        yield env, boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                                aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3, cifar10_dir):
    """A head without CPUs and a worker node with its own /tmp and none of the project's code or data."""
    why = why_no_unshare()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("cluster")
    port, dashboard = free_port(), free_port()
    marker = uuid.uuid4().hex
    env = {**os.environ, **s3[0], "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "", "PATH": f"{BIN}:{os.environ['PATH']}",
           CLUSTER_MARKER: marker}
    ray_cli = str(BIN / "ray")
    stage = tmp / "node-tmp"  # where the node's /tmp is built before it is moved over /tmp
    stage.mkdir()
    hidden = [*(REPO / p for p in PACKAGES), cifar10_dir, tmp_path_factory.getbasetemp()]
    node_env = {k: v for k, v in env.items() if k != "RAY_TMPDIR"} | {"TMPDIR": "/tmp"}  # its session on its disk
    python, mounts = _node_python()
    worker_cmd = ["unshare", "--mount", "--propagation", "private", "bash", "-c", NODE_SCRIPT, "node", str(stage),
                  f"127.0.0.1:{port}", python, *mounts, "--", *_both(hidden)]
    try:
        assert_succeeds([ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=0",
                         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                         "--disable-usage-stats"], tmp / "head.log", env=env, timeout=180)
        worker = start_logged(worker_cmd, tmp / "worker-node.log", env=node_env, start_new_session=True)
        nodes = lambda: _nodes(ray_cli, port, env)  # noqa: E731
        _wait_for("a second node", lambda: worker.poll() is None and len(nodes()) == 2, tmp / "worker-node.log",
                  worker_cmd)
        (worker_node,) = [n["node_id"] for n in nodes() if not n["is_head_node"]]
        yield {"address": f"127.0.0.1:{port}", "env": env, "worker_node": worker_node, "tmp": tmp}
    finally:
        stop_cluster(marker, port)


# The worker node's mount namespace. Arguments: the staging folder, the head's address, the Python that runs
# `ray start`, pairs (a folder the node keeps, the path under /tmp where it sees it), `--`, the paths it must not
# see. A fresh tmpfs is mounted on the staging folder, the kept folders are bound into it, and it is then moved
# over /tmp, so the rest of /tmp (the head's Ray session, the test's folders, a checkout there) is gone; the paths
# to hide that still exist are covered by an empty folder. Paths arrive as arguments, never spliced into the script.
NODE_SCRIPT = r"""set -euo pipefail
stage=$1 address=$2 python=$3; shift 3
mount -t tmpfs tmpfs "$stage"
while [ "$1" != -- ]; do mkdir -p "$stage/${2#/tmp/}"; mount --bind "$1" "$stage/${2#/tmp/}"; shift 2; done; shift
mount --move "$stage" /tmp
empty=$(mktemp -d /tmp/empty.XXXXXX)
for path in "$@"; do if [ -e "$path" ]; then mount --bind "$empty" "$path"; fi; done
cd /tmp
exec "$python" -m ray.scripts.scripts start --address="$address" --num-cpus=8 --block --disable-usage-stats
"""
# Where the node sees its Python environment when the environment's own path would need shell quoting (Ray 2.60
# starts a worker with a runtime environment — every trial here, through `py_modules` — by `bash -c "exec
# <python> …"` with the interpreter's path unquoted, ray/_private/runtime_env/context.py `exec_worker`: a path
# with a space never starts one).
NODE_ENV_ALIAS = Path("/tmp/node-python-env")


def _both(paths) -> list[str]:
    """Each path as given and resolved (a symlink's own path and its target's), without repeats."""
    return list(dict.fromkeys(str(q) for p in paths for q in (Path(p).absolute(), Path(p).resolve())))


def _node_python() -> tuple[str, list[str]]:
    """The Python that starts the node's Ray, and the (folder, where the node sees it) pairs for NODE_SCRIPT:
    what lies under /tmp of the virtual environment and the interpreter it links to (e.g. a uv-managed Python),
    as given and resolved, outermost only so none is bound twice, each at its own path; and the environment at
    NODE_ENV_ALIAS if its path would need quoting."""
    env_dir = BIN.parent  # the virtual environment (or the interpreter's own installation)
    env_dirs = [env_dir, sys.prefix, sys.base_prefix, Path(sys.executable).resolve().parents[1]]
    under_tmp = sorted({Path(p) for p in _both(env_dirs) if Path(p).is_relative_to("/tmp") and Path(p) != Path("/tmp")},
                       key=lambda p: len(p.parts))
    keeps: list[Path] = []
    for path in under_tmp:
        if not any(path.is_relative_to(k) for k in keeps):
            keeps.append(path)
    mounts = [str(p) for k in keeps for p in (k, k)]
    if shlex.quote(str(env_dir)) == str(env_dir):
        return sys.executable, mounts
    return str(NODE_ENV_ALIAS / "bin" / Path(sys.executable).name), [*mounts, str(env_dir), str(NODE_ENV_ALIAS)]


def _nodes(ray_cli: str, port: int, env: dict) -> list[dict]:
    """The cluster's live nodes, from Ray's state API."""
    done = subprocess.run([ray_cli, "list", "nodes", "--address", f"127.0.0.1:{port}", "--format", "json",
                           "--filter", "state=ALIVE"], capture_output=True, text=True, env=env, timeout=60)
    try:
        return json.loads(done.stdout) if done.returncode == 0 else []
    except ValueError:
        return []


def _study(cluster, *args: str, cwd: Path, log: str, timeout: float = 600):
    return run_logged([sys.executable, "-m", "study.run", "--address", cluster["address"], *args], cluster["tmp"] / log,
                      cwd=cwd, env={**cluster["env"], "XDG_DATA_HOME": str(cluster["tmp"] / "data-home")},
                      timeout=timeout)


def test_trials_train_on_a_node_without_the_code_or_data_and_record_to_s3(cluster, s3, cifar10_dir):
    from mlflow.tracking import MlflowClient

    _, bucket = s3
    storage = f"s3://{BUCKET}/team"
    first = cluster["tmp"] / "submitter"
    first.mkdir()
    done = _study(cluster, *TINY, "--data-dir", cifar10_dir, "--storage", storage, cwd=first, log="study.log")
    assert done.returncode == 0, done.explain()
    db = cluster["tmp"] / "data-home" / "layerwise-study" / "mlflow.db"
    assert f"sqlite:///{db}" in done.output  # the local MLflow store of a study in object storage, printed

    os.environ.update(s3[0])  # this process reads the MLflow artifacts in the bucket too
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("demo")
    assert experiment.artifact_location == f"{storage}/mlartifacts"
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if "trial_id" in r.data.tags]
    assert len(trials) == 4, [r.info.run_name for r in runs]
    for run in trials:
        assert run.data.tags["status"] in ("completed", "stopped_by_asha"), (run.info.run_name, run.data.tags)
        assert run.data.tags["ray_node_id"] == cluster["worker_node"]  # trained on the node without code or data
        assert "telemetry.parquet" in {a.path for a in client.list_artifacts(run.info.run_id)}
    keys = [o["Key"] for page in bucket.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="team/")
            for o in page.get("Contents", [])]
    assert any("/checkpoint_" in k and k.endswith("/state.pt") for k in keys), keys[:20]  # checkpoints in the bucket
    assert any(k.endswith("/study.json") for k in keys) and any("/mlartifacts/" in k for k in keys)
    # the search's Optuna study, written on the driver and copied beside the searcher's state at checkpoints
    (journal_key,) = [k for k in keys if k.endswith(f"/{JOURNAL_FILE}") and "/mlartifacts/" not in k]
    assert journal_key.count("/") == 2, journal_key  # team/<study>/optuna.journal (the other: the report's artifact)
    journal = cluster["tmp"] / JOURNAL_FILE
    journal.write_bytes(bucket.get_object(Bucket=BUCKET, Key=journal_key)["Body"].read())
    store = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    (name,) = optuna.get_all_study_names(store)
    searched = sorted(t.user_attrs[TRIAL_NAME_ATTR] for t in optuna.load_study(study_name=name, storage=store).trials)
    assert searched == sorted(r.info.run_name for r in trials if r.data.tags["stage"] == "search"), searched

    elsewhere = cluster["tmp"] / "elsewhere"
    elsewhere.mkdir()
    resumed = _study(cluster, "--space", "demo", "--storage", storage, "--resume", cwd=elsewhere, log="resume.log")
    assert resumed.returncode == 0, resumed.explain()
    (study_dir,) = {k.split("/")[1] for k in keys if k.endswith("/study.json")}
    assert f"study {study_dir}:" in resumed.output, resumed.explain()  # found in the bucket
    again = [r for r in client.search_runs([experiment.experiment_id]) if "trial_id" in r.data.tags]
    assert {r.info.run_id: r.info.end_time for r in again} == {r.info.run_id: r.info.end_time for r in trials}


def test_a_local_storage_on_a_cluster_of_several_nodes_is_refused_before_tune_starts(cluster, cifar10_dir):
    started = time.monotonic()
    done = _study(cluster, *TINY, "--data-dir", cifar10_dir, "--storage", str(cluster["tmp"] / "local-results"),
                  cwd=cluster["tmp"], log="local-storage.log", timeout=120)
    assert done.returncode == 2 and time.monotonic() - started < 60, done.explain()
    errors = [line for line in done.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: --storage:") and "s3://" in errors[0], done.explain()
    assert "--shared-storage" in errors[0] and "2 nodes" in errors[0]


def test_trials_stream_shards_from_s3_on_a_node_without_the_data(cluster, s3, monkeypatch):
    from mlflow.tracking import MlflowClient

    from imagefolders import make_image_folder
    from trainables.shard import convert

    for key, value in s3[0].items():  # this process writes the shards to the bucket
        monkeypatch.setenv(key, value)
    folder = make_image_folder(cluster["tmp"] / "folder", train=72, val=24, size=40, classes=4)
    shards = f"s3://{BUCKET}/shards/tiny"
    convert(str(folder), shards, rows_per_group=8, rows_per_file=40, workers=1)
    done = _study(cluster, "--space", "demo", "--variants", "lars_warmup,tvlars", "--num-samples", "1", "--confirm", "0",
                  "--data-dir", shards, "--storage", f"s3://{BUCKET}/streamed", "--experiment", "streamed",
                  "--set", "dataset=imagefolder", "--set", "image_size=32", "--set", "epochs=2", "--set", "val_size=8",
                  "--set", "batch_size=16", "--set", "grace_period=2", "--set", "eval_every=1",
                  cwd=cluster["tmp"], log="streamed.log")
    assert done.returncode == 0, done.explain()
    decided = [line for line in done.output.splitlines() if line.startswith("data: streaming")]
    assert len(decided) == 1 and f"from {shards}: a URI" in decided[0], done.explain()
    client = MlflowClient(f"sqlite:///{cluster['tmp'] / 'data-home' / 'layerwise-study' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("streamed").experiment_id])
    trials = [r for r in runs if "trial_id" in r.data.tags]
    assert len(trials) == 2, [r.info.run_name for r in runs]
    for run in trials:  # every trial read the bucket's shards on the node that has neither the code nor the data
        assert run.data.tags["status"] == "completed", run.data.tags
        assert run.data.tags["ray_node_id"] == cluster["worker_node"]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_top1")] == [1, 2]
