"""The gateway-CPU benchmark runs end to end against a real `sim serve` process (small image)."""

from __future__ import annotations

import json

import pytest

from benchmarks import client_cpu

pytestmark = pytest.mark.e2e


def test_client_cpu_json_rows(capsys: pytest.CaptureFixture[str]) -> None:
    size = 8 * 1024
    args = ["--json", "--stack", "simulator", "--count", "2", "--size", str(size), "--time-scale", "0.05"]
    assert client_cpu.main(args) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["peripherals"] == 2
    assert row["megabytes"] == pytest.approx(2 * size / 1e6)
    # counted at the socket: at least every packet of both images and their init packets
    assert row["gatt_ops"] >= 2 * (size // 244 + 1)
    # both figures are rounded for print (CPU to 1 ms, per-op to 0.1 us): compare within that rounding
    rounding_us = 0.0005 / row["gatt_ops"] * 1e6 + 0.05
    assert row["cpu_us_per_op"] == pytest.approx(
        row["client_cpu_s"] / row["gatt_ops"] * 1e6, abs=rounding_us + 1e-9
    )
    for key in ("client_cpu_s", "transfer_cpu_s_per_mb", "ipc_floor_us", "simulator_cpu_s_per_mb", "wall_s"):
        assert row[key] > 0, key
    shares = row["shares"]
    assert set(shares) == {"ours", "bleak", "backend", "rest"}
    assert shares["ours"] > 0, "the profile saw our code"
    assert shares["backend"] > 0, "the profile saw the backend"


def test_client_cpu_over_the_bluez_stack(capsys: pytest.CaptureFixture[str]) -> None:
    """The gateway's real Pi stack: bleak's BlueZ backend over D-Bus to `nrf-dfu sim bluez`."""
    size = 8 * 1024
    args = ["--json", "--stack", "bluez", "--count", "1", "--size", str(size), "--time-scale", "0.05"]
    assert client_cpu.main(args) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["stack"] == "bluez"
    assert row["megabytes"] == pytest.approx(size / 1e6)
    # counted in bleak's BlueZ client: the packets went over the acquired socket, not as GATT operations
    assert 0 < row["gatt_ops"] < size // 244
    for key in ("client_cpu_s", "transfer_cpu_s_per_mb", "ipc_floor_us", "bluetoothd_cpu_s_per_mb", "wall_s"):
        assert row[key] > 0, key
    shares = row["shares"]
    assert shares["ours"] > 0, "the profile saw our code"
    assert shares["backend"] > 0, "the profile saw bleak's BlueZ backend and dbus-fast"
