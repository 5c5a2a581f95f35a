"""Ray clusters a test starts with `ray start`, stopped without touching any other Ray on the machine
(`ray stop --force` ends every one: another test run's, a user's study)."""

from __future__ import annotations

from pathlib import Path

CLUSTER_MARKER = "LAYERWISE_TEST_CLUSTER"  # in the environment of every process of the test's cluster


def stop_cluster(marker: str, port: int, grace_s: float = 30) -> None:
    """End the processes of this cluster only (`ray stop` ends every Ray on the machine, other test runs' too):
    SIGTERM, then SIGKILL after `grace_s`; and forget its address as the machine's latest cluster, as `ray stop`."""
    import psutil
    from ray._common.utils import get_ray_address_file

    def ours() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get(CLUSTER_MARKER) == marker:
                    found.append(proc)
            except (psutil.Error, OSError):  # exited meanwhile, or not ours to read
                continue
        return found

    for signal_them, wait_s in ((psutil.Process.terminate, grace_s), (psutil.Process.kill, 10)):
        procs = ours()
        for proc in procs:
            try:
                signal_them(proc)
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=wait_s)
    address_file = Path(get_ray_address_file(None))  # "<node ip>:<port>" of the latest `ray start --head`
    if address_file.is_file() and address_file.read_text().strip().rpartition(":")[2] == str(port):
        address_file.unlink(missing_ok=True)
