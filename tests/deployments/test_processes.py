"""Knowing a process we started again, when the wall clock moved meanwhile."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from notebook_jobs.blocks.exceptions import LocalServerError
from notebook_jobs.deployments.processes import alive, port_taken, started_at, uptime


def test_a_process_is_still_ours_after_the_wall_clock_moves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = started_at(os.getpid())
    epoch_started = psutil.Process(os.getpid()).create_time()  # as older state.json kept it
    boot = psutil.boot_time()
    # a machine resumed after a pause: the kernel's boot time is 5 s later than it was
    monkeypatch.setattr(psutil._psplatform, "boot_time", lambda: boot + 5.0)
    assert psutil.Process(os.getpid()).create_time() == pytest.approx(epoch_started + 5.0)
    assert alive(os.getpid(), started)
    assert not alive(os.getpid(), started + 2.0)  # another process with our pid
    monkeypatch.undo()
    assert alive(os.getpid(), epoch_started)  # a server started by an older nbjobs
    assert uptime(os.getpid()) is not None


def test_an_ended_process_is_not_alive_and_has_no_uptime() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = started_at(child.pid)
    child.wait()
    assert not alive(child.pid, started)
    assert uptime(child.pid) is None
    assert not alive(None, None)


@pytest.mark.parametrize(
    "log",
    [
        # Prefect's own check, before uvicorn binds (folded as it prints it)
        "Port 4203 is already in use. Please specify a different port with the `--port` \nflag.\n",
        "ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', 4203): "
        "address already in use\n",
    ],
)
def test_a_port_taken_while_starting_is_known_by_either_message(log: str, tmp_path: Path) -> None:
    path = tmp_path / "server.log"
    path.write_text("INFO: starting\n" + log)
    assert port_taken(LocalServerError("stopped while starting", log=path))
    path.write_text("Traceback: something else\n")
    assert not port_taken(LocalServerError("stopped while starting", log=path))
