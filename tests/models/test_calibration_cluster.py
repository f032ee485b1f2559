"""Slow tier: SBC on a Dask cluster started from the command line, as a user would.

``dask scheduler`` and two ``dask worker`` processes on loopback; the run goes through
``astroweights sbc --scheduler``; one worker is killed mid-run (``--no-nanny``, so it stays
dead) and no replicate is lost.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models import calibration
from models.cli import main

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent.parent


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{path} did not appear in {timeout} s")
        time.sleep(0.2)


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """A scheduler and two single-threaded workers, each its own process, on 127.0.0.1."""
    import sbc_toy

    monkeypatch.setitem(calibration.CASES, "toy", sbc_toy.CASE)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    sched_file = tmp_path / "scheduler.json"
    dask = [sys.executable, "-m", "dask"]
    procs = [
        subprocess.Popen(
            [
                *dask,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--dashboard-address",
                ":0",
                "--scheduler-file",
                str(sched_file),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    _wait_for(sched_file)
    address = json.loads(sched_file.read_text())["address"]
    for _ in range(2):
        procs.append(
            subprocess.Popen(
                [
                    *dask,
                    "worker",
                    address,
                    "--nthreads",
                    "1",
                    "--no-nanny",
                    "--dashboard-address",
                    ":0",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    from dask.distributed import Client

    with Client(address, timeout=60) as client:
        client.wait_for_workers(2, timeout=60)
    yield address, procs
    for p in procs:
        p.kill()
        p.wait(timeout=30)


def test_sbc_through_a_command_line_cluster_survives_a_killed_worker(cluster, tmp_path, capsys):
    address, procs = cluster
    marker = tmp_path / "a-worker-died"
    out = tmp_path / "sbc"
    code = main(
        [
            "sbc",
            "toy",
            "--replicates",
            "24",
            "--scheduler",
            address,
            "--out",
            str(out),
            "--option",
            f"die={marker}",
            "--quiet",
        ]
    )
    assert code == 0
    assert marker.exists()  # the first replicate to run killed its worker process
    assert sum(p.poll() is not None for p in procs[1:]) == 1  # and it stayed dead
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_ok"] == 24 and summary["n_failed"] == 0
    assert len(list((out / "replicates").glob("*.json"))) == 24
    # the same command again redoes nothing: every replicate is on disk, none is rewritten
    stamps = {f.name: f.stat().st_mtime_ns for f in (out / "replicates").glob("*.json")}
    again = ["sbc", "toy", "--replicates", "24", "--scheduler", address, "--out", str(out)]
    assert main([*again, "--option", f"die={marker}", "--quiet"]) == 0
    assert {f.name: f.stat().st_mtime_ns for f in (out / "replicates").glob("*.json")} == stamps
