"""A real S3-compatible server for tests: `moto_server` on 127.0.0.1, and the standard `AWS_*` variables
that reach it."""

from __future__ import annotations

import shutil
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from subprocs import describe, free_port, start_logged

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_REGION": "us-east-1"}


@contextmanager
def moto_server(log_dir: Path, buckets: tuple[str, ...], timeout: float = 120) -> Iterator[dict[str, str]]:
    """Start `moto_server` on a free port with empty `buckets`; yield the environment that reaches it."""
    import boto3

    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if moto is None:
        pytest.skip("moto_server not installed (the project's [test] extra: moto[server])")
    port, log = free_port(), Path(log_dir) / "moto.log"
    cmd = [moto, "-H", "127.0.0.1", "-p", str(port)]
    proc = start_logged(cmd, log, start_new_session=True)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", **CREDENTIALS}
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(env["AWS_ENDPOINT_URL"], timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None, describe(cmd, log, f"exited with status {proc.returncode}")
                assert time.monotonic() < deadline, describe(cmd, log, f"did not answer within {timeout:.0f} s")
                time.sleep(0.2)
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=30)
