"""The soak's short version: one long-lived worker on PostgreSQL, one fault of each kind.

``benchmarks/soak.py`` runs it for 30 minutes (its numbers are in docs/performance.md); here
about 30 runs: a kernel SIGKILLed mid-cell, the artefact store down for 15 s (past the uploads' own retries), the
Prefect server restarted, a run cancelled mid-cell. No timing is asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.timeout(1500)
def test_a_long_lived_worker_loses_nothing_and_leaks_nothing(
    postgres_url: str, tmp_path: Path
) -> None:
    from benchmarks.soak import Soak, print_report

    soak = Soak(
        tmp_path / "soak", runs=30, cancellations=1, sample_seconds=2.0, store_down_seconds=15.0
    )
    report = soak.run()
    print_report(report)
    assert report["runs"] >= 30
    # every run ended as it should have; none stuck, none without its stored result
    # (runs that ended while the store was down were spilled, then uploaded by
    # `nbjobs retry-uploads`), none run twice, none with another run's values
    assert report["unexpected"] == []
    assert (report["stuck"], report["lost"], report["run_twice"]) == ([], [], [])
    assert report["wrong_output"] == []
    assert report["upload_failures"] >= 1  # the store outage was felt, and survived
    assert report["outcomes"].get("kill COMPLETED") == 1  # the dead kernel's run, retried
    assert report["outcomes"].get("cancel CANCELLED") == 1
    # nothing left behind: no kernel outlives the worker, and the idle worker holds
    # no more file descriptors, threads or processes than after its first 10 runs
    assert report["kernels_left"] == []
    start, end = report["start"], report["end"]
    assert end["fds"] <= start["fds"], (start, end)
    assert end["children"] <= start["children"], (start, end)
