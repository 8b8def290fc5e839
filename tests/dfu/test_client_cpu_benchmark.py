"""The gateway-CPU benchmark runs end to end against a real `sim serve` process (small image)."""

from __future__ import annotations

import json

import pytest

from benchmarks import client_cpu

pytestmark = pytest.mark.e2e


def test_client_cpu_json_rows(capsys: pytest.CaptureFixture[str]) -> None:
    assert client_cpu.main(["--json", "--count", "2", "--size", str(8 * 1024), "--time-scale", "0.05"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["peripherals"] == 2
    assert row["megabytes"] == pytest.approx(2 * 8 * 1024 / 1e6)
    assert row["gatt_ops"] > 2 * 8 * 1024 // 244, "every packet is one GATT operation"
    for key in ("client_cpu_s", "cpu_us_per_op", "ipc_floor_us", "simulator_cpu_s_per_mb", "wall_s"):
        assert row[key] > 0, key
    assert row["cpu_us_per_op"] > row["ipc_floor_us"], "a write costs at least a bare round trip"
    assert sum(row["shares"].values()) == pytest.approx(1.0, abs=0.01)
    assert row["shares"]["ours"] > 0
