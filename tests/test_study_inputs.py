"""`python -m study.run` rejects bad input with one clear error, exit status 2, before writing anything;
a platform failure (Ray cannot start) is exit status 1 with the underlying message."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from search_spaces import SPACES
from study.run import main
from subprocs import REPO, assert_succeeds



@pytest.mark.parametrize("extra,message", [
    (["--space", "tvlars_bs16"], "--space: unknown 'tvlars_bs16'. Did you mean tvlars_bs16k"),
    (["--space", "demo", "--data-dir", "{data}", "--set", "lamda=0.1"], "lamda: not a trial setting nor a hyperparameter of this space"),
    (["--space", "demo", "--data-dir", "{data}", "--set", "epochs=ten"], "epochs: expected int, got 'ten'"),
    (["--space", "demo", "--data-dir", "{data}", "--set", "momentum=1.5"], "momentum: must be in [0, 1), got 1.5"),
    (["--space", "demo", "--data-dir", "{data}", "--set", "num_samples=0"], "num_samples: must be >= 1, got 0"),
    (["--space", "demo", "--data-dir", "{data}", "--set", "noequals"], "--set: expected key=value"),
    # each of these once reached arithmetic or a library before its check: a traceback, or a study that failed
    (["--space", "demo", "--data-dir", "{data}", "--set", "batch_size=0"], "batch_size: must be >= 1, got 0"),
    (["--space", "demo", "--data-dir", "{data}", "--set", "micro_batch_size=0"],
     "micro_batch_size: must be a number >= 1 or 'auto', got 0"),
    (["--space", "demo", "--data-dir", "{data}", "--set", "bn_group=0"], "bn_group: must be a number >= 1 or 'sync', got 0"),
    (["--space", "demo", "--data-dir", "{data}", "--set", "reduction_factor=1"], "reduction_factor: must be >= 2, got 1"),
    (["--space", "demo", "--data-dir", "{data}", "--set", "device=cuda"],  # each trial failed in its worker
     "device: 'cuda' needs a GPU for each worker, but gpus_per_worker=0; set --set gpus_per_worker=1, or device=auto"),
    (["--space", "demo", "--data-dir", "{data}", "--set", "lr=1"],  # ran 3 identical trials of each variant
     "error: variants lars_warmup, lars_nowarmup: nothing left to search (--set fixes lr), so 3 search trials each "
     "would train one configuration alike; pass --num-samples 1 (confirm trials repeat it with fresh seeds), or leave "
     "them out: --variants tvlars\n"),
    (["--space", "demo", "--data-dir", "{data}", "--seed", "-1"], "--seed: must be in [0, 2**32), got -1"),
    (["--space", "demo", "--data-dir", "{data}", "--max-failures", "-2"],
     "--max-failures: must be >= -1 (-1: without limit), got -2"),
    (["--space", "demo", "--data-dir", "{data}", "--resume-errored"],
     "--resume-errored: restarts the errored trials of a study that --resume continues; add --resume"),
    (["--space", "demo", "--set", "dataset=parquet", "--data-dir", "/nonexistent/x"], "parquet data at '/nonexistent/x': directory not found"),
    (["--space", "demo", "--data-dir", "{data}", "--tracking-uri", "nosuchscheme://x"], "--tracking-uri: cannot use MLflow store 'nosuchscheme://x'"),
    (["--space", "demo", "--data-dir", "{data}", "--address", "127.0.0.1:1"], "--address: cannot reach a Ray cluster at '127.0.0.1:1'"),
    (["--space", "demo", "--resume"], "--resume: no study of space 'demo'"),
    # a study's definition is its study.json: --resume once ignored these silently
    (["--space", "demo", "--resume", "--set", "epochs=3"],
     "--set: --resume continues a study as it was started (its study.json); start a new study to change it"),
    (["--space", "demo", "--resume", "--seed", "0"], "--seed: --resume continues a study as it was started"),
    (["--space", "demo", "--data-dir", "{data}", "--set", "model=resnet5O"],
     "model: unknown 'resnet5O'; closest: resnet50, resnet152, resnet8; list them with: python -c"),
    (["--space", "demo", "--data-dir", "{data}", "--set", "model=alexnet"],  # each trial failed at its first step
     "variant tvlars: model: alexnet does not take 32×32 images (Given input size: (256x1x1). Calculated output size: "
     "(256x0x0). Output size is too small); choose another model"),
    (["--space", "demo", "--data-dir", "{data}", "--set", "data_path=stream"],
     "data_path: cifar10 is decoded into memory; streaming reads imagefolder or imagenet (folders or shards)"),
    (["--space", "demo", "--data-dir", "s3://bucket/cifar"],  # was downloaded into ./s3:/bucket/cifar
     "data_dir: cifar10 is read from a local folder; a URI (s3://bucket/cifar) streams imagefolder or imagenet only"),
    (["--space", "demo", "--set", "dataset=imagenet", "--data-dir", "/nonexistent/in"],
     "imagenet data at '/nonexistent/in': directory not found; expected layout: ILSVRC-2012 as torchvision's"),
    (["--space", "demo", "--data-dir", "{data}", "--set", "epochs=1"],  # the conflict is with a variant's own setting
     "error: variant lars_warmup: warmup_epochs: must be in [0, epochs=1), got 1.0 (variant lars_warmup sets "
     "warmup_epochs=1.0, not your command line); fix: --set warmup_epochs=<a value that fits>, or leave the variant "
     "out: --variants tvlars,lars_nowarmup\n"),
    (["--space", "demo", "--data-dir", "{data}", "--set", "limit=50"],  # checked against the data: the space's setting
     "error: variant tvlars: val_size: must be in [0, 50) for 50 training images, got 300 (space demo sets "
     "val_size=300, not your command line); fix: --set val_size=<a value that fits>\n"),
    (["--space", "demo", "--data-dir", "{data}", "--storage", "/proc/nope"], "--storage: cannot write to /proc/nope ("),
    (["--space", "demo", "--data-dir", "{data}", "--tracking-uri", "http://127.0.0.1:9/"],
     "--tracking-uri: cannot reach the MLflow tracking server at 'http://127.0.0.1:9/' ("),
    pytest.param(["--space", "tvlars_bs16k", "--data-dir", "{data}"],
                 "one trial needs 1 worker(s) × (4 CPU + 1 GPU), but this machine has 1 node(s), ",
                 marks=pytest.mark.skipif("__import__('torch').cuda.is_available()", reason="this machine has a GPU")),
])
def test_bad_input_is_one_error_and_nothing_written(extra, message, tmp_path, capsys, cifar10_dir, data_cache):
    storage = tmp_path / "results"
    code = main(["--storage", str(storage), *(a.format(data=cifar10_dir) for a in extra)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not storage.exists()
    if "tvlars_bs16k" in extra:  # the missing GPU, and the fix
        assert "0 GPU in all: no GPU for it" in err and "--set gpus_per_worker=0" in err


def test_an_empty_path_or_name_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    """`--storage ""` (an unset shell variable) once ran the study in the working directory."""
    monkeypatch.chdir(tmp_path)
    for flag in ("--storage", "--data-dir", "--tracking-uri", "--experiment"):
        with pytest.raises(SystemExit) as exited:
            main(["--space", "demo", flag, ""])
        assert exited.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"python -m study.run: error: argument {flag}: must not be empty"
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_object_store_is_one_error_and_nothing_starts(tmp_path, capsys, monkeypatch, cifar10_dir):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    for key, value in (("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "y"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(key, value)
    code = main(["--space", "demo", "--data-dir", cifar10_dir, "--storage", "s3://bucket/x"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --storage: cannot write to s3://bucket/x (") and err.count("\n") == 1, err
    assert "127.0.0.1" in err


@pytest.fixture
def silent_endpoint():
    """An S3 endpoint that accepts connections and never replies: http://127.0.0.1:<port>."""
    server, held = socket.create_server(("127.0.0.1", 0)), []

    def hold() -> None:
        with contextlib.suppress(OSError):  # the server closed at the test's end
            held.extend(iter(server.accept, None))

    threading.Thread(target=hold, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for conn, _ in held:  # the probe left waiting sees the connection close and ends
        conn.close()


def test_a_silent_object_store_is_one_error_within_the_deadline(silent_endpoint, capsys, monkeypatch, cifar10_dir):
    """pyarrow's S3 client waited 198 s on such an endpoint (gs:// without network: over 200 s) while the study
    looked started."""
    import study.storage

    monkeypatch.setattr(study.storage, "PROBE_DEADLINE_S", 2.0)  # 30 s in use; the waiting is the same
    monkeypatch.setenv("AWS_ENDPOINT_URL", silent_endpoint)
    for key, value in (("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "y"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(key, value)
    started = time.monotonic()
    code = main(["--space", "demo", "--data-dir", cifar10_dir, "--storage", "s3://bucket/x"])
    err = capsys.readouterr().err
    assert code == 2 and err == ("error: --storage: cannot write to s3://bucket/x (no answer within 2 s: check the "
                                 "network, the endpoint and the credentials)\n"), err
    assert time.monotonic() - started < 10


def test_a_deleted_experiment_is_one_error_and_no_study_starts(tmp_path, capsys, cifar10_dir, data_cache):
    """MLflow refuses runs in a deleted experiment: the study once failed there with a traceback in error.log."""
    from mlflow.tracking import MlflowClient

    storage, uri = tmp_path / "results", f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.delete_experiment(client.create_experiment("demo"))
    code = main(["--space", "demo", "--data-dir", cifar10_dir, "--storage", str(storage), "--tracking-uri", uri,
                 "--set", "limit=600", "--set", "test_limit=200"])
    err = capsys.readouterr().err
    assert code == 2 and err.endswith(  # after Ray's start, where the study first opens the store
        f"\nerror: --experiment: MLflow experiment 'demo' is deleted (id 1 in {uri}); restore it with "
        f"`MLFLOW_TRACKING_URI={uri} mlflow experiments restore -x 1`, or pass another --experiment\n"), err
    assert err.count("error:") == 1 and "the study failed" not in err  # (Ray's log may hold a stale capture's)
    assert not storage.exists() or not any(storage.iterdir())  # no study folder
    assert client.search_runs(["1"], run_view_type=3) == []  # ViewType.ALL: no run was started


def test_an_unwritable_cache_is_one_error(tmp_path, capsys, monkeypatch, cifar10_dir):
    """The decoded data's cache failed with a traceback once the study was under way."""
    from trainables.cache import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, "/proc/nope")
    code = main(["--space", "demo", "--data-dir", cifar10_dir, "--storage", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: cannot write the cache folder /proc/nope (from $LAYERWISE_CACHE): ")
    assert err.endswith("; set $LAYERWISE_CACHE to a writable folder\n") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_list_prints_every_space_and_optimizer(capsys):
    from optim.factory import SPECS

    assert main(["--list"]) == 0
    spaces, models, optimizers = capsys.readouterr().out.split("\n\n")
    assert models.startswith("models: resnet8, resnet14, resnet20 (CIFAR ResNets) or any torchvision classifier")
    assert "list_models(module=torchvision.models)" in models
    names = [line.split()[0] for line in spaces.splitlines() if not line.startswith(" ")]
    assert names == list(SPACES)
    assert "  variants (--variants): tvlars, lars_warmup, lars_nowarmup" in spaces
    assert spaces.splitlines()[0].split()[0] == "demo" and "TVLARS" in spaces.splitlines()[0]
    listed = {line.split()[0]: line for line in optimizers.splitlines()[1:]}
    assert list(listed) == list(SPECS)
    assert "delay_epochs" in listed["tvlars"] and "delay_epochs" not in listed["lars"]


def test_a_failing_subprocess_shows_its_output_in_the_assertion(tmp_path):
    """A study asserted to succeed that cannot (its data dir is wrong): the message carries its `error:` line."""
    cmd = [sys.executable, "-m", "study.run", "--space", "demo", "--set", "dataset=parquet",
           "--data-dir", str(tmp_path / "nowhere"), "--storage", str(tmp_path / "results")]
    with pytest.raises(AssertionError) as failure:
        assert_succeeds(cmd, tmp_path / "study.log", cwd=REPO, timeout=120)
    message = str(failure.value)
    assert "exited with status 2" in message and str(tmp_path / "study.log") in message
    assert f"error: parquet data at '{tmp_path / 'nowhere'}': directory not found" in message


def test_ray_that_cannot_start_is_a_platform_error_not_an_input_error(tmp_path, capsys, monkeypatch, cifar10_dir,
                                                                      data_cache):
    """Exit 1 with Ray's own message. The message is the one Ray gave when a stale
    /tmp/ray/ray_current_cluster made ray.init join a dead cluster: exit 2 was the CI flake's symptom."""
    import ray

    calls = []

    def init(**kwargs):
        calls.append(kwargs)
        raise ValueError("When connecting to an existing cluster, num_cpus and num_gpus must not be provided.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    code = main(["--space", "demo", "--data-dir", cifar10_dir, "--storage", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err == ("error: could not start a local Ray: ValueError: When connecting to an existing cluster, "
                   "num_cpus and num_gpus must not be provided.\n")
    assert calls and calls[0]["address"] == "local"  # a local study never joins a cluster it did not ask for
    assert not (tmp_path / "results" / "mlflow.db").exists()  # the store opened beside Ray's start is removed


def _recorded_study(storage: Path):
    """A study's record and parent run as a study leaves them once its parent run is open (no trial yet)."""
    from study.mlflow_store import check_tracking_uri, default_tracking_uri, experiment_id, start_parent_run
    from study.record import StudyRecord
    from study.storage import Location

    where = Location.of(storage)
    record = StudyRecord.new(where, "demo", overrides={}, seed=0, tracking_uri=default_tracking_uri(where),
                             experiment="demo")
    record.claim()
    client = check_tracking_uri(record.tracking_uri)
    record.parent_run_id = start_parent_run(client, experiment_id(client, "demo", record.artifact_root),
                                            str(record.study_dir), {"variants": ["tvlars"]}, {"space": "demo"})
    record.save()
    return record, client


@pytest.mark.parametrize("how", ["moved", "copied"])
def test_a_study_moved_or_copied_away_from_where_it_started_is_refused_on_resume(how, tmp_path, capsys):
    """MLflow names the study's folders (absolute paths) in its runs and artifacts. Moved, `--resume` re-created an
    empty SQLite store where the old one had been and opened a second parent run there, its report failing; copied,
    it wrote into the original's store."""
    import shutil

    started, elsewhere = tmp_path / "results", tmp_path / "elsewhere"
    record, client = _recorded_study(started)
    (shutil.move if how == "moved" else shutil.copytree)(started, elsewhere)
    capsys.readouterr()  # MLflow's lines creating the store
    assert main(["--space", "demo", "--storage", str(elsewhere), "--resume"]) == 2
    err = capsys.readouterr().err
    expected = {"moved": f"error: --resume: study {record.name} names the MLflow store {record.tracking_uri}, which "
                         f"does not exist (moved or deleted?): resume it where it started, or start a new study\n",
                "copied": f"error: --resume: study {elsewhere / record.name} is a copy of {record.study_dir}, whose "
                          f"MLflow runs and artifacts it would write to ({record.tracking_uri}): resume the original\n"}
    assert err == expected[how]
    assert started.exists() == (how == "copied")  # no store re-created where the moved one had been
    if how == "copied":
        runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
        assert [r.info.run_id for r in runs] == [record.parent_run_id]  # the original's store left as it was
