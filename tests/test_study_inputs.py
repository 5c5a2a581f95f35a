"""`python -m study.run` rejects bad input with one clear error, exit status 2, before writing anything."""

from __future__ import annotations

import pytest

from search_spaces import SPACES
from study.run import main


@pytest.mark.parametrize("extra,message", [
    (["--space", "tvlars_bs16"], "--space: unknown 'tvlars_bs16'. Did you mean tvlars_bs16k"),
    (["--space", "demo", "--data-dir", "{data}", "--set", "lamda=0.1"], "lamda: not a trial setting nor a hyperparameter of this space"),
    (["--space", "demo", "--data-dir", "{data}", "--set", "epochs=ten"], "epochs: expected int, got 'ten'"),
    (["--space", "demo", "--data-dir", "{data}", "--set", "momentum=1.5"], "momentum: must be in [0, 1), got 1.5"),
    (["--space", "demo", "--data-dir", "{data}", "--set", "num_samples=0"], "num_samples: must be >= 1, got 0"),
    (["--space", "demo", "--data-dir", "{data}", "--set", "noequals"], "--set: expected key=value"),
    (["--space", "demo", "--data-dir", "/nonexistent/cifar"], "cifar10 data at '/nonexistent/cifar': directory not found"),
    (["--space", "demo", "--data-dir", "{data}", "--tracking-uri", "nosuchscheme://x"], "--tracking-uri: cannot use MLflow store 'nosuchscheme://x'"),
    (["--space", "demo", "--data-dir", "{data}", "--address", "127.0.0.1:1"], "--address: cannot reach a Ray cluster at '127.0.0.1:1'"),
    (["--space", "demo", "--resume"], "--resume: no study of space 'demo'"),
    (["--space", "demo", "--storage", "s3://bucket/x"], "--storage: object-store URIs are not supported yet"),
    (["--space", "demo", "--set", "dataset=cifar100"], "--data-dir: no cifar100 data found"),
])
def test_bad_input_is_one_error_and_nothing_written(extra, message, tmp_path, capsys, cifar10_dir, data_cache):
    storage = tmp_path / "results"
    code = main(["--storage", str(storage), *(a.format(data=cifar10_dir) for a in extra)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not storage.exists()


def test_list_prints_every_space(capsys):
    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(SPACES)
    assert lines[0].split()[0] == "demo" and "TVLARS" in lines[0]
