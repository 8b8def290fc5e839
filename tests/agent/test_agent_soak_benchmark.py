"""The soak benchmark's invariants (never its timings): every job ends SUCCEEDED, the figures are numbers, and
the journal is pruned below what thousands of finished jobs would take."""

from __future__ import annotations

import pytest

from benchmarks.agent_soak import soak

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(180)
async def test_agent_soak_runs_every_job_and_reports_numbers() -> None:
    figures = await soak(jobs=60, peripherals=4, concurrency=4, retention=10, scale="0.01")
    assert figures["outcomes"] == {"SUCCEEDED": 60}
    for when in ("start", "end"):
        sample = figures[when]
        assert set(sample) == {"rss_mib", "journal_kib", "open_files", "download_dirs"}
        assert all(isinstance(v, int | float) and v >= 0 for v in sample.values())
    assert figures["end"]["download_dirs"] == 0  # every job's files went with its outcome
