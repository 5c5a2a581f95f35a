"""A user's fresh machine: the study downloads its data itself (from a real HTTP server on 127.0.0.1
serving a generated CIFAR-10 in torchvision's layout), fails fast and cleanly on a bad download, and
records a trial whose workers crash with the worker's own error text in MLflow."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from torchvision.datasets import CIFAR10

from study.errors import PLATFORM_ERROR
from study.run import main
from subprocs import REPO
from trainables.data import load_dataset
from trainables.epochs import FAULT_ENV

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PER_BATCH, TEST_IMAGES = 60, 100  # 300 train images in torchvision's five batches, 100 test images
TINY = ["--variants", "lars_nowarmup", "--num-samples", "1", "--confirm", "0", "--set", "epochs=1", "--set", "limit=200",
        "--set", "val_size=20", "--set", "test_limit=100", "--set", "batch_size=100"]


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _batch(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    labels = [i % 10 for i in range(n)]
    data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
    return pickle.dumps({"data": data, "labels": labels})


def cifar10_archive(monkeypatch) -> bytes:
    """A small CIFAR-10 tarball in torchvision's layout; torchvision's checksums are set to its own."""
    files = {f"data_batch_{i}": _batch(PER_BATCH, i) for i in range(1, 6)}
    files["test_batch"] = _batch(TEST_IMAGES, 0)
    files["batches.meta"] = pickle.dumps({"label_names": [f"class{i}" for i in range(10)]})
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(f"{CIFAR10.base_folder}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    archive = out.getvalue()
    monkeypatch.setattr(CIFAR10, "tgz_md5", _md5(archive))
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", _md5(files[f"data_batch_{i}"])] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", _md5(files["test_batch"])]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": _md5(files["batches.meta"])})
    return archive


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # torchvision's redirect probe hangs up mid-body: expected
        pass


class Mirror:
    """A real HTTP server on 127.0.0.1 serving one folder, counting the requests it answers."""

    def __init__(self, folder: Path):
        self.requests: list[str] = []
        mirror = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args):
                mirror.requests.append(self.path)

        self.server = QuietServer(("127.0.0.1", 0), partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()


@pytest.fixture
def fresh_home(tmp_path, monkeypatch, data_cache) -> Path:
    """A user with no data yet: a new XDG cache, no $LAYERWISE_DATA (decoded tensors in the test cache).

    HOME stays: Ray keeps its auth token under ~/.ray, read once per process."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / ".cache"))
    monkeypatch.delenv("LAYERWISE_DATA", raising=False)
    monkeypatch.delenv("LAYERWISE_DATA_URL", raising=False)
    return tmp_path / "home" / ".cache" / "layerwise-study"


@pytest.fixture
def mirror(tmp_path) -> Mirror:
    served = tmp_path / "served"
    served.mkdir()
    server = Mirror(served)
    yield server
    server.stop()


def _serve(mirror: Mirror, tmp_path: Path, blob: bytes) -> None:
    (tmp_path / "served" / CIFAR10.filename).write_bytes(blob)


def test_first_study_downloads_verifies_and_trains_the_second_downloads_nothing(
        fresh_home, mirror, tmp_path, monkeypatch, capsys):
    _serve(mirror, tmp_path, cifar10_archive(monkeypatch))
    storage = tmp_path / "results"
    assert main(["--space", "demo", "--data-url", mirror.url, "--storage", str(storage), *TINY]) == 0, \
        capsys.readouterr().err[-3000:]
    dataset = fresh_home / "data" / "cifar10"
    assert sorted(p.name for p in dataset.iterdir()) == [CIFAR10.base_folder]  # no archive, no partial folder
    assert len(list((dataset / CIFAR10.base_folder).iterdir())) == 7
    assert any(path.endswith(CIFAR10.filename) for path in mirror.requests)
    out = capsys.readouterr().out
    assert f"downloading cifar10 from {mirror.url}{CIFAR10.filename} to {dataset}" in out
    # the decode's wait said before it (once per copy of the data), then where the trials read it, and why
    decoding, placed = [line for line in out.splitlines() if line.startswith("data: ")]
    assert decoding.startswith(f"data: decoding {dataset} once for this copy of the data; later studies read "), out
    entry = Path(decoding.rpartition(" read ")[2])
    assert entry.is_file() and entry.name.startswith("cifar10-"), decoding
    assert " images in Ray's object store: cifar10 is decoded into memory: " in placed, out
    assert " GiB fits the smallest node's object store (" in placed

    mirror.stop()  # a second study must not need the server at all
    asked = len(mirror.requests)
    assert main(["--space", "demo", "--data-url", mirror.url, "--storage", str(storage), *TINY]) == 0, \
        capsys.readouterr().err[-3000:]
    out = capsys.readouterr().out
    assert len(mirror.requests) == asked and "downloading" not in out and "data: decoding" not in out

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id], "tags.trial_id != ''")
    assert len(runs) == 2 and {r.data.tags["status"] for r in runs} == {"completed"}
    assert {r.data.params["data_dir"] for r in runs} == {str(dataset)}


