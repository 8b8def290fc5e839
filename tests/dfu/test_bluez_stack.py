"""The DFU client over bleak's real BlueZ backend (D-Bus, bleak-retry-connector, BlueZ's late MTU) against
the simulated bluetoothd: the code path of a Raspberry Pi gateway, which the simulator's own backend skips."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import pytest
from bleak import BleakClient, BleakScanner
from bleak.exc import BleakGATTProtocolError

from dfu.transport.availability import BluetoothUnavailableError
from dfu.transport.ble import is_bluez, platform_backend
from dfu.transport.ble import scan as ble_scan
from dfu.updater import Updater
from hil.dbus import close_bleak_manager, running_dbus
from profiles.gatt import BUTTONLESS_UNBONDED, CONTROL_POINT, DFU_PACKET
from profiles.model import load_profile
from tests.support.bluez import bluez_stack
from tests.support.dfu_sim import app_package

pytestmark = pytest.mark.e2e

APP = "C8:2E:1A:00:00:01"
S140 = load_profile("nrf52840-s140")


async def test_update_over_bleaks_bluez_backend(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    backend = platform_backend()
    assert is_bluez(backend), "the platform backend on Linux is BlueZ"
    package = app_package(size=16 * 1024)
    caplog.set_level(logging.INFO, logger="dfu")
    async with bluez_stack(monkeypatch) as stack:
        result = await Updater(backend, S140, package, address=APP).run()
        assert result.firmware_revision == "2"
        assert result.bytes == 16 * 1024
        assert result.resumes == 0
        assert result.retries == 0, "packets on the socket and requests on D-Bus stayed in order"
        state = await stack.remote.device_state(APP)
        acquired, dbus = stack.bluetoothd.acquired_writes, stack.bluetoothd.dbus_writes
        notified = stack.bluetoothd.acquired_notifications
    assert state["mode"] == "app"
    assert state["app"]["version"] == 2
    # BlueZ published the exchanged MTU after the GATT objects: the transport waited for it
    assert "packet_size=244 packets=acquired socket answers=acquired socket" in caplog.text
    # every answer of the transfer came over the AcquireNotify socket: no D-Bus signal each
    assert notified[CONTROL_POINT] >= 4 * 3 + 5, "init, then per object at least its PRN, Create and Execute"
    (image,) = package.images
    assert acquired[DFU_PACKET] == -(-len(image.firmware) // 244) + -(-len(image.init_packet) // 244)
    assert dbus[DFU_PACKET] == 0, "no packet went as a D-Bus call"
    assert dbus[CONTROL_POINT] > 0


async def test_packets_as_gatt_writes_where_bluez_does_not_acquire(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    package = app_package(size=16 * 1024)
    caplog.set_level(logging.INFO, logger="dfu")
    async with bluez_stack(monkeypatch) as stack:
        stack.bluetoothd.refuse_acquire = True
        result = await Updater(platform_backend(), S140, package, address=APP).run()
        assert result.firmware_revision == "2"
        acquired, dbus = stack.bluetoothd.acquired_writes, stack.bluetoothd.dbus_writes
    assert "AcquireWrite refused" in caplog.text
    assert "AcquireNotify refused" in caplog.text
    assert "packets=GATT writes answers=notifications" in caplog.text
    assert acquired[DFU_PACKET] == 0
    assert dbus[DFU_PACKET] > 16 * 1024 // 244


async def test_link_drop_resumes_over_bluez(monkeypatch: pytest.MonkeyPatch) -> None:
    package = app_package(size=24 * 1024)
    async with bluez_stack(monkeypatch, faults=["drop_after_bytes=9000"]) as stack:
        result = await Updater(platform_backend(), S140, package, address=APP).run()
        assert (await stack.remote.device_state(APP))["mode"] == "app"
    assert result.resumes == 1
    (image,) = package.images
    resent = result.bytes_sent - len(image.firmware) - len(image.init_packet)
    assert 0 <= resent <= 4096, "at most the object the drop interrupted"


async def test_scan_and_att_errors_through_bluez(monkeypatch: pytest.MonkeyPatch) -> None:
    async with bluez_stack(monkeypatch):
        seen = {s.address: s for s in await ble_scan(platform_backend(), 2.0)}
        assert APP in seen
        assert seen[APP].advertises_dfu
        assert seen[APP].rssi < 0
        device = await BleakScanner.find_device_by_address(APP, timeout=10)
        assert device is not None
        async with BleakClient(device) as client:
            # Writing the buttonless characteristic without indications: ATT 0xFD, which BlueZ reports as
            # "Operation failed with ATT error: 0xfd" and bleak turns back into the protocol error
            with pytest.raises(BleakGATTProtocolError) as err:
                await client.write_gatt_char(BUTTONLESS_UNBONDED, b"\x01", response=True)
            assert err.value.code == 0xFD


async def test_no_system_bus_is_one_line_that_names_the_fix(tmp_path: Path) -> None:
    """`nrf-dfu scan` on a machine without D-Bus (this container, a minimal image): one line, exit 5."""
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path / 'nobody-listens'}"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from dfu.cli import main; main()", "scan", "--timeout", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 5
    assert out == b""
    (line,) = err.decode().splitlines()
    assert line.startswith("error: no D-Bus system bus at unix:path=")
    assert "systemctl start dbus" in line


async def test_no_bluetoothd_on_the_bus_says_to_start_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with running_dbus(tmp_path / "dbus") as bus:  # a system bus, and nobody owns org.bluez
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
        try:
            with pytest.raises(
                BluetoothUnavailableError, match=r"bluetoothd is not running: .*enable --now bluetooth"
            ):
                await ble_scan(platform_backend(), 1.0)
        finally:
            await close_bleak_manager()


async def test_adapter_off_says_to_power_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    async with bluez_stack(monkeypatch) as stack:
        stack.bluetoothd.powered = False
        with pytest.raises(BluetoothUnavailableError, match=r"adapter is off: `rfkill unblock bluetooth"):
            await ble_scan(platform_backend(), 1.0)


async def test_a_user_bluez_refuses_says_to_join_the_bluetooth_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """BlueZ's bus policy lets the `bluetooth` group talk to org.bluez; anyone else gets AccessDenied."""
    async with bluez_stack(monkeypatch, deny_bluez=True):
        with pytest.raises(
            BluetoothUnavailableError, match=r"may not use Bluetooth: add it to the bluetooth group"
        ):
            await ble_scan(platform_backend(), 1.0)


async def test_control_writes_wait_for_bluetoothd_to_read_the_queued_packets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """bluetoothd reads one datagram per main-loop turn, so a D-Bus write can overtake packets still in the
    socket: with a slow reader a checksum or execute would land before its packets unless the link waits."""
    package = app_package(size=8 * 1024)
    async with bluez_stack(monkeypatch) as stack:
        stack.bluetoothd.acquired_read_delay_s = 0.02
        result = await Updater(platform_backend(), S140, package, address=APP).run()
        acquired = stack.bluetoothd.acquired_writes
    assert result.firmware_revision == "2"
    assert result.retries == 0, "no object arrived damaged"
    assert acquired[DFU_PACKET] > 0
