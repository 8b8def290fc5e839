"""The README's first command, exercised: `gateway-agent demo` ends with the job COMPLETED and every
simulated peripheral on the new version, and says so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_demo_completes_and_every_peripheral_runs_the_new_version(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway_agent", "demo", "--keep", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"COLUMNS": "160", "PATH": "/usr/sbin:/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    out = result.stdout
    assert "OK: every peripheral runs application v2" in out
    assert "job COMPLETED" in out
    for profile in ("nrf52840-s140", "nrf52832-s132", "nrf52840-s140-bonded"):
        assert profile in out
    assert out.count("1 → 2") == 4
    # every process left its log for an operator to read
    logs = {p.name for p in (tmp_path / "demo").glob("*.log")}
    assert {"fota-service.log", "fleet-gw-1.log", "sim-1.log"} <= logs, logs