@pytest.mark.parametrize("problem", ["corrupt", "server down", "unwritable"])
def test_a_failed_download_is_one_error_and_leaves_nothing(problem, fresh_home, mirror, tmp_path, monkeypatch, capsys):
    archive = cifar10_archive(monkeypatch)
    _serve(mirror, tmp_path, archive[: len(archive) // 2] if problem == "corrupt" else archive)
    if problem == "server down":
        mirror.stop()
    data_dir = Path("/proc/nope/cifar10") if problem == "unwritable" else fresh_home / "data" / "cifar10"
    url = f"{mirror.url}{CIFAR10.filename}"
    args = ["--space", "demo", "--data-url", mirror.url, "--storage", str(tmp_path / "results"), *TINY]
    started = time.monotonic()
    code = main(args + (["--data-dir", str(data_dir)] if problem == "unwritable" else []))
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - started < 60
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # stderr also has the progress bar
    assert len(errors) == 1 and err.rstrip("\n").endswith(errors[0]) and errors[0].startswith("error: cifar10: "), err
    assert url in err and str(data_dir) in err and "to place it by hand, download" in err
    expected = {"corrupt": f"checksum mismatch for {url}: md5 {_md5(archive[: len(archive) // 2])}, "
                           f"expected {_md5(archive)}",
                "server down": f"could not download {url} (", "unwritable": f"cannot download into {data_dir} ("}
    assert expected[problem] in err, err
    assert not fresh_home.exists()  # nothing partial in the cache
    assert not (tmp_path / "results").exists()  # nor a study


def test_a_trial_whose_workers_crash_is_errored_with_the_workers_error_in_mlflow(
        tmp_path, monkeypatch, capsys, cifar10_dir, data_cache):
    monkeypatch.setenv(FAULT_ENV, "raise_after_epoch=1")  # the local Ray's workers inherit it
    storage = tmp_path / "results"
    code = main(["--space", "demo", "--data-dir", cifar10_dir, "--storage", str(storage), "--max-failures", "0",
                 *TINY, "--set", "epochs=2"])
    err = capsys.readouterr().err
    assert code == 0, err
    message = f"RuntimeError: injected fault: {FAULT_ENV}=raise_after_epoch=1"
    assert f"errored: {message}" in err
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("demo").experiment_id], "tags.trial_id != ''")
    assert run.data.tags["status"] == "errored" and run.info.status == "FAILED"
    assert run.data.tags["error"] == message
    assert message in Path(client.download_artifacts(run.info.run_id, "error.txt", str(tmp_path))).read_text()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch")] == [1]
    # the study's data as MLflow's Datasets column shows it, on the trial's run and on its parent's
    data = load_dataset("cifar10", cifar10_dir)
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    for recorded in (run, parent):
        (used,) = recorded.inputs.dataset_inputs
        assert (used.dataset.name, used.dataset.digest, used.dataset.source_type) == ("cifar10", data.digest, "local")
        assert json.loads(used.dataset.source) == {"uri": cifar10_dir}
        assert json.loads(used.dataset.profile) == {"train_images": len(data.train), "test_images": len(data.test),
                                                    "classes": 10, "image_size": 32}
        assert {(t.key, t.value) for t in used.tags} == {("mlflow.data.context", "training")}


def test_a_study_in_which_no_trial_trained_exits_1_naming_the_first_error(
        tmp_path, monkeypatch, capsys, cifar10_dir, data_cache):
    monkeypatch.setenv(FAULT_ENV, "raise_before_epoch=1")  # every trial fails before its first epoch
    storage = tmp_path / "results"
    code = main(["--space", "demo", "--data-dir", cifar10_dir, "--storage", str(storage), "--max-failures", "0",
                 *TINY, "--num-samples", "2"])
    out, err = capsys.readouterr()
    assert code == 1, err
    message = f"RuntimeError: injected fault: {FAULT_ENV}=raise_before_epoch=1"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: no trial trained: 2 of 2 trials failed; the first: {message}"], err
    assert _parent_status(storage) == "FAILED"  # was FINISHED: a study that trained nothing reads as one that did
    # the report still ran, and says which trials errored and why (no traceback): the error both share once,
    # in the table's caption (a column with one value is said once)
    assert "## Errored trials" in out and out.count(message) == 1 and "Traceback" not in out


def _parent_status(storage: Path) -> str:
    """The MLflow status of the one study's parent run in `storage`."""
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    (parent,) = client.search_runs([client.get_experiment_by_name("demo").experiment_id], "tags.study_path != ''")
    return parent.info.status


# The study's Tuner failing to build stands for any crash of the driver's own; before it, a trial's step has failed
# and its future is dropped unread with the crash's traceback, as Tune's are when its driver crashes.
CRASHING_TUNER = """
import sys
import ray
import study.tuner
from study.run import main


@ray.remote(num_cpus=0)
class Trial:
    def step(self):
        raise RuntimeError("a trial's step failed")

    def ready(self) -> bool:
        return True


def broken(*args, **kwargs):
    trial = Trial.remote()
    future = trial.step.remote()
    ray.get(trial.ready.remote())  # an actor runs its calls in order: the step has failed by now
    raise RuntimeError("the tuner broke")


study.tuner.new_tuner = broken
sys.exit(main(sys.argv[1:]))
"""


def test_a_study_that_crashes_after_its_parent_run_opened_leaves_it_failed(tmp_path, cifar10_dir, data_cache):
    """One `error:` line, the last (Ray's "Unhandled error" of the dropped future once followed it), the traceback in
    the study's error.log, the parent run FAILED (it was left RUNNING, as if the study still ran)."""
    storage = tmp_path / "results"
    args = ["--space", "demo", "--data-dir", cifar10_dir, "--storage", str(storage), *TINY]
    done = subprocess.run([sys.executable, "-c", CRASHING_TUNER, *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "LAYERWISE_CACHE": data_cache}, timeout=300)
    assert done.returncode == PLATFORM_ERROR, done.stderr
    assert "Unhandled error" in done.stderr, done.stderr  # the dropped future's: the test can fail
    (log,) = storage.glob("demo-*/error.log")
    assert done.stderr.splitlines()[-1] == (f"error: the study failed: RuntimeError: the tuner broke (traceback in "
                                            f"{log})"), done.stderr
    assert "the tuner broke" in log.read_text()
    assert _parent_status(storage) == "FAILED"
